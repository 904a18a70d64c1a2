"""Tests of the Blackout process's math (DESIGN.md section 3) against scipy and against the exact
time reversal. Statistical checks use fixed seeds and tolerances of 5 standard errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit

from discrete_diffusion.oracle import OracleDenoiser
from discrete_diffusion.processes import BlackoutProcess, Prediction
from discrete_diffusion.schedules import build_schedule


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _full(n: int, value: float) -> torch.Tensor:
    return torch.full((n,), value)


def _assert_moments(samples: torch.Tensor, mean: float, var: float, mu4: float) -> None:
    """Sample mean and variance within 5 standard errors of the given moments (mu4: 4th central)."""
    x = samples.double()
    n = x.numel()
    assert abs(float(x.mean()) - mean) <= 5 * math.sqrt(var / n) + 1e-12
    assert abs(float(x.var()) - var) <= 5 * math.sqrt(max(mu4 - var**2, 0.0) / n) + 1e-12


def _binomial_moments(n: float, p: float) -> tuple[float, float, float]:
    pq = p * (1 - p)
    return n * p, n * pq, n * pq * (1 + 3 * (n - 2) * pq)


# ----- forward marginal ------------------------------------------------------------------------------
def test_sample_marginal_is_binomial():
    proc = BlackoutProcess(9)
    x0 = torch.tensor([0, 3, 8]).repeat(100_000, 1)
    lam = torch.tensor([-1.0, 2.0]).repeat(50_000)  # two noise levels, alternating rows
    xt = proc.sample_marginal(x0, lam, _gen(1))
    assert xt.dtype == torch.long and xt.shape == x0.shape
    assert torch.all((xt >= 0) & (xt <= x0))
    for row, lv in enumerate([-1.0, 2.0]):
        for col, n in enumerate([0, 3, 8]):
            _assert_moments(xt[row::2, col], *_binomial_moments(n, expit(lv)))


@pytest.mark.parametrize("lam", [-4.0, -0.3, 0.0, 1.7, 6.0])
def test_log_marginal_matrix_matches_scipy(lam):
    proc = BlackoutProcess(7)
    log_q = proc.log_marginal_matrix(torch.tensor([lam, lam], dtype=torch.float64))
    assert log_q.shape == (2, 7, 7) and log_q.dtype == torch.float64
    torch.testing.assert_close(torch.logsumexp(log_q, -1), torch.zeros(2, 7, dtype=torch.float64))
    k = np.arange(7)
    expected = stats.binom.pmf(k[None, :], k[:, None], expit(lam))  # [x0, y]
    torch.testing.assert_close(log_q[0].exp(), torch.from_numpy(expected), rtol=1e-10, atol=1e-14)


# ----- bridge ------------------------------------------------------------------------------------------
def test_bridge_to_alpha_one_returns_x0():
    proc = BlackoutProcess(6)
    x0 = torch.randint(0, 6, (500, 4), generator=_gen(2))
    lam_t = _full(500, 0.5)
    xt = proc.sample_marginal(x0, lam_t, _gen(3))
    assert torch.equal(proc.bridge_from_x0(xt, x0, lam_t, _full(500, math.inf), _gen(4)), x0)


def test_bridge_composes_to_binomial():
    """x_t ~ Binomial(x0, alpha_t), then the bridge to s: x_s ~ Binomial(x0, alpha_s)."""
    proc = BlackoutProcess(9)
    x0 = torch.tensor([8, 3]).repeat(200_000, 1)
    lam_t, lam_s = _full(200_000, -0.5), _full(200_000, 1.0)
    xt = proc.sample_marginal(x0, lam_t, _gen(5))
    xs = proc.bridge_from_x0(xt, x0, lam_t, lam_s, _gen(6))
    assert torch.all((xs >= xt) & (xs <= x0))
    for col, n in enumerate([8, 3]):
        _assert_moments(xs[:, col], *_binomial_moments(n, expit(1.0)))


def test_birth_probability_formula():
    lam_t = torch.tensor([-3.0, -0.5, 0.0, 2.0, 2.0, 10.0])
    lam_s = torch.tensor([-1.0, 0.5, math.inf, 2.0, 7.0, 11.0])
    a_t, a_s = expit(lam_t.double().numpy()), expit(lam_s.double().numpy())
    expected = torch.from_numpy((a_s - a_t) / (1 - a_t))
    got = BlackoutProcess.birth_probability(lam_t, lam_s)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-12)
    assert float(got[2]) == 1.0 and float(got[3]) == 0.0


# ----- denoiser output -----------------------------------------------------------------------------
def _random_logits_prediction(proc, lam, seed=7):
    g = _gen(seed)
    xt = torch.randint(0, proc.num_states, (lam.shape[0], 5), generator=g)
    out = 3.0 * torch.randn(lam.shape[0], proc.num_states, 5, generator=g)
    return xt, proc.prediction_from_output(out, xt, lam, "logits"), out


def test_logits_prediction_support_normalisation_and_mean():
    proc = BlackoutProcess(6)
    xt, pred, _ = _random_logits_prediction(proc, torch.tensor([-6.0, -1.0, 0.0, 2.0, 5.0, 9.0]))
    probs = pred.x0_log_probs.exp()
    x0_values = torch.arange(6)
    assert torch.all(probs[x0_values < xt[..., None]] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]))
    torch.testing.assert_close(pred.mean_missing, (probs * (x0_values - xt[..., None])).sum(-1))
    assert torch.all(pred.mean_missing >= 0) and torch.all(pred.mean_missing <= 5 - xt + 1e-5)


def test_logits_with_zero_net_output_give_binomial_posterior():
    """With zero logits (uniform prior over x0) p(x0 | x_t) is proportional to Binomial(x_t; x0, alpha)."""
    proc = BlackoutProcess(6)
    lam = torch.tensor([-1.5, 0.7])
    xt = torch.tensor([[0, 2, 5], [1, 3, 4]])
    pred = proc.prediction_from_output(torch.zeros(2, 6, 3), xt, lam, "logits")
    lik = stats.binom.pmf(xt.numpy()[..., None], np.arange(6), expit(lam.numpy())[:, None, None])
    expected = torch.from_numpy(lik / lik.sum(-1, keepdims=True)).float()
    torch.testing.assert_close(pred.x0_log_probs.exp(), expected, rtol=1e-5, atol=1e-7)


def test_logits_prediction_concentrates_as_alpha_to_one():
    """As alpha -> 1, p(x0 = x_t | x_t) -> 1 and yhat / (1 - alpha) tends to the finite limit
    (x_t + 1) exp(logit[x_t + 1] - logit[x_t]) (the x0 = x_t + 1 term dominates), 0 at x_t = N."""
    proc = BlackoutProcess(6)
    previous = None
    for lam_value in [2.0, 6.0, 12.0, 24.0]:
        xt, pred, out = _random_logits_prediction(proc, _full(64, lam_value), seed=8)
        stay = pred.x0_log_probs.exp().gather(-1, xt[..., None])[..., 0]
        if previous is not None:
            assert torch.all(1 - stay <= previous + 1e-6)
        previous = 1 - stay
    assert float(previous.max()) < 1e-6
    logits = out.movedim(1, -1)
    up = logits.gather(-1, (xt + 1).clamp_max(5)[..., None])[..., 0] - logits.gather(-1, xt[..., None])[..., 0]
    limit = torch.where(xt < 5, (xt + 1) * up.exp(), torch.zeros_like(up))
    ratio = pred.mean_missing / torch.sigmoid(torch.tensor(-24.0))
    torch.testing.assert_close(ratio, limit, rtol=1e-3, atol=1e-6)


def test_logits_prediction_at_alpha_exactly_one():
    proc = BlackoutProcess(6)
    xt, pred, _ = _random_logits_prediction(proc, _full(4, math.inf))
    assert torch.equal(pred.x0_log_probs.exp().argmax(-1), xt)
    assert torch.all(pred.mean_missing == 0)


def test_mean_prediction_bounds_and_vanishing():
    proc = BlackoutProcess(6)
    g = _gen(9)
    xt = torch.randint(0, 6, (32, 4), generator=g)
    out = 3.0 * torch.randn(32, 1, 4, generator=g)
    room = (5 - xt).float()
    for lam_value in [-8.0, 0.0, 4.0, 10.0, 20.0, 30.0]:
        lam = _full(32, lam_value)
        yhat = proc.prediction_from_output(out, xt, lam, "mean").mean_missing
        assert torch.all(yhat >= 0) and torch.all(yhat <= room)
        # sigmoid(o - lam) / sigmoid(-lam) = (1 + e^lam) / (1 + e^(lam - o)) <= max(1, e^o)
        bound = room * torch.clamp(out[:, 0].exp(), min=1.0)
        assert torch.all(yhat / torch.sigmoid(-lam)[:, None] <= bound * (1 + 1e-4))
    torch.testing.assert_close(yhat / torch.sigmoid(-lam)[:, None], room * out[:, 0].exp(), rtol=1e-4, atol=0)


# ----- ELBO pieces -------------------------------------------------------------------------------------
def test_bregman_terms_nonnegative_and_zero_at_truth():
    proc = BlackoutProcess(8)
    g = _gen(10)
    x0 = torch.randint(0, 8, (200, 6), generator=g)
    xt = (x0 * torch.rand(200, 6, generator=g)).long()
    m = (x0 - xt).float()
    yhat = 6.0 * torch.rand(200, 6, generator=g)
    terms = proc.bregman_terms(x0, xt, Prediction(mean_missing=yhat))
    assert torch.all(terms >= 0)
    expected = yhat - m * torch.log(yhat) + torch.xlogy(m, m) - m
    torch.testing.assert_close(terms, expected)
    exact = proc.bregman_terms(x0, xt, Prediction(mean_missing=m))
    # zero up to float32 rounding: log(m) and xlogy(m, m) may round differently (about 1e-6 at m = 7)
    assert torch.all(exact.abs() <= 1e-6 * (1 + m))
    assert torch.all(exact[m == 0] == 0)
    # and strictly positive away from the truth
    assert torch.all(proc.bregman_terms(x0, xt, Prediction(mean_missing=m + 0.5)) > 1e-3)


def test_elbo_integrand_is_alpha_times_bregman_and_matches_generic_form():
    proc = BlackoutProcess(6)
    g = _gen(11)
    lam = torch.tensor([-2.0, 0.0, 1.5, 4.0])
    x0 = torch.randint(0, 6, (4, 3), generator=g)
    xt = proc.sample_marginal(x0, lam, g)
    pred = Prediction(mean_missing=4.0 * torch.rand(4, 3, generator=g) + 0.05)
    got = proc.elbo_integrand(x0, xt, lam, pred)
    terms = proc.bregman_terms(x0, xt, pred)
    torch.testing.assert_close(got, torch.sigmoid(lam) * terms.sum(1))
    # DESIGN.md section 3, generic form per dlam: (1 - alpha) Q[y, x] [s - r log s + r log r - r],
    # y = x + 1, Q[y, x] = y (each of the y units dies at unit rate), r = q(y|x0) / q(x|x0),
    # s = yhat * alpha / ((x + 1)(1 - alpha)) (the model's E[r | x_t]).
    a = expit(lam.numpy())[:, None]
    x, n, yhat = xt.numpy(), x0.numpy(), pred.mean_missing.double().numpy()
    r = stats.binom.pmf(x + 1, n, a) / stats.binom.pmf(x, n, a)
    s = yhat * a / ((x + 1) * (1 - a))
    generic = (1 - a) * (x + 1) * (s - r * np.log(s) + np.where(r > 0, r * np.log(np.where(r > 0, r, 1)), 0) - r)
    torch.testing.assert_close(got.double(), torch.from_numpy(generic.sum(1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha1", [1e-2, math.exp(-15.0)])
def test_prior_kl_matches_scipy(alpha1):
    proc = BlackoutProcess(5)
    x0 = torch.tensor([[0, 4, 2], [3, 3, 1]])
    lam = _full(2, math.log(alpha1 / (1 - alpha1)))
    y = np.arange(5)
    expected = []
    for row in x0.numpy():
        total = 0.0
        for v in row:
            p, q = stats.binom.pmf(y, v, alpha1), stats.binom.pmf(y, 4, alpha1)
            total += float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0)))
        expected.append(total)
    torch.testing.assert_close(proc.prior_kl(x0, lam).double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sites", [(7,), (3, 4)])
def test_network_features_shape_and_range(sites):
    proc = BlackoutProcess(17)
    xt = torch.randint(0, 17, (11,) + sites, generator=_gen(12))
    xt[0] = 0
    xt[1] = 16
    lam = torch.linspace(-15.0, 15.0, 11)
    feats = proc.network_features(xt, lam)
    assert feats.shape == (11, 2) + sites and feats.dtype == torch.float32
    assert torch.all(feats.isfinite()) and torch.all(feats.abs() <= 1.0)
    torch.testing.assert_close(feats[:, 0], 2.0 * xt.float() / 16 - 1.0)


def test_network_features_finite_at_extreme_noise():
    proc = BlackoutProcess(5)
    feats = proc.network_features(torch.tensor([[0, 2, 4]]), torch.tensor([-200.0]))
    assert torch.all(feats.isfinite())


# ----- generation ------------------------------------------------------------------------------------
def test_tau_leap_mean_births_and_cap():
    proc = BlackoutProcess(51)
    n = 100_000
    xt = torch.zeros(n, 2, dtype=torch.long)
    lam_t, lam_s = _full(n, -1.0), _full(n, 0.5)
    yhat = torch.tensor([2.0, 0.3]).expand(n, 2)
    births = proc.tau_leap(xt, yhat, lam_t, lam_s, _gen(13)) - xt
    hazard = math.log((1 - expit(-1.0)) / (1 - expit(0.5)))
    for col, y in enumerate([2.0, 0.3]):
        mu = y * hazard  # Poisson: mean = var, 4th central moment = mu + 3 mu^2
        _assert_moments(births[:, col], mu, mu, mu + 3 * mu**2)
    near_full = torch.full((n, 2), 49, dtype=torch.long)
    capped = proc.tau_leap(near_full, torch.full((n, 2), 30.0), _full(n, -2.0), _full(n, 3.0), _gen(14))
    assert int(capped.max()) == 50 and torch.all(capped >= near_full)


@pytest.mark.parametrize("yhat", [0.3, 2.6])
def test_mean_bridge_stochastic_rounding_keeps_mean(yhat):
    proc = BlackoutProcess(11)
    n = 200_000
    xt = torch.full((n,), 2, dtype=torch.long)
    lam_t, lam_s = _full(n, -0.5), _full(n, 0.8)
    p = float(BlackoutProcess.birth_probability(lam_t[:1], lam_s[:1]))
    births = (proc.mean_bridge(xt, torch.full((n,), yhat), lam_t, lam_s, _gen(15)) - xt).double()
    low = math.floor(yhat)  # births ~ Binomial(low or low + 1, p)
    var = yhat * p * (1 - p) + (yhat - low) * (1 - (yhat - low)) * p**2
    assert abs(float(births.mean()) - yhat * p) <= 5 * math.sqrt(var / n)
    assert int(births.max()) <= low + 1
    capped = proc.mean_bridge(torch.full((n,), 9), torch.full((n,), yhat), lam_t, _full(n, math.inf), _gen(16))
    assert int(capped.max()) <= 10


def test_reverse_rates_are_births_bounded_by_rate_bound():
    proc = BlackoutProcess(5)
    g = _gen(17)
    xt = torch.randint(0, 5, (64, 6), generator=g)
    xt[0] = 4
    lam = 4.0 * torch.randn(64, generator=g)
    yhat = (4 - xt).float() * torch.rand(64, 6, generator=g)
    rates = proc.reverse_rates(xt, Prediction(mean_missing=yhat), lam)
    assert rates.shape == (64, 6, 5) and torch.all(rates >= 0)
    expected = torch.zeros_like(rates)
    birth = torch.sigmoid(lam.double())[:, None] * yhat.double()
    inside = xt < 4
    expected[inside] = torch.nn.functional.one_hot(xt[inside] + 1, 5).double() * birth[inside][:, None]
    torch.testing.assert_close(rates, expected)
    total = rates.sum(dim=(1, 2))
    assert torch.all(total <= torch.sigmoid(lam.double()) * proc.reverse_rate_bound(xt) * (1 + 1e-9))
    assert torch.all(rates[0] == 0)


@pytest.mark.parametrize("t", [0.1, 0.4, 0.8])
def test_oracle_reverse_rate_is_exact_time_reversal(t):
    """Single site, K = 4. In t, the exact reversal of R_t(x+1 -> x) = beta(t) (x + 1) is
        Rhat_t(x -> x+1) = beta(t) (x + 1) p_t(x + 1) / p_t(x),   p_t(x) = sum_x0 pi(x0) Bin(x; x0, alpha_t).
    The library's rates are per unit of lam = logit(alpha); lam increases as t decreases, with
    |dlam/dt| = |alpha'| / (alpha (1 - alpha)), so rate_per_lam = Rhat_t / |dlam/dt|. Algebra for the
    record: Bin(x+1; x0, a) / Bin(x; x0, a) = (x0 - x)/(x + 1) * a/(1 - a) and beta = |alpha'|/alpha,
    so rate_per_lam = (1 - a)(x + 1) p(x + 1)/p(x) = a * E[x0 - x | x], i.e. alpha * yhat with the
    exact yhat: the form reverse_rates uses. The test compares numbers, not this algebra."""
    sched = build_schedule("cosine")
    pi = np.array([0.1, 0.4, 0.2, 0.3])
    proc = BlackoutProcess(4)
    oracle = OracleDenoiser(proc, torch.from_numpy(pi), num_sites=1)
    tt = torch.tensor([t], dtype=torch.float64)
    a, da = float(sched.alpha(tt)), float(sched.alpha_derivative(tt))
    beta = float(sched.beta(tt))
    k = np.arange(4)
    p_t = (pi[:, None] * stats.binom.pmf(k[None, :], k[:, None], a)).sum(0)
    x = torch.arange(3)[:, None]  # states with room for a birth
    lam = torch.full((3,), math.log(a / (1 - a)))
    rates = proc.reverse_rates(x, oracle(x, lam.float()), lam)
    got = rates[torch.arange(3), 0, torch.arange(1, 4)]
    exact_t = beta * (k[:3] + 1) * p_t[1:] / p_t[:3]
    per_lam = exact_t / (abs(da) / (a * (1 - a)))
    torch.testing.assert_close(got, torch.from_numpy(per_lam), rtol=2e-5, atol=1e-9)
    assert float(rates.sum()) == pytest.approx(float(got.sum()), rel=1e-12)
