"""The exact law of a denoiser's reverse chain on a tiny state space, by enumeration (for tests and benchmarks).

Reference: the reverse CTMC of Campbell et al., "A Continuous Time Framework for Discrete Denoising Models",
NeurIPS 2022, whose rates ``process.reverse_rates`` gives; the master equation is integrated over the whole
state space instead of being simulated.

With every x_t in {0..M-1}^D enumerated (M = ``process.num_values``, N = M^D states; N <= ``MAX_STATES``):

    p(lam_1) = prod_d prior(x^d),  prior(y) = mean_{x0} q_1(y | x0)      (the prior the samplers draw from)
    dp/dlam = p G(lam),  G[x, x'] = R_lam(x -> x') for x' one site away from x, G[x, x] = -sum_{x'} R(x -> x')
    p(x0) = sum_x p(x; lam_0) prod_d p_model(x0^d | x, lam_0)           (the samplers' final denoise)

integrated from lam_1 = logit alpha(1) to lam_0 = min(logit alpha(0), ``lam_end``) by the exponential midpoint rule
(the default lam_end = logit(1 - 1e-6) leaves a site noisy with probability about 1e-6 for the final denoise),
p <- p expm(h G(lam + h / 2)) over ``steps`` equal steps in lam: stable however stiff the rates are (the uniform
process's rates grow like alpha / (1 - alpha) near t = 0), second order in h. This is the law that exact
simulation (``samplers/exact.py``) samples, and the limit of the bridge and leaping samplers as their steps
shrink: a network's distribution with no sampler error, whose total variation to the data table measures the
fit alone. Halving ``steps`` moves the law by < 1e-4 TV on the tests' 4-site tables (``steps=200``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..losses import logit_alpha_range
from ..oracle import all_configurations
from ..processes.base import ForwardProcess
from ..schedules import Schedule

__all__ = ["reverse_chain_law", "MAX_STATES"]

#: Largest enumerated state space M^D (the generator is a dense (N, N) float64 matrix).
MAX_STATES = 4096


def _generator(process: ForwardProcess, denoiser: Denoiser, states: Tensor, lam: float) -> Tensor:
    """G(lam) (N, N) float64 of the reverse chain over ``states`` (N, D)."""
    n, sites = states.shape
    m = process.num_values
    lam_vec = torch.full((n,), lam, dtype=torch.float64)
    with torch.no_grad():
        rates = process.reverse_rates(states, denoiser(states, lam_vec.float()), lam_vec).double()  # (N, D, M)
    weights = m ** torch.arange(sites - 1, -1, -1)                        # lexicographic index weights (D,)
    index = (states * weights).sum(1)                                     # (N,) = arange(N)
    target = index[:, None, None] + (torch.arange(m)[None, None, :] - states[:, :, None]) * weights[None, :, None]
    rates = rates.scatter(-1, states[..., None], 0.0)                     # no self-jumps
    gen = torch.zeros(n, n, dtype=torch.float64)
    gen.view(-1).index_add_(0, (torch.arange(n)[:, None, None] * n + target).reshape(-1), rates.reshape(-1))
    gen -= torch.diag(gen.sum(1))
    return gen


def reverse_chain_law(process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, num_sites: int,
                      steps: int = 200, lam_end: float = math.log((1 - 1e-6) / 1e-6)) -> Tensor:
    """The law of x0 under the reverse chain of ``denoiser`` from the prior at t = 1, over
    ``oracle.all_configurations(process.num_states, num_sites)``: (K^D,) float64 summing to 1.

    The denoiser is called on every state at once (N rows) 1 + ``steps`` times. Raises ValueError when M^D
    exceeds ``MAX_STATES``."""
    m, k = process.num_values, process.num_states
    if m ** num_sites > MAX_STATES:
        raise ValueError(f"reverse_chain_law enumerates {m}^{num_sites} states, more than {MAX_STATES}")
    lam_1, lam_0 = logit_alpha_range(schedule)
    lam_0 = min(lam_0, lam_end)
    states = all_configurations(m, num_sites)                             # (N, D)
    prior = process.log_marginal_matrix(torch.tensor([lam_1], dtype=torch.float64))[0].exp().mean(0)   # (M,)
    law = prior[states].prod(1)                                            # (N,)
    h = (lam_0 - lam_1) / steps
    for i in range(steps):
        law = law @ torch.linalg.matrix_exp(h * _generator(process, denoiser, states, lam_1 + (i + 0.5) * h))
    lam_vec = torch.full((states.shape[0],), lam_0)
    with torch.no_grad():
        log_p = process.x0_log_probs(denoiser(states, lam_vec), states).double()   # (N, D, K)
    configs = all_configurations(k, num_sites)                            # (J, D)
    final = log_p[:, torch.arange(num_sites)[None, :], configs].sum(-1).exp()    # (N, J): prod_d p(x0^d | x)
    out = (law.clamp_min(0.0) @ final)
    return out / out.sum()
