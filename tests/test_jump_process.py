"""Oracle and unit tests of the jump process (Poisson thinning on an unbounded latent count; processes/jump.py).

On a small table of counts with one value far above the rest (count_oracle.JumpOracle):
(a) the ELBO estimate with the exact denoiser equals H(z_0) - I(x0; z_1) + E[prior KL] by quadrature, for
    lambda = 1, 2.5 and 10 and for a real-valued table, and a denoiser 1.5x off is refused;
(b) the bridge (exact x0 draws from the oracle) and tau-leaping (the exact mean frozen over a leap) reach the
    exact law of z_0 at the Monte-Carlo floor in total variation, and too few leaps do not.
"""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.count_oracle import JumpOracle, log_poisson_pmf
from discrete_diffusion.losses import LogitAlphaProposal, estimate_elbo
from discrete_diffusion.processes import JumpProcess, Prediction
from discrete_diffusion.processes.jump import alpha_increment, poisson_entropy, poisson_kl_bracket
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

# D = 2 sites; the last row's 150 (60 for the samplers) is far above every other value.
SUPPORT = torch.tensor([[0, 1], [2, 0], [3, 5], [1, 1], [150, 2]])
SAMPLER_SUPPORT = torch.tensor([[0, 1], [2, 0], [3, 5], [1, 1], [60, 2]])
PROBS = torch.tensor([0.3, 0.2, 0.2, 0.15, 0.15])
REAL_SUPPORT = torch.tensor([[0.5, 0.0], [2.25, 1.0], [40.0, 0.3]])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_poisson_entropy_matches_direct_sum():
    k = torch.arange(0, 4000, dtype=torch.float64)
    for mu in (0.0, 1e-6, 0.3, 5.0, 63.9, 64.1, 300.0, 2500.0):
        m = torch.tensor(mu, dtype=torch.float64)
        log_p = log_poisson_pmf(k, m)
        direct = float(-(log_p.exp() * log_p).nan_to_num(0.0).sum())
        assert abs(float(poisson_entropy(m[None])[0]) - direct) < 1e-8, mu


def test_marginal_moments_for_large_and_real_counts():
    proc = JumpProcess(scale=2.5)
    x0 = torch.tensor([[0.0, 0.4, 7.0, 5000.0]]).expand(40_000, 4)
    lam = torch.full((40_000,), 0.3)
    z = proc.sample_marginal(x0, lam, _gen(1)).double()
    rate = 2.5 * torch.sigmoid(torch.tensor(0.3, dtype=torch.float64)) * x0[0].double()
    assert torch.all((z.mean(0) - rate).abs() <= 5 * (rate / 40_000).sqrt() + 1e-12)
    assert torch.all((z.var(0) - rate).abs() <= 6 * rate * math.sqrt(2 / 40_000) + 0.02)
    assert bool((z[:, 0] == 0).all())


def test_bridge_composes_to_the_later_marginal_and_alpha_increment_is_stable():
    proc = JumpProcess(scale=3.0)
    n, x0 = 40_000, torch.full((40_000, 1), 37)
    lam_t, lam_s = torch.full((n,), -1.0), torch.full((n,), 2.0)
    zs = proc.bridge_from_x0(proc.sample_marginal(x0, lam_t, _gen(2)), x0, lam_t, lam_s, _gen(3)).double()
    rate = 3.0 * 37 * torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    assert abs(float(zs.mean()) - float(rate)) < 5 * math.sqrt(float(rate) / n)
    assert abs(float(zs.var()) - float(rate)) < 6 * float(rate) * math.sqrt(2 / n)
    # near alpha = 1 the increment keeps its digits; to +inf it is 1 - alpha_t
    inc = alpha_increment(torch.tensor([30.0, -3.0]), torch.tensor([31.0, math.inf]))
    expected = [math.exp(-30) - math.exp(-31), float(torch.sigmoid(torch.tensor(3.0)))]
    torch.testing.assert_close(inc, torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=0)


def test_elbo_integrand_is_the_poisson_kl_rate_and_finite_at_both_ends():
    proc = JumpProcess(scale=4.0)
    x0 = torch.tensor([[0.0, 3.0, 900.0]])
    lam = torch.tensor([0.7])
    exact = proc.prediction_from_mean(x0.clone(), lam)
    assert float(proc.elbo_integrand(x0, x0.long(), lam, exact)) == 0.0
    off = proc.prediction_from_mean(torch.tensor([[0.5, 2.0, 1000.0]]), lam)
    alpha = torch.sigmoid(lam)
    bracket = (0.5 - 0) + (2 - 3 + 3 * math.log(3 / 2)) + (1000 - 900 + 900 * math.log(900 / 1000))
    expected = 4.0 * float(alpha * (1 - alpha)) * bracket
    assert abs(float(proc.elbo_integrand(x0, x0.long(), lam, off)) - expected) < 1e-4 * expected
    # a network output that never learns anything still gives a finite integrand at lam -> +-inf
    out = torch.zeros(2, 1, 3)
    lams = torch.tensor([-60.0, 60.0])
    pred = proc.prediction_from_output(out, torch.zeros(2, 3, dtype=torch.long), lams, "mean")
    value = proc.elbo_integrand(x0.expand(2, 3), torch.zeros(2, 3, dtype=torch.long), lams, pred)
    assert torch.all(torch.isfinite(value)) and torch.all(value < 1e-20)
    assert torch.all(pred.mean_missing[1] < 1e-20)          # lambda (1 - alpha) x0_hat vanishes at alpha -> 1
    assert float(poisson_kl_bracket(torch.tensor(0.0), torch.tensor(2.0))) == 2.0


def _elbo_check(scale: float, schedule_name: str, support: torch.Tensor, probs: torch.Tensor, seed: int,
                factor: float = 1.0) -> tuple[float, float, float]:
    """(estimate, standard error, quadrature value) of the expected bound over the table: every row gets the
    same number of data copies, so the only noise is that of the estimator given x0."""
    proc = JumpProcess(scale=scale)
    oracle = JumpOracle(proc, support, probs)
    denoiser = oracle if factor == 1.0 else (lambda zt, lam: proc.prediction_from_mean(
        factor * oracle(zt, lam).x0_mean, lam.double()))
    schedule = build_schedule(schedule_name)
    n = 1000
    x0 = support.repeat_interleave(n, 0)
    est = estimate_elbo(proc, denoiser, x0, schedule, LogitAlphaProposal(), _gen(seed), num_samples=4)
    total = est.total.reshape(support.shape[0], n)
    w = probs.double() / probs.sum()
    mean = float((total.mean(1) * w).sum())
    se = float(((total.var(1) / n) * w ** 2).sum().sqrt())
    return mean, se, oracle.expected_bound(schedule.alpha_min)


@pytest.mark.parametrize("scale, schedule_name, support", [
    (1.0, "log-linear", SUPPORT), (2.5, "blackout", SUPPORT), (10.0, "log-linear", SUPPORT),
    (2.0, "log-linear", REAL_SUPPORT)])
def test_oracle_elbo_equals_entropy_plus_prior_by_quadrature(scale, schedule_name, support):
    probs = PROBS[: support.shape[0]]
    mean, se, exact = _elbo_check(scale, schedule_name, support, probs, seed=7)
    # measured |mean - exact| / se: 0.27, 1.00, 1.07, 0.64 (seed 0); the bound is ~4-6 nats, se ~0.03-0.05
    assert abs(mean - exact) <= 4 * se + 1e-3, (mean, se, exact)


def test_oracle_elbo_control_a_wrong_denoiser_is_refused():
    """x0_hat 1.5x the exact mean raises the bound by far more than the tolerance of the test above."""
    mean, se, exact = _elbo_check(1.0, "log-linear", SUPPORT, PROBS, seed=7, factor=1.5)
    assert mean - exact > 10 * se, (mean, se, exact)


def test_bound_without_the_encoding_entropy_would_be_wrong():
    """The entropy of Poisson(lambda x0) is part of the bound (ElboEstimate.encoding): dropping it lands below
    H(z_0), impossible for a bound on the cross-entropy of z_0."""
    proc = JumpProcess(scale=1.0)
    oracle = JumpOracle(proc, SUPPORT, PROBS)
    x0 = oracle.sample(2000, _gen(3))
    est = estimate_elbo(proc, oracle, x0, build_schedule("log-linear"), LogitAlphaProposal(), _gen(4), num_samples=2)
    assert est.encoding is not None
    without = float((est.total - est.encoding).mean())
    assert without < oracle.latent_entropy() - 1.0


def _latent_tv(samples: torch.Tensor, oracle: JumpOracle) -> float:
    """TV between the empirical law of z_0 samples (N, D) and the exact mixture of Poissons (mass never drawn
    counted in full)."""
    values, counts = torch.unique(samples, dim=0, return_counts=True)
    p = oracle.latent_log_pmf(values).exp()
    return 0.5 * float((counts.double() / samples.shape[0] - p).abs().sum() + (1 - p.sum()))


def _floor(oracle: JumpOracle, n: int) -> float:
    return sum(_latent_tv(oracle.sample_latent(n, _gen(100 + s)), oracle) for s in range(2)) / 2


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_bridge_with_the_exact_denoiser_reaches_the_table(scale):
    proc = JumpProcess(scale=scale)
    oracle = JumpOracle(proc, SAMPLER_SUPPORT, PROBS)
    n = 12_000
    x = build_sampler("bridge", num_steps=32).sample(proc, oracle, build_schedule("log-linear"), (n, 2), _gen(1))
    # measured at N = 12000, seeds 1-3: 0.045-0.049 vs floor 0.046 (scale 1), 0.080-0.089 vs 0.082 (scale 3)
    floor = _floor(oracle, n)
    assert _latent_tv(x, oracle) <= floor + 0.01, (_latent_tv(x, oracle), floor)
    assert int(x[:, 0].max()) > 60 * scale          # the large value is reached and passed (never capped)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_tau_leaping_with_the_exact_mean_reaches_the_table(scale):
    proc = JumpProcess(scale=scale)
    oracle = JumpOracle(proc, SAMPLER_SUPPORT, PROBS)
    n = 20_000
    x = build_sampler("tau-leaping", num_steps=256).sample(proc, oracle, build_schedule("blackout"), (n, 2), _gen(1))
    # measured: 0.0378 vs floor 0.036 (scale 1), 0.0726 vs 0.064 (scale 3); 8 leaps: 0.42 / 0.57
    assert _latent_tv(x, oracle) <= _floor(oracle, n) + 0.012


def test_tau_leaping_converges_and_too_few_leaps_do_not():
    proc = JumpProcess(scale=1.0)
    oracle = JumpOracle(proc, SAMPLER_SUPPORT, PROBS)
    n = 6000
    schedule = build_schedule("log-linear")
    floor = _floor(oracle, n)
    coarse = build_sampler("tau-leaping", num_steps=8).sample(proc, oracle, schedule, (n, 2), _gen(2))
    fine = build_sampler("tau-leaping", num_steps=64).sample(proc, oracle, schedule, (n, 2), _gen(2))
    tv_coarse, tv_fine = _latent_tv(coarse, oracle), _latent_tv(fine, oracle)
    assert tv_coarse > floor + 0.15 and tv_fine < tv_coarse / 3, (tv_coarse, tv_fine, floor)


def test_leaps_are_never_capped_at_large_counts():
    """All mass at x0 = 5000: every sampler's z_0 has mean 5000 lambda, far above any bound a finite K would set."""
    proc = JumpProcess(scale=2.0)
    oracle = JumpOracle(proc, torch.tensor([[5000]]), torch.tensor([1.0]))
    for name in ("bridge", "tau-leaping", "euler", "theta-trapezoidal"):
        z = build_sampler(name, num_steps=16).sample(proc, oracle, build_schedule("blackout"), (400, 1), _gen(5))
        assert abs(float(z.double().mean()) - 10_000) < 5 * math.sqrt(10_000 / 400) + 5, name
        data = proc.to_data(z)
        assert abs(float(data.double().mean()) - 5000) < 10, name


def test_mean_only_prediction_bridge_and_leap_have_the_same_law():
    """With a mean prediction (a trained network) the bridge plugs x0_hat into the Poisson thickening step, which
    is exactly the leap with x0_hat frozen: the same draws for the same generator."""
    proc = JumpProcess(scale=10.0)
    zt = torch.randint(0, 50, (300, 3))
    lam_t, lam_s = torch.full((300,), -2.0), torch.full((300,), -1.0)
    pred = proc.prediction_from_mean(torch.rand(300, 3, generator=_gen(6)) * 20, lam_t)
    a = proc.bridge_step(zt, pred, lam_t, lam_s, _gen(7))
    b = proc.leap(zt, pred, lam_t, lam_t, lam_s, "reject", _gen(7))
    assert torch.equal(a, b) and bool((a >= zt).all())


def test_options_are_validated_and_jump_has_no_marginal_matrix():
    with pytest.raises(ValueError, match="scale"):
        JumpProcess(scale=0.0)
    with pytest.raises(ValueError, match="mean_scale"):
        JumpProcess(mean_scale=float("nan"))
    with pytest.raises(ValueError, match="no finite state space"):
        JumpProcess().log_marginal_matrix(torch.zeros(1))
    with pytest.raises(ValueError, match="x0_mean"):
        JumpProcess().elbo_integrand(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1),
                                     Prediction(mean_missing=torch.zeros(1, 1)))
