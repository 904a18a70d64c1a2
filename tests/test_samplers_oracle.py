"""Oracle tests of the samplers (DESIGN.md section 6b) and the sampler registry contract.

Driven by the exact denoiser of a random K = 4, D = 2 table, every step-based sampler must approach the
table in total variation (TV) as steps grow, and the exact simulator must match it at any step count.
The Monte-Carlo floor is the mean TV of equally sized exact samples from the table (about 0.010 at
N = 20k). Tolerances above the floor were set from measurements (see the constants' comments).
"""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.oracle import OracleDenoiser, configuration_index, empirical_distribution, total_variation
from discrete_diffusion.processes import BlackoutProcess, Prediction
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.schedules import BlackoutSchedule, build_schedule

K, D, N = 4, 2, 20_000
# the samplers that apply to Blackout (masking-only ones are covered by tests/test_sampler_suite.py)
BLACKOUT_SAMPLERS = [name for name in sorted(SAMPLERS) if SAMPLERS[name].supports("blackout")]
STEPPED = [name for name in BLACKOUT_SAMPLERS if name != "exact"]
# Allowed excess TV over the floor at 64 steps (log-linear schedule, N = 20k). Measured excess over 5
# seeds: bridge 0.001-0.005, mean-bridge 0.001-0.007, tau-leaping 0.012-0.018 (first-order bias).
# A corrupted birth probability (p**2) gives TV 0.77; even p**1.1 gives 0.20.
EXCESS_TOL = {"bridge": 0.010, "mean-bridge": 0.012, "tau-leaping": 0.025}
DEFAULT_EXCESS_TOL = max(EXCESS_TOL.values())  # a new sampler is held to the loosest measured one


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SharedLevelOracle:
    """The oracle evaluated once per distinct state when the whole batch shares one noise level (as in
    every step-based sampler), then gathered: the same numbers as the oracle, far fewer enumerations."""

    def __init__(self, oracle: OracleDenoiser, mean_factor: float = 1.0) -> None:
        self.oracle, self.mean_factor = oracle, mean_factor

    def __call__(self, xt: torch.Tensor, lam: torch.Tensor) -> Prediction:
        if not bool((lam == lam[0]).all()):
            pred = self.oracle(xt, lam)
            return Prediction(pred.x0_log_probs, pred.mean_missing * self.mean_factor)
        configs = self.oracle.configs
        pred = self.oracle(configs, lam[:1].expand(configs.shape[0]))
        index = configuration_index(xt, K)
        return Prediction(pred.x0_log_probs[index], pred.mean_missing[index] * self.mean_factor)


@pytest.fixture(scope="module")
def setup():
    probs = torch.rand(K**D, generator=_gen(0), dtype=torch.float64) + 0.1
    probs = probs / probs.sum()
    process = BlackoutProcess(K)
    oracle = OracleDenoiser(process, probs, D)
    floor = sum(total_variation(empirical_distribution(oracle.sample(N, _gen(100 + i)), K), probs)
                for i in range(8)) / 8
    return process, oracle, probs, floor


def _tv(setup, sampler, seed=1, denoiser=None, schedule="log-linear", num=N):
    process, oracle, probs, _ = setup
    x = sampler.sample(process, denoiser or SharedLevelOracle(oracle), build_schedule(schedule), (num, D),
                       generator=_gen(seed))
    assert x.shape == (num, D) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) <= K - 1
    return total_variation(empirical_distribution(x, K), probs)


def test_floor_is_sane(setup):
    assert 0.005 < setup[3] < 0.015  # sqrt(J / (2 pi N)) ~ 0.011 for J = 16 cells


@pytest.mark.parametrize("name", STEPPED)
def test_stepped_samplers_converge_to_table(setup, name):
    floor = setup[3]
    coarse = _tv(setup, build_sampler(name, num_steps=4))
    fine = _tv(setup, build_sampler(name, num_steps=64))
    assert fine < coarse - 0.01, (coarse, fine)
    assert fine < floor + EXCESS_TOL.get(name, DEFAULT_EXCESS_TOL), (fine, floor)


@pytest.mark.parametrize("name", ["bridge", "mean-bridge"])
def test_negative_control_corrupted_birth_probability(setup, name, monkeypatch):
    original = BlackoutProcess.birth_probability
    monkeypatch.setattr(BlackoutProcess, "birth_probability", staticmethod(lambda a, b: original(a, b) ** 2))
    tv = _tv(setup, build_sampler(name, num_steps=64))
    assert tv > setup[3] + 0.3, tv  # measured 0.77


def test_negative_control_wrong_rate_tau_leaping(setup):
    tv = _tv(setup, build_sampler("tau-leaping", num_steps=64), denoiser=SharedLevelOracle(setup[1], 1.2))
    assert tv > setup[3] + 2 * EXCESS_TOL["tau-leaping"], tv  # measured 0.157 for a 20% wrong rate


def test_exact_simulation_matches_table(setup):
    # lam_stop = 12 (alpha = 1 - 6e-6) only shortens the run: the final x0 draw there is near-deterministic
    sampler = build_sampler("exact", num_steps=3, lam_stop=12.0)
    tv = _tv(setup, sampler, denoiser=setup[1], schedule="cosine")
    assert tv < setup[3] + 0.006, tv  # measured 0.0097 against a floor of 0.0103


def test_exact_simulation_ignores_num_steps(setup):
    process, oracle, _, _ = setup
    runs = [build_sampler("exact", num_steps=n, lam_stop=8.0).sample(
        process, oracle, build_schedule("cosine"), (300, D), generator=_gen(7)) for n in (1, 50)]
    assert torch.equal(runs[0], runs[1])


# ----- registry contract ----------------------------------------------------------------------------------
def _quick(setup, name, seed):
    process, oracle, _, _ = setup
    options = {"lam_stop": 8.0} if name == "exact" else {}
    sampler = build_sampler(name, num_steps=8, **options)
    return sampler.sample(process, oracle, build_schedule("log-linear"), (400, D), generator=_gen(seed))


@pytest.mark.parametrize("name", BLACKOUT_SAMPLERS)
def test_same_seed_same_samples(setup, name):
    first, again, other = _quick(setup, name, 3), _quick(setup, name, 3), _quick(setup, name, 4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_num_steps_below_one_raises(name):
    for bad in (0, -3):
        with pytest.raises(ValueError, match="num_steps"):
            build_sampler(name, num_steps=bad)


def test_unknown_sampler_lists_names():
    with pytest.raises(ValueError) as info:
        build_sampler("no-such-sampler")
    for name in SAMPLERS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="bogus"):
        build_sampler("bridge", bogus=1)


@pytest.mark.parametrize("name", STEPPED)
def test_callback_reports_every_step(setup, name):
    process, oracle, _, _ = setup
    seen = []
    build_sampler(name, num_steps=5).sample(process, oracle, build_schedule("cosine"), (16, D),
                                            generator=_gen(5), callback=lambda k, n, x: seen.append((k, n)))
    assert seen == [(k, 5) for k in range(1, 6)]


def test_time_grid_is_the_papers_grid():
    """With the Blackout schedule and 999 intervals the sampler visits the paper's 1000 observation
    times in reverse; final_denoise replaces the last one by alpha = 1."""
    half = -math.log(math.exp(-15.0) / (1.0 - math.exp(-15.0)))
    expected = -half + 2.0 * half * torch.arange(1000, dtype=torch.float64) / 999
    plain = build_sampler("bridge", num_steps=999, final_denoise=False).time_grid(BlackoutSchedule())
    torch.testing.assert_close(plain, expected, rtol=0.0, atol=1e-8)
    grid = build_sampler("bridge", num_steps=999).time_grid(BlackoutSchedule())
    assert torch.equal(grid[:-1], plain[:-1]) and math.isinf(float(grid[-1])) and float(grid[-1]) > 0
