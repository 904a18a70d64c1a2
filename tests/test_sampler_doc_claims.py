"""Tests behind sentences of docs/samplers.md and the DDPD docstring (issue 10, documentation corrections):
MaskGIT does not converge to the table (greedy by design), and DDPD on masking denoises at most one site per step
with num_steps >= S on the log-linear grid but not on the cosine grid."""

from __future__ import annotations

import torch

from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle, empirical_distribution, total_variation
from discrete_diffusion.processes import MaskingProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

K, D = 4, 2


def _table(seed: int = 1) -> torch.Tensor:
    """The random K = 4, D = 2 table of tests/test_sampler_suite.py."""
    probs = torch.rand(K**D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.05
    return probs / probs.sum()


def test_maskgit_stays_away_from_the_table_as_steps_grow():
    """docs/samplers.md: on the oracle, maskgit's TV stays near 0.16 at every step count (bridge converges)."""
    probs, proc = _table(), MaskingProcess(K)
    oracle = SharedLevelOracle(OracleDenoiser(proc, probs, D), D)

    def tv(name: str, steps: int) -> float:
        x = build_sampler(name, num_steps=steps).sample(proc, oracle, build_schedule("log-linear"), (8000, D),
                                                        generator=torch.Generator().manual_seed(2))
        return float(total_variation(empirical_distribution(x, K), probs))

    greedy = [tv("maskgit", steps) for steps in (2, 8, 64)]
    assert all(0.12 < value < 0.21 for value in greedy), greedy
    assert tv("bridge", 64) < 0.04


def _sites_changed_per_step(grid: str, sites: int) -> list[int]:
    proc = MaskingProcess(K)
    oracle = OracleDenoiser(proc, torch.full((K,), 1.0 / K, dtype=torch.float64), 1)

    def denoiser(xt, lam):  # independent uniform sites
        pred = oracle(xt.reshape(-1, 1), lam.repeat_interleave(xt.shape[1]))
        return type(pred)(pred.x0_log_probs.reshape(xt.shape + (K,)))

    masked = []
    build_sampler("ddpd", num_steps=sites, grid=grid).sample(
        proc, denoiser, build_schedule("log-linear"), (4, sites), generator=torch.Generator().manual_seed(0),
        callback=lambda k, n, x: masked.append(int((x == proc.mask_index).sum(1).max())))
    counts = [sites] + masked
    return [a - b for a, b in zip(counts[:-1], counts[1:])]


def test_ddpd_one_site_per_step_on_the_log_linear_grid_only():
    """ddpd.py: num_steps = S denoises at most one site per step on the log-linear grid; the cosine grid puts
    two sites in some steps."""
    assert max(_sites_changed_per_step("log-linear", 32)) == 1
    assert max(_sites_changed_per_step("cosine", 32)) == 2


def test_cache_changes_the_samples_of_a_denoiser_conditioned_on_the_noise_level():
    """docs/samplers.md: cache is exact for masking only with a denoiser that ignores lam (same samples for a
    seed); one that reads lam, as every NetworkDenoiser does, samples differently with the cache."""
    proc = MaskingProcess(K)
    oracle = OracleDenoiser(proc, torch.full((K,), 1.0 / K, dtype=torch.float64), 1)

    def make(reads_lam: bool):
        def denoiser(xt, lam):  # independent sites; the logits tilt with lam when reads_lam
            pred = oracle(xt.reshape(-1, 1), lam.repeat_interleave(xt.shape[1]))
            log_p = pred.x0_log_probs.reshape(xt.shape + (K,)).double()
            if reads_lam:
                tilt = torch.arange(K, dtype=torch.float64) * torch.tanh(lam.double())[:, None, None]
                log_p = torch.log_softmax(log_p + tilt, dim=-1)
            return type(pred)(log_p.float())
        return denoiser

    def run(denoiser, cache: bool) -> torch.Tensor:
        return build_sampler("bridge", num_steps=32, cache=cache).sample(
            proc, denoiser, build_schedule("log-linear"), (500, 3), generator=torch.Generator().manual_seed(5))

    free, conditioned = make(False), make(True)
    assert torch.equal(run(free, False), run(free, True))
    assert not torch.equal(run(conditioned, False), run(conditioned, True))
