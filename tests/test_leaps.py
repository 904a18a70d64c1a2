"""The leap rules (reject / first / euler) and the processes' fast leaps, which must have the law of the
generic leap on the process's integrated rates."""

from __future__ import annotations

import math

import pytest
import torch
from test_sampler_suite import K, _gen, _tv, monte_carlo_floor

from discrete_diffusion.processes import BlackoutProcess, ForwardProcess, MaskingProcess, Prediction, UniformProcess
from discrete_diffusion.processes.base import jump_from_rates


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
    """Masking's combined leap works on masked sites only; the generic one on every site: same law where the
    clamp at zero does not bind and each term's state is masked wherever base is (theta-trapezoidal's case)."""
    proc = MaskingProcess(K)
    n = 60_000
    xt = torch.tensor([K, K, 2]).expand(n, 3).clone()
    mid = torch.tensor([K, 1, 2]).expand(n, 3).clone()
    lam_t, lam_m, lam_s = torch.full((n,), -1.0), torch.full((n,), -0.2), torch.full((n,), 0.6)
    pred_t = proc.prediction_from_output(torch.randn(1, K, 3, generator=_gen(20)).expand(n, K, 3), xt, lam_t, "logits")
    # p_m = (p_t + q) / 2, so 2 p_m - p_t = q >= 0: the clamp never binds
    p_q = torch.softmax(torch.randn(1, 3, K, generator=_gen(21)), -1).expand(n, 3, K)
    p_m = 0.5 * (pred_t.x0_log_probs.exp() + p_q)
    pred_m = proc.prediction_from_output(torch.log(p_m).movedim(-1, 1), mid, lam_m, "logits")
    terms = [(2.0, mid, pred_m, lam_m, lam_m), (-1.0, xt, pred_t, lam_m, lam_m)]
    fast = proc.combined_leap(mid, terms, lam_s, rule, _gen(22))
    full = ForwardProcess.combined_leap(proc, mid, terms, lam_s, rule, _gen(23))
    assert bool((fast[:, 1:] == mid[:, 1:]).all()) and bool((full[:, 1:] == mid[:, 1:]).all())
    freq = [torch.bincount(x[:, 0], minlength=K + 1).double() / n for x in (fast, full)]
    assert float((freq[0] - freq[1]).abs().max()) < 0.01, freq
    assert float(freq[0][K]) < 0.9                                  # the masked site does move


def test_masking_combined_leap_keeps_the_exact_hazard_and_counts_moved_sites_from_mask():
    """The combined total hazard is exactly (sum_i c_i h_i)_+ (every p_i sums to one) even where the clamp
    binds, and a term whose state already unmasked a site contributes there as the point mass on its value
    (the channel MASK -> y taken out of base's MASK), not zero: theta-RK-2 leaps from x_t with rates from y*."""
    proc = MaskingProcess(K)
    n = 200_000
    xt = torch.full((n, 2), K)
    mid = torch.tensor([1, K]).expand(n, 2).clone()                  # y* unmasked site 0 to value 1
    lam_t, lam_s = torch.full((n,), -1.0), torch.full((n,), 0.5)
    pred_t = proc.prediction_from_output(torch.randn(1, K, 2, generator=_gen(24)).expand(n, K, 2), xt, lam_t, "logits")
    pred_m = proc.prediction_from_output(torch.randn(1, K, 2, generator=_gen(25)).expand(n, K, 2), mid, lam_t, "logits")
    h = float(torch.nn.functional.softplus(lam_s[:1].double()) - torch.nn.functional.softplus(lam_t[:1].double()))
    for c_mid in (1.0, 1.6):                                          # theta = 1/2, theta = 5/16 (clamp binds)
        terms = [(1.0 - c_mid, xt, pred_t, lam_t, lam_t), (c_mid, mid, pred_m, lam_t, lam_t)]
        out = proc.combined_leap(xt, terms, lam_s, "first", _gen(26))
        for site in range(2):
            p_t = pred_t.x0_log_probs[0, site].exp().double()
            p_m = pred_m.x0_log_probs[0, site].exp().double() if site == 1 else torch.eye(K, dtype=torch.float64)[1]
            weights = ((1.0 - c_mid) * p_t + c_mid * p_m).clamp_min(0.0)
            expected = torch.cat([(1 - math.exp(-h)) * weights / weights.sum(), torch.tensor([math.exp(-h)])])
            freq = torch.bincount(out[:, site], minlength=K + 1).double() / n
            assert float((freq - expected).abs().max()) < 0.005, (c_mid, site, freq, expected)


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



# ----- theta-RK-2 on masking (issue 10, item 3) ---------------------------------------------------------------
class _OneSiteConstant:
    """Masking, one site, K = 2: p(x0 = 1 | MASK) = 0.7 at every noise level; SUBS point mass once unmasked."""

    def __call__(self, xt: torch.Tensor, lam: torch.Tensor) -> Prediction:
        log_probs = torch.log(torch.tensor([0.3, 0.7])).expand(xt.shape + (2,)).clone()
        unmasked = xt != 2
        log_probs[unmasked] = torch.log(torch.nn.functional.one_hot(xt[unmasked], 2).float().clamp_min(1e-30))
        return Prediction(x0_log_probs=log_probs)


@pytest.mark.parametrize("name,theta", [("theta-rk2", 0.5), ("theta-rk2", 0.3), ("theta-rk2", 1.0),
                                        ("theta-trapezoidal", 0.5)])
def test_theta_step_unmasks_one_site_with_the_exact_probability(name, theta):
    """One masked site, alpha 0.5 -> 0.9 in one step: it unmasks with the exact 1 - 0.1/0.5 = 0.8 and takes
    value 1 with p = 0.7. theta-rk2 used to give e^{-h1}(1 - e^{-h}) = 0.398 (y*'s zero rate at the site it
    had unmasked, applied to the leap from x_t)."""
    from discrete_diffusion.samplers import build_sampler
    n = 100_000
    xt = torch.full((n, 1), 2)
    sampler = build_sampler(name, num_steps=1, final_denoise=False, theta=theta)
    out = sampler.step(MaskingProcess(2), _OneSiteConstant(), xt, torch.zeros(n), torch.full((n,), math.log(9.0)),
                       _gen(41))
    unmasked = float((out != 2).double().mean())
    assert abs(unmasked - 0.8) < 0.006, unmasked                    # 4.7 sigma at n = 100k
    assert abs(float((out == 1).double().sum()) / float((out != 2).sum()) - 0.7) < 0.008


@pytest.mark.parametrize("theta,steps", [(0.5, 8), (0.5, 16), (0.5, 32), (0.3, 8)])
def test_theta_rk2_masked_fraction_is_exact_at_every_step_count(theta, steps):
    """Oracle masking problem (K = 3, D = 3): the masked fraction at t = 0.5 after 8, 16, 32 steps equals
    1 - alpha(0.5) within Monte-Carlo error (sd 0.0014 at 120k sites). A masked site's unmasking hazard over a
    step is exact, so this marginal has no discretisation error at any step count. Before the fix it was off
    by +0.028, +0.015, +0.008 (first order)."""
    from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle
    from discrete_diffusion.samplers import build_sampler
    from discrete_diffusion.schedules import build_schedule
    k, sites, n = 3, 3, 40_000
    probs = torch.rand(k**sites, generator=_gen(3), dtype=torch.float64) + 0.05
    proc = MaskingProcess(k)
    oracle = SharedLevelOracle(OracleDenoiser(proc, probs / probs.sum(), sites), sites)
    schedule = build_schedule("log-linear")
    exact = 1.0 - float(schedule.alpha(torch.tensor(0.5, dtype=torch.float64)))
    half = {}

    def keep_half(step: int, total: int, x: torch.Tensor) -> None:
        if step == total // 2:
            half["x"] = x

    build_sampler("theta-rk2", num_steps=steps, theta=theta).sample(
        proc, oracle, schedule, (n, sites), generator=_gen(steps), callback=keep_half)
    error = float((half["x"] == k).double().mean()) - exact
    assert abs(error) < 0.005, (steps, error)


def test_theta_rk2_is_exact_on_independent_sites():
    """Where the sites are independent (a product table) every per-site law is exact, so theta-rk2 at 4 steps
    samples the table: TV within the Monte-Carlo noise of exact draws. (On dependent sites its error in the
    joint law stays first order: sites that unmask in the same step draw their values independently given y*.)"""
    from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle, empirical_distribution, total_variation
    from discrete_diffusion.samplers import build_sampler
    from discrete_diffusion.schedules import build_schedule
    k, n = 3, 40_000
    marginals = [torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64), torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)]
    probs = (marginals[0][:, None] * marginals[1][None, :]).reshape(-1)
    proc = MaskingProcess(k)
    oracle = OracleDenoiser(proc, probs, 2)
    x = build_sampler("theta-rk2", num_steps=4).sample(proc, SharedLevelOracle(oracle, 2), build_schedule("log-linear"),
                                                       (n, 2), generator=_gen(7))
    tv = total_variation(empirical_distribution(x, k), probs)
    floor = max(total_variation(empirical_distribution(oracle.sample(n, _gen(70 + i)), k), probs) for i in range(4))
    assert tv < floor + 0.004, (tv, floor)


# ----- leaps on Blackout fire every birth due (issue 10, item 4) ----------------------------------------------
class _PointMassCounts:
    """The exact denoiser of data that is the count ``value`` at every site: x0 = value, yhat = value - x_t."""

    def __init__(self, value: int, num_states: int) -> None:
        self.value, self.num_states = value, num_states

    def __call__(self, xt: torch.Tensor, lam: torch.Tensor) -> Prediction:
        log_probs = torch.full(xt.shape + (self.num_states,), -torch.inf)
        log_probs[..., self.value] = 0.0
        return Prediction(x0_log_probs=log_probs, mean_missing=(self.value - xt).clamp_min(0).float())


@pytest.mark.parametrize("name", ["euler", "theta-trapezoidal", "theta-rk2", "tau-leaping"])
def test_blackout_leaps_fire_every_birth_due(name):
    """Counts 0..255, data at 200, the exact denoiser, 100 steps on the Blackout grid without the final
    denoise: the leaping samplers end at a mean count within 1.5 of 200, as the bridge does (200.0). Before the
    fix a site could take one birth per leap: Euler ended at 67, the theta methods at 127."""
    from discrete_diffusion.samplers import build_sampler
    from discrete_diffusion.schedules import build_schedule
    proc = BlackoutProcess(256)
    sampler = build_sampler(name, num_steps=100, final_denoise=False)
    x = sampler.sample(proc, _PointMassCounts(200, 256), build_schedule("blackout"), (500, 4), generator=_gen(50))
    mean = float(x.double().mean())
    assert abs(mean - 200.0) < 1.5, mean


def test_blackout_combined_leap_combines_per_channel():
    """theta-RK-2's second stage on Blackout: x_t + Poisson(((1 - w) yhat(x_t) + w yhat(y*))_+ h) per site
    (w = 1/(2 theta)), even where y* is several births ahead of x_t, and the trapezoidal clamp at zero."""
    proc = BlackoutProcess(11)
    n = 100_000
    xt = torch.full((n, 2), 2)
    mid = torch.tensor([5, 2]).expand(n, 2).clone()
    pred_t = Prediction(mean_missing=torch.tensor([[4.0, 1.0]]).expand(n, 2))
    pred_m = Prediction(mean_missing=torch.tensor([[1.0, 3.0]]).expand(n, 2))
    lam_t, lam_s = torch.full((n,), -1.0), torch.full((n,), 0.3)
    h = float(torch.nn.functional.softplus(lam_s[:1].double()) - torch.nn.functional.softplus(lam_t[:1].double()))
    out = proc.combined_leap(xt, [(0.25, xt, pred_t, lam_t, lam_t), (0.75, mid, pred_m, lam_t, lam_t)], lam_s,
                             "first", _gen(60))
    births = (out - xt).double()
    for site, rate in ((0, 0.25 * 4.0 + 0.75 * 1.0), (1, 0.25 * 1.0 + 0.75 * 3.0)):
        mean, var = float(births[:, site].mean()), float(births[:, site].var())
        assert abs(mean - rate * h) < 0.02 and abs(var - rate * h) < 0.04, (site, mean, var, rate * h)
    clamped = proc.combined_leap(xt, [(2.0, mid, pred_m, lam_t, lam_t), (-1.0, xt, pred_t, lam_t, lam_t)], lam_s,
                                 "first", _gen(61))
    assert bool((clamped[:, 0] == 2).all())                          # (2 * 1 - 4)_+ = 0: no birth
    assert abs(float((clamped[:, 1] - 2).double().mean()) - 5.0 * h) < 0.03
