"""Contract tests for every noise schedule in ``SCHEDULES`` (DESIGN.md sections 2 and 3).

Each test is parametrised over the registry, so a new schedule is covered without new test code.
All numerics run in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.schedules import SCHEDULES, BlackoutSchedule, build_schedule

NAMES = sorted(SCHEDULES)


def _t(n: int = 201, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=torch.float64)


@pytest.fixture(params=NAMES)
def schedule(request):
    return build_schedule(request.param)


def test_end_points(schedule):
    a0 = float(schedule.alpha(torch.tensor(0.0, dtype=torch.float64)))
    a1 = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    assert a0 >= 1.0 - 1e-5 and a0 <= 1.0
    assert 0.0 < a1 <= 1e-3
    assert schedule.alpha_max == pytest.approx(a0, abs=0.0)
    assert schedule.alpha_min == pytest.approx(a1, abs=0.0)


def test_alpha_strictly_decreasing(schedule):
    alpha = schedule.alpha(_t(1001))
    assert torch.all(alpha[1:] < alpha[:-1])
    assert torch.all((alpha > 0) & (alpha <= 1))


def test_derivative_matches_central_difference(schedule):
    h = 1e-6
    t = _t(199, 0.005, 0.995)
    fd = (schedule.alpha(t + h) - schedule.alpha(t - h)) / (2 * h)
    deriv = schedule.alpha_derivative(t)
    assert deriv.shape == t.shape
    assert torch.all(deriv < 0)
    torch.testing.assert_close(deriv, fd, rtol=1e-6, atol=1e-9)


def test_beta_is_log_derivative(schedule):
    t = _t(199, 0.005, 0.995)
    beta = schedule.beta(t)
    torch.testing.assert_close(beta, -schedule.alpha_derivative(t) / schedule.alpha(t), rtol=1e-12, atol=0.0)
    # beta = d sigma / dt with sigma = -log alpha, checked independently by finite differences
    h = 1e-6
    fd = (schedule.sigma(t + h) - schedule.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(beta, fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(schedule.sigma(t), -torch.log(schedule.alpha(t)))


def test_time_of_alpha_inverts_alpha(schedule):
    t = _t(1001)
    back = schedule.time_of_alpha(schedule.alpha(t))
    torch.testing.assert_close(back, t, rtol=0.0, atol=1e-8)
    # clamped into [0, 1] outside the schedule's range
    ends = schedule.time_of_alpha(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.all((ends >= 0) & (ends <= 1))
    assert float(ends[1]) == 0.0 and float(ends[0]) == 1.0


def test_config_round_trips(schedule):
    config = schedule.config()
    assert config["name"] in SCHEDULES
    rebuilt = build_schedule(**config)
    assert type(rebuilt) is type(schedule)
    assert rebuilt.config() == config
    t = _t(101)
    assert torch.equal(rebuilt.alpha(t), schedule.alpha(t))


@pytest.mark.parametrize("name", NAMES)
def test_non_default_options_round_trip(name):
    options = {k: v for k, v in build_schedule(name).config().items() if k != "name"}
    changed = {k: v * 1.5 for k, v in options.items()}  # every option here is a positive float
    sched = build_schedule(name, **changed)
    assert {k: sched.config()[k] for k in changed} == pytest.approx(changed)
    rebuilt = build_schedule(**sched.config())
    t = _t(51)
    assert torch.equal(rebuilt.alpha(t), sched.alpha(t))
    if changed:  # the option really changes the schedule
        assert not torch.allclose(sched.alpha(t), build_schedule(name).alpha(t))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_raises_value_error(name):
    with pytest.raises(ValueError, match="bogus_option"):
        build_schedule(name, bogus_option=1.0)


BAD_VALUES = {
    "log-linear": [{"eps": 0.0}, {"eps": 0.7}],
    "cosine": [{"eps": -0.1}, {"eps": 0.5}],
    "linear": [{"sigma_max": 1.0}, {"sigma_max": -3.0}],
    "blackout": [{"t_end": 2.0}, {"t_end": -1.0}],
}


@pytest.mark.parametrize("name,options", [(n, o) for n, opts in BAD_VALUES.items() for o in opts])
def test_bad_option_values_raise_value_error(name, options):
    (key,) = options
    with pytest.raises(ValueError, match=key):
        build_schedule(name, **options)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_schedule("no-such-schedule")
    message = str(info.value)
    assert "no-such-schedule" in message
    for name in SCHEDULES:
        assert name in message


def test_blackout_reproduces_paper_grid():
    """Santos et al. (2023): 1000 observation times, logit(alpha) linear from +L to -L,
    L = -logit(exp(-t_end)), t_end = 15, so alpha at the last time is exp(-15)."""
    sched = BlackoutSchedule(t_end=15.0)
    t = torch.arange(1000, dtype=torch.float64) / 999
    alpha = sched.alpha(t)
    lam = torch.logit(alpha)
    half = -math.log(math.exp(-15.0) / (1.0 - math.exp(-15.0)))
    expected = half - 2.0 * half * torch.arange(1000, dtype=torch.float64) / 999
    torch.testing.assert_close(lam, expected, rtol=0.0, atol=1e-8)
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, -2.0 * half / 999), rtol=0.0, atol=1e-8)
    assert float(alpha[-1]) == pytest.approx(math.exp(-15.0), rel=1e-10)
    assert float(alpha[0]) == pytest.approx(1.0 - math.exp(-15.0), rel=1e-12)
    torch.testing.assert_close(sched.time_of_alpha(alpha), t, rtol=0.0, atol=1e-9)
