"""The leap rules (reject / first / euler) and the processes' fast leaps, which must have the law of the
generic leap on the process's integrated rates."""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.processes import BlackoutProcess, ForwardProcess, MaskingProcess, Prediction, UniformProcess
from discrete_diffusion.processes.base import jump_from_rates
from test_sampler_suite import K, _gen, _tv, monte_carlo_floor


@pytest.fixture(scope="module")
def floor() -> float:
    return monte_carlo_floor()


# ----- the shared multi-jump rule and the process's integrated rates ----------------------------------------
def test_jump_rules():
    xt = torch.zeros(100_000, 1, dtype=torch.long)
    rates = torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64).expand(100_000, 1, 3)
    total = 0.8
    moved_reject = (jump_from_rates(xt, rates, _gen(1), "reject") != 0).double().mean()
    moved_first = (jump_from_rates(xt, rates, _gen(1), "first") != 0).double().mean()
    assert abs(float(moved_reject) - total * math.exp(-total)) < 0.006   # exactly one Poisson jump
    assert abs(float(moved_first) - (1 - math.exp(-total))) < 0.006       # at least one
    to_two = jump_from_rates(xt, rates, _gen(2), "first")
    assert abs(float((to_two == 2).double().mean()) - 0.5 / total * (1 - math.exp(-total))) < 0.006


def test_jump_rules_euler_and_unknown():
    xt = torch.zeros(100_000, 1, dtype=torch.long)
    small = torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64).expand(100_000, 1, 3)
    moved = (jump_from_rates(xt, small, _gen(3), "euler") != 0).double().mean()
    assert abs(float(moved) - 0.8) < 0.006                      # min(E, 1)
    big = small * 2.0                                           # E = 1.6: always moves, target 3:5
    out = jump_from_rates(xt, big, _gen(4), "euler")
    assert bool((out != 0).all()) and abs(float((out == 2).double().mean()) - 0.625) < 0.006
    with pytest.raises(ValueError, match="reject.*first.*euler"):
        jump_from_rates(xt, small, _gen(4), "second")


@pytest.mark.parametrize("rule", ["reject", "first", "euler"])
def test_masking_leap_has_the_law_of_the_generic_leap(rule):
    """Masking's leap draws targets only at moving sites; it must match jump_from_rates on its rates."""
    proc = MaskingProcess(K)
    n = 60_000
    xt = torch.tensor([K, 2]).expand(n, 2).clone()             # site 0 masked, site 1 unmasked
    logits = torch.randn(1, K, 2, generator=_gen(8)).expand(n, K, 2)
    pred = proc.prediction_from_output(logits, xt, torch.zeros(n), "logits")
    lam = torch.full((n,), -1.0)
    lam_to = torch.full((n,), 0.4)
    fast = proc.leap(xt, pred, lam, lam, lam_to, rule, _gen(9))
    generic = jump_from_rates(xt, proc.integrated_reverse_rates(xt, pred, lam, lam, lam_to), _gen(10), rule)
    assert bool((fast[:, 1] == 2).all()) and bool((generic[:, 1] == 2).all())
    freq = [torch.bincount(x[:, 0], minlength=K + 1).double() / n for x in (fast, generic)]
    assert float((freq[0] - freq[1]).abs().max()) < 0.01, freq


@pytest.mark.parametrize("rule", ["reject", "first", "euler"])
@pytest.mark.parametrize("lam_value", [-3.0, 0.5, 4.0])
def test_uniform_leap_has_the_law_of_the_generic_leap(rule, lam_value):
    proc = UniformProcess(K)
    n = 60_000
    xt = torch.tensor([1, 3]).expand(n, 2).clone()
    logits = 2.0 * torch.randn(1, K, 2, generator=_gen(11)).expand(n, K, 2)
    lam = torch.full((n,), lam_value)
    pred = proc.prediction_from_output(logits, xt, lam, "logits")
    lam_to = lam.double() + 0.8
    fast = proc.leap(xt, pred, lam, lam.double(), lam_to, rule, _gen(12))
    generic = jump_from_rates(xt, proc.integrated_reverse_rates(xt, pred, lam, lam.double(), lam_to), _gen(13), rule)
    for site in range(2):
        freq = [torch.bincount(x[:, site], minlength=K).double() / n for x in (fast, generic)]
        assert float((freq[0] - freq[1]).abs().max()) < 0.01, (site, freq)


@pytest.mark.parametrize("rule", ["reject", "first"])
def test_masking_combined_leap_has_the_law_of_the_generic_one(rule):
    """Masking's combined leap works on masked sites only; the generic one on every site: same law."""
    proc = MaskingProcess(K)
    n = 60_000
    xt = torch.tensor([K, K, 2]).expand(n, 3).clone()
    mid = torch.tensor([K, 1, 2]).expand(n, 3).clone()
    lam_t, lam_m, lam_s = torch.full((n,), -1.0), torch.full((n,), -0.2), torch.full((n,), 0.6)
    pred_t = proc.prediction_from_output(torch.randn(1, K, 3, generator=_gen(20)).expand(n, K, 3), xt, lam_t, "logits")
    pred_m = proc.prediction_from_output(torch.randn(1, K, 3, generator=_gen(21)).expand(n, K, 3), mid, lam_m, "logits")
    terms = [(2.0, mid, pred_m, lam_m, lam_m), (-1.0, xt, pred_t, lam_t, lam_m)]
    fast = proc.combined_leap(mid, terms, lam_s, rule, _gen(22))
    full = ForwardProcess.combined_leap(proc, mid, terms, lam_s, rule, _gen(23))
    assert bool((fast[:, 1:] == mid[:, 1:]).all()) and bool((full[:, 1:] == mid[:, 1:]).all())
    freq = [torch.bincount(x[:, 0], minlength=K + 1).double() / n for x in (fast, full)]
    assert float((freq[0] - freq[1]).abs().max()) < 0.01, freq
    assert float(freq[0][K]) < 0.9                                  # the masked site does move


def test_masking_integrated_rates_are_exact_in_lam():
    proc = MaskingProcess(K)
    xt = torch.tensor([[K, 1, K]])
    pred = Prediction(x0_log_probs=torch.log_softmax(torch.randn(1, 3, K, generator=_gen(5)), -1))
    pred = proc.prediction_from_output(pred.x0_log_probs.movedim(-1, 1), xt, torch.zeros(1), "logits")
    lam_from, lam_to = torch.tensor([-2.0], dtype=torch.float64), torch.tensor([1.5], dtype=torch.float64)
    got = proc.integrated_reverse_rates(xt, pred, lam_from, lam_from, lam_to)
    grid = torch.linspace(-2.0, 1.5, 20_001, dtype=torch.float64)
    values = torch.stack([proc.reverse_rates(xt, pred, g.reshape(1)) for g in grid])
    torch.testing.assert_close(got, torch.trapezoid(values, grid, dim=0), rtol=1e-7, atol=1e-12)
    # the default (uniform) freezes the rate at lam
    uni = UniformProcess(K)
    xu = torch.tensor([[0, 3, 2]])
    pu = Prediction(x0_log_probs=torch.log_softmax(torch.randn(1, 3, K, generator=_gen(6)), -1))
    torch.testing.assert_close(uni.integrated_reverse_rates(xu, pu, lam_from, lam_from, lam_to),
                               3.5 * uni.reverse_rates(xu, pu, lam_from))


def test_blackout_integrated_rates_match_its_tau_leap_hazard():
    proc = BlackoutProcess(5)
    xt = torch.tensor([[0, 2, 4]])
    pred = Prediction(mean_missing=torch.tensor([[1.5, 0.7, 0.0]]))
    lam_t, lam_s = torch.tensor([-1.0]), torch.tensor([2.0])
    got = proc.integrated_reverse_rates(xt, pred, lam_t, lam_t, lam_s)
    hazard = float(torch.nn.functional.softplus(lam_s.double()) - torch.nn.functional.softplus(lam_t.double()))
    expected = torch.zeros(1, 3, 5, dtype=torch.float64)
    expected[0, 0, 1], expected[0, 1, 3] = 1.5 * hazard, 0.7 * hazard
    torch.testing.assert_close(got, expected)


def test_tau_leaping_first_jump_on_masking_is_the_bridge_in_distribution(floor):
    """Masking with exact-in-lam integrated rates and the first-jump rule unmasks a site with probability
    1 - (1 - alpha_s)/(1 - alpha_t) to a value drawn from p(x0 | x_t): the bridge's step, so even 4 steps
    are as good as the bridge's 4 steps (TV within Monte-Carlo noise of each other)."""
    proc = MaskingProcess(K)
    leap, bridge = _tv(proc, "tau-leaping", 4, multi_jump="first"), _tv(proc, "bridge", 4)
    assert abs(leap - bridge) < 0.012, (leap, bridge)


@pytest.mark.parametrize("rule", ["reject", "first"])
@pytest.mark.parametrize("lam_value", [-3.0, 0.5, 5.0])
def test_uniform_combined_leap_has_the_law_of_the_generic_one(rule, lam_value):
    proc = UniformProcess(K)
    n = 60_000
    xt = torch.tensor([1, 3, 0]).expand(n, 3).clone()
    mid = torch.tensor([2, 3, 0]).expand(n, 3).clone()
    lam_t = torch.full((n,), lam_value)
    lam_m, lam_s = lam_t + 0.4, lam_t + 0.8
    pred_t = proc.prediction_from_output(torch.randn(1, K, 3, generator=_gen(30)).expand(n, K, 3), xt, lam_t, "logits")
    pred_m = proc.prediction_from_output(torch.randn(1, K, 3, generator=_gen(31)).expand(n, K, 3), mid, lam_m, "logits")
    terms = [(2.0, mid, pred_m, lam_m, lam_m), (-1.0, xt, pred_t, lam_t, lam_m)]
    fast = proc.combined_leap(mid, terms, lam_s, rule, _gen(32))
    full = ForwardProcess.combined_leap(proc, mid, terms, lam_s, rule, _gen(33))
    for site in range(3):
        freq = [torch.bincount(x[:, site], minlength=K).double() / n for x in (fast, full)]
        assert float((freq[0] - freq[1]).abs().max()) < 0.01, (site, freq)

