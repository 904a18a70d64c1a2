"""
A new forward process in one file
=================================

Any continuous-time Markov chain on K states is a forward process here: give its generator matrix Q (rows sum
to zero, off-diagonal rates >= 0) to the ``matrix`` process, and the marginals P_t = expm(sigma(t) Q), the exact
reverse rates, the bridge, the prior and the ELBO all follow. This example builds a *cyclic random walk* (a step
to x - 1 or x + 1 mod K at rate 1 each) and checks it the way the test suite checks every process: with the exact
denoiser of a small probability table (the oracle), samplers must reproduce the table.
"""

# %%
# The generator: K = 5 states on a ring.
import numpy as np
import torch

from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle, empirical_distribution, total_variation
from discrete_diffusion.processes import MatrixProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

K, D, N = 5, 2, 20_000
Q = np.zeros((K, K))
for x in range(K):
    Q[x, (x + 1) % K] = Q[x, (x - 1) % K] = 1.0
    Q[x, x] = -2.0
process = MatrixProcess(num_states=K, rates=Q)
schedule = build_schedule("log-linear")

# %%
# A random table over the K^D joint configurations and its exact denoiser p(x0 | x_t).
gen = torch.Generator().manual_seed(0)
table = torch.rand(K**D, generator=gen, dtype=torch.float64) + 0.05
table /= table.sum()
oracle = OracleDenoiser(process, table, D)

# %%
# The Monte-Carlo floor (TV of N exact draws from the table) against what the samplers reach.
floor = np.mean([total_variation(empirical_distribution(oracle.sample(N, torch.Generator().manual_seed(s)), K), table)
                 for s in range(4)])
print(f"Monte-Carlo floor (N = {N}): TV {floor:.4f}")
for name, steps in (("bridge", 4), ("bridge", 64), ("tau-leaping", 64)):
    x = build_sampler(name, num_steps=steps).sample(process, SharedLevelOracle(oracle, D), schedule, (N, D),
                                                    generator=torch.Generator().manual_seed(1))
    tv = total_variation(empirical_distribution(x, K), table)
    print(f"{name:12s} {steps:3d} steps: TV {tv:.4f}")
