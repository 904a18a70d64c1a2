"""Posterior chains never return samples that contradict a hard y because of the masking prior's revealed values
(issue 19 item 4), and every posterior method says (RuntimeWarning) when some of its samples contradict y.

The masking prior reveals each site with probability alpha(1) as a uniform value; a revealed value that y rules out
made p_t(y | x_t) = 0 and the sample a prior draw contradicting y (on the log-linear schedule, alpha(1) = 1e-4: 7
of 48,000 samples under block sums y = [3, 1]). Here alpha(1) = 0.2 (log-linear, eps = 0.2) makes it visible in
a few thousand samples: on main, exact guidance with exact simulation returned about 1 in 7 samples off y and the
infill method sampled far from the conditional (its unknown sites revealed uniformly). Now masking chains start all
MASK, which is exact. Oracle: the correlated table of tests/test_posterior_guidance.py (K = 3, D = 4)."""

from __future__ import annotations

import pytest
import torch
from test_posterior_guidance import AT_FLOOR, PI, D, K, floor, posterior

from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.posterior import (
    DownsampleOperator,
    InpaintOperator,
    posterior_sample,
)
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

REVEALING = build_schedule("log-linear", eps=0.2)        # alpha(1) = 0.2: the prior reveals a fifth of the sites


def test_masking_exact_guidance_never_contradicts_y():
    """Exact simulation: no sample off y, TV at the floor (leaps can still break y by unmasking two sites in one
    step: 9 of 4000 at 256 tau-leaping steps here, reported by the warning below)."""
    process = build_process("masking", K)
    op, y = DownsampleOperator(K, 2), torch.tensor([[3, 1]])
    n = 4000
    x = posterior_sample("exact-guidance", process, OracleDenoiser(process, PI, D, torch.float64), REVEALING, op, y,
                         (n, D), build_sampler("exact"), generator=torch.Generator().manual_seed(1))
    assert int(torch.isneginf(op.log_likelihood(x, y)).sum()) == 0
    target = posterior(op, y)
    tv = total_variation(empirical_distribution(x, K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))


@pytest.mark.parametrize("sampler_name, steps", [("exact", 1), ("tau-leaping", 64)])
def test_masking_infill_starts_all_mask(sampler_name, steps):
    process = build_process("masking", K)
    op, y = InpaintOperator(K), torch.tensor([[1, -1, -1, 0]])
    n = 4000
    x = posterior_sample("infill", process, SharedLevelOracle(OracleDenoiser(process, PI, D, torch.float64), D),
                         REVEALING, op, y, (n, D), build_sampler(sampler_name, num_steps=steps),
                         generator=torch.Generator().manual_seed(2))
    target = posterior(op, y)
    tv = total_variation(empirical_distribution(x, K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))


def test_contradicting_samples_are_reported():
    """Blackout tau-leaping with few steps overshoots a block sum (documented): the method warns with the count."""
    process = build_process("blackout", K)
    op, y = DownsampleOperator(K, 2), torch.tensor([[3, 1]])
    with pytest.warns(RuntimeWarning, match=r"of 2000 samples contradict y"):
        x = posterior_sample("exact-guidance", process, OracleDenoiser(process, PI, D, torch.float64),
                             build_schedule("blackout"), op, y, (2000, D), build_sampler("tau-leaping", num_steps=8),
                             generator=torch.Generator().manual_seed(3))
    assert bool(torch.isneginf(op.log_likelihood(x, y)).any())
