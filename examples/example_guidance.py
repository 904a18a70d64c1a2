"""
Classifier-free guidance, checked against the exact answer
==========================================================

Classifier-free guidance combines a conditional and an unconditional prediction with a scale gamma: gamma = 0
samples p(x), gamma = 1 samples p(x | c) exactly, gamma > 1 sharpens towards the class. On a small joint table
pi(x, c) the exact conditional denoisers are known (``ConditionalOracle``), so the guided samples can be compared
with the exact laws, as the library's tests do for every process and sampler.
"""

# %%
import torch

from discrete_diffusion.guidance import ClassifierFreeDenoiser
from discrete_diffusion.oracle import ConditionalOracle, empirical_distribution, total_variation
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

K, D, C, N = 3, 3, 2, 20_000
gen = torch.Generator().manual_seed(0)
joint = torch.rand(K**D, C, generator=gen, dtype=torch.float64) ** 3   # a peaked joint table pi(x, c)
process = build_process("masking", K)
oracle = ConditionalOracle(process, joint, D)
schedule = build_schedule("log-linear")

# %%
# Exact simulation of the guided reverse chain for class 1 at three scales. The TV to pi(x | c = 1) is at the
# Monte-Carlo floor (about 0.02 here) for gamma = 1; gamma = 0 gives the marginal pi(x); gamma = 3 raises the
# mean log p(c = 1 | x) of the samples beyond that of the true conditional (and is no longer pi(x | c)).
target = oracle.table(1)
for gamma in (0.0, 1.0, 3.0):
    x = build_sampler("exact").sample(process, ClassifierFreeDenoiser(oracle, 1, gamma), schedule, (N, D),
                                      generator=torch.Generator().manual_seed(1))
    tv_cond = total_variation(empirical_distribution(x, K), target)
    tv_marg = total_variation(empirical_distribution(x, K), oracle.table())
    log_pc = oracle.class_log_probs(x)[:, 1].mean()
    print(f"gamma {gamma}: TV to pi(x|c) {tv_cond:.4f}, TV to pi(x) {tv_marg:.4f}, mean log p(c|x) {log_pc:.3f}")
