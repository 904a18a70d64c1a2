"""Unit tests of the masking and uniform processes' closed forms (DESIGN.md section 3) against direct
numpy evaluations of the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import expit, log_softmax, softmax

from discrete_diffusion.oracle import OracleDenoiser
from discrete_diffusion.processes import MaskingProcess, Prediction, UniformProcess
from discrete_diffusion.processes.base import sample_categorical
from discrete_diffusion.processes.masking import unmask_probability
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

LAMS = torch.tensor([-6.0, -1.0, 0.0, 0.8, 3.0, 9.0])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- masking -----------------------------------------------------------------------------------------
def test_masking_marginals_and_features():
    proc = MaskingProcess(3)
    q = proc.log_marginal_matrix(LAMS).exp()
    a = torch.from_numpy(expit(LAMS.double().numpy()))
    expected = torch.zeros(6, 3, 4, dtype=torch.float64)
    expected[:, torch.arange(3), torch.arange(3)] = a[:, None]
    expected[:, :, 3] = (1 - a)[:, None]
    torch.testing.assert_close(q, expected)
    xt = torch.tensor([[0, 3, 2]])
    torch.testing.assert_close(proc.network_features(xt, LAMS[:1])[0], torch.eye(4)[:, [0, 3, 2]])


def test_masking_subs_prediction_and_elbo_integrand():
    proc = MaskingProcess(4)
    g = _gen(1)
    x0 = torch.randint(0, 4, (6, 8), generator=g)
    xt = proc.sample_marginal(x0, LAMS, g)
    out = 2.0 * torch.randn(6, 4, 8, generator=g)
    pred = proc.prediction_from_output(out, xt, LAMS, "logits")
    masked = xt == 4
    assert bool(masked.any()) and bool((~masked).any())
    torch.testing.assert_close(pred.x0_log_probs[masked], torch.log_softmax(out.movedim(1, -1), -1)[masked])
    carried = pred.x0_log_probs[~masked]
    assert torch.equal(carried.exp(), torch.nn.functional.one_hot(xt[~masked], 4).float())
    nll = -pred.x0_log_probs.gather(-1, x0[..., None])[..., 0]
    expected = torch.sigmoid(LAMS) * torch.where(masked, nll, torch.zeros_like(nll)).sum(1)
    torch.testing.assert_close(proc.elbo_integrand(x0, xt, LAMS, pred), expected)
    torch.testing.assert_close(proc.reconstruction_nll(x0, xt, pred), torch.where(masked, nll, 0 * nll).sum(1))


def test_masking_prior_samples_and_exact_kl():
    proc = MaskingProcess(5)
    lam = 0.4
    x = proc.sample_prior((40_000,), lam, _gen(2))
    alpha = expit(lam)
    freq = torch.bincount(x, minlength=6).double().numpy() / 40_000
    expected = np.r_[np.full(5, alpha / 5), 1 - alpha]
    assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / 40_000))
    torch.testing.assert_close(proc.prior_log_probs(torch.tensor([lam])).exp()[0], torch.from_numpy(expected))
    # KL(q_1(.|x0) || prior) from the definitions: alpha log K per site, whatever x0
    lam_b = torch.full((3,), lam)
    q1 = proc.log_marginal_matrix(lam_b)[0].numpy()                     # (K, K + 1) log
    prior = np.log(expected)
    direct = [sum(math.exp(q1[v, y]) * (q1[v, y] - prior[y]) for y in range(6) if np.isfinite(q1[v, y]))
              for v in range(5)]
    assert np.allclose(direct, alpha * math.log(5))
    x0 = torch.tensor([[0, 4], [2, 2], [1, 3]])
    torch.testing.assert_close(proc.prior_kl(x0, lam_b).double(), torch.full((3,), 2 * alpha * math.log(5),
                                                                             dtype=torch.float64))
    assert proc.sample_prior((100,), -math.inf, _gen(3)).eq(5).all()


def test_masking_reverse_rates_total_equals_bound():
    proc = MaskingProcess(4)
    g = _gen(4)
    xt = proc.sample_marginal(torch.randint(0, 4, (6, 9), generator=g), LAMS, g)
    pred = proc.prediction_from_output(torch.randn(6, 4, 9, generator=g), xt, LAMS, "logits")
    rates = proc.reverse_rates(xt, pred, LAMS)
    total = rates.sum(dim=(1, 2))
    torch.testing.assert_close(total, torch.sigmoid(LAMS.double()) * proc.reverse_rate_bound(xt), rtol=1e-12, atol=0)
    assert torch.all(rates[xt != 4] == 0) and torch.all(rates[..., 4] == 0)


def test_unmask_probability_is_accurate_near_alpha_one():
    lam_t = torch.tensor([-3.0, 0.0, 2.0, 25.0, 30.0, 1.0])
    lam_s = torch.tensor([-1.0, 0.0, 5.0, 26.0, math.inf, 40.0])
    a_t, a_s = expit(-lam_t.double().numpy()), expit(-lam_s.double().numpy())   # 1 - alpha, accurately
    expected = torch.from_numpy(1.0 - a_s / a_t)
    torch.testing.assert_close(unmask_probability(lam_t, lam_s), expected, rtol=1e-12, atol=0)


# ----- uniform -----------------------------------------------------------------------------------------
def _uniform_q(k: int, lam: float) -> np.ndarray:
    a = expit(lam)
    return a * np.eye(k) + (1 - a) / k


def test_uniform_marginals_and_prior_kl():
    proc = UniformProcess(5)
    q = proc.log_marginal_matrix(LAMS).exp().numpy()
    for b, lam in enumerate(LAMS.tolist()):
        assert np.allclose(q[b], _uniform_q(5, lam), rtol=1e-12, atol=0)
    x0 = torch.randint(0, 5, (6, 3), generator=_gen(5))
    a = expit(LAMS.double().numpy())
    c = (1 - a) / 5
    per_site = (a + c) * np.log((a + c) * 5) + 4 * c * np.log(c * 5)
    torch.testing.assert_close(proc.prior_kl(x0, LAMS).double(), torch.from_numpy(3 * per_site), rtol=1e-6, atol=1e-9)


def test_uniform_prediction_is_bayes_with_flat_prior_and_ratios_are_udlm():
    proc = UniformProcess(4)
    g = _gen(6)
    xt = torch.randint(0, 4, (6, 5), generator=g)
    zero = proc.prediction_from_output(torch.zeros(6, 4, 5), xt, LAMS, "logits").x0_log_probs.exp()
    for b, lam in enumerate(LAMS.tolist()):
        lik = _uniform_q(4, lam)[:, xt[b].numpy()].T                  # q(x_t | x0) for every x0: (sites, K)
        assert np.allclose(zero[b].numpy(), lik / lik.sum(-1, keepdims=True), atol=1e-6)
    out = 2.0 * torch.randn(6, 4, 5, generator=g)
    pred = proc.prediction_from_output(out, xt, LAMS, "logits")
    s = proc.ratio_estimates(xt, pred, LAMS).numpy()
    pi = softmax(out.movedim(1, -1).double().numpy(), -1)
    gain = 4 * np.exp(LAMS.double().numpy())[:, None, None]
    pi_x = np.take_along_axis(pi, xt.numpy()[..., None], -1)
    other = np.arange(4)[None, None, :] != xt.numpy()[..., None]    # s_y is defined for y != x_t
    assert np.allclose(s[other], ((1 + gain * pi) / (1 + gain * pi_x))[other], rtol=1e-5)


def test_uniform_two_pass_parameterisation_matches_the_boosted_log_softmax_and_its_gradient():
    """prediction_from_output's logsumexp + softplus form against log_softmax(net + log(1 + g) 1[x0 = x_t])."""
    proc = UniformProcess(7)
    g = _gen(8)
    xt = torch.randint(0, 7, (6, 5), generator=g)
    out = (3.0 * torch.randn(6, 7, 5, generator=g)).double().requires_grad_()
    weights = torch.randn(6, 5, 7, generator=g).double()
    fast = proc.prediction_from_output(out, xt, LAMS, "logits").x0_log_probs
    (fast * weights).sum().backward()
    grad_fast, out.grad = out.grad.clone(), None
    boost = torch.nn.functional.softplus(LAMS.double() + math.log(7))[:, None, None]
    reference = torch.log_softmax(out.movedim(1, -1) + boost * torch.nn.functional.one_hot(xt, 7), -1)
    (reference * weights).sum().backward()
    torch.testing.assert_close(fast, reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(grad_fast, out.grad, atol=1e-10, rtol=0)


def _generic_uniform_integrand(k, x0, xt, lam, log_probs):
    """(1 - alpha) sum_{y != x} (1/K) [s - r log s + r log r - r] with r, s from the definitions."""
    q = _uniform_q(k, lam)
    total = 0.0
    for site in range(len(x0)):
        x, p = xt[site], np.exp(log_probs[site])
        for y in range(k):
            if y == x:
                continue
            r = q[x0[site], y] / q[x0[site], x]
            s = float(np.sum(p * q[:, y] / q[:, x]))
            total += (s - r * np.log(s) + r * np.log(r) - r) / k
    return (1 - expit(lam)) * total


def test_uniform_elbo_integrand_matches_the_generic_definition():
    proc = UniformProcess(4)
    g = _gen(7)
    x0 = torch.randint(0, 4, (6, 5), generator=g)
    xt = proc.sample_marginal(x0, LAMS, g)
    pred = Prediction(x0_log_probs=torch.from_numpy(
        log_softmax(2 * np.random.default_rng(0).normal(size=(6, 5, 4)), -1)))
    got = proc.elbo_integrand(x0, xt, LAMS, pred)
    expected = [_generic_uniform_integrand(4, x0[b].numpy(), xt[b].numpy(), float(LAMS[b]),
                                           pred.x0_log_probs[b].numpy()) for b in range(6)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_uniform_elbo_integrand_stays_integrable_as_alpha_to_one():
    """With log(1 + g) added to the logits, the integrand at x_t = x0 vanishes like 1 - alpha as t -> 0
    (it would not without it), and a jumped site (probability ~ 1 - alpha) costs only ~ log g ~ lam."""
    proc = UniformProcess(4)
    g = _gen(8)
    x0 = torch.randint(0, 4, (5, 16), generator=g)
    out = 3.0 * torch.randn(5, 4, 16, generator=g)
    jumped = x0.clone()
    jumped[:, 0] = (x0[:, 0] + 1) % 4
    for lam_value in [10.0, 30.0, 60.0, 600.0]:
        lam = torch.full((5,), lam_value)
        clean = proc.elbo_integrand(x0, x0, lam, proc.prediction_from_output(out, x0, lam, "logits"))
        assert torch.all(clean >= 0)
        if lam_value in (30.0, 60.0):  # (1 - alpha)/K sum_{y != x} s_y with s_y -> pi_y / pi_x (UDLM)
            pi = torch.softmax(out.movedim(1, -1).double(), -1)
            pi_x = pi.gather(-1, x0[..., None])
            limit = ((pi / pi_x).sum(-1) - 1).sum(1) / 4
            torch.testing.assert_close(clean.double() * math.exp(lam_value), limit, rtol=1e-4, atol=0)
        one = proc.elbo_integrand(x0, jumped, lam, proc.prediction_from_output(out, jumped, lam, "logits"))
        assert torch.all(torch.isfinite(one)) and float(one.max()) < 2.0 * min(lam_value, 500.0) + 20.0


def test_uniform_bridge_probabilities_match_the_definition():
    proc = UniformProcess(3)
    x0 = torch.arange(3).repeat_interleave(3)[None, :]
    xt = torch.arange(3).repeat(3)[None, :]
    for lam_t, lam_s in [(-2.0, 0.5), (0.0, 4.0), (3.0, math.inf), (1.0, 1.0)]:
        got = proc.bridge_log_probs(xt, x0, torch.tensor([lam_t]), torch.tensor([lam_s])).exp()[0].numpy()
        rho = expit(lam_t) / expit(lam_s)
        forward = rho * np.eye(3) + (1 - rho) / 3                     # P_{s->t}
        q_s = _uniform_q(3, lam_s) if math.isfinite(lam_s) else np.eye(3)
        for site in range(9):
            w = forward[:, int(xt[0, site])] * q_s[int(x0[0, site])]
            assert np.allclose(got[site], w / w.sum(), rtol=1e-12, atol=1e-15)


def test_uniform_has_no_exact_simulator():
    proc = UniformProcess(3)
    with pytest.raises(ValueError, match="reverse_rate_bound"):
        proc.reverse_rate_bound(torch.zeros(2, 3, dtype=torch.long))
    oracle = OracleDenoiser(proc, torch.full((9,), 1 / 9), num_sites=2)
    with pytest.raises(ValueError, match="reverse_rate_bound"):
        build_sampler("exact").sample(proc, oracle, build_schedule("cosine"), (4, 2), generator=_gen(9))


def test_uniform_fast_bridge_has_the_law_of_bridge_log_probs():
    """bridge_from_x0 samples three groups in O(1); it must match the full K-way bridge distribution."""
    k, n = 5, 200_000
    proc = UniformProcess(k)
    pairs = torch.tensor([[0, 0], [3, 3], [1, 4], [4, 1], [2, 0]])            # (x_t, x0): equal and distinct
    xt = pairs[:, 0].repeat(n // 5)[:, None]
    x0 = pairs[:, 1].repeat(n // 5)[:, None]
    lam_t, lam_s = torch.full((n,), -0.8), torch.full((n,), 0.9)
    drawn = proc.bridge_from_x0(xt, x0, lam_t, lam_s, torch.Generator().manual_seed(3))
    exact = proc.bridge_log_probs(xt[:5], x0[:5], lam_t[:5], lam_s[:5]).exp()[:, 0]   # (5 pairs, K)
    for i in range(5):
        freq = torch.bincount(drawn[i::5, 0], minlength=k).double() / (n // 5)
        assert float((freq - exact[i]).abs().max()) < 0.006, (pairs[i], freq, exact[i])


@pytest.mark.parametrize("lams", [(-2.0, -0.5), (0.3, 2.5), (-6.0, 6.0), (-math.inf, -3.0)])
def test_uniform_bridge_step_has_the_law_of_sample_x0_then_bridge(lams):
    """bridge_step draws x0 only at sites that take its value; it must match sample_x0 followed by bridge_from_x0
    (lam_t = -inf: the first step from pure noise)."""
    k, n = 4, 120_000
    proc = UniformProcess(k)
    xt = torch.tensor([0, 2, 3]).expand(n, 3).clone()
    lam_t, lam_s = torch.full((n,), lams[0]), torch.full((n,), lams[1])
    logits = 1.5 * torch.randn(1, k, 3, generator=torch.Generator().manual_seed(4)).expand(n, k, 3)
    pred = proc.prediction_from_output(logits, xt, lam_t, "logits")
    fast = proc.bridge_step(xt, pred, lam_t, lam_s, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    slow = proc.bridge_from_x0(xt, proc.sample_x0(xt, pred, g), lam_t, lam_s, g)
    for site in range(3):
        freq = [torch.bincount(x[:, site], minlength=k).double() / n for x in (fast, slow)]
        assert float((freq[0] - freq[1]).abs().max()) < 0.008, (site, freq)


def test_sample_x0_overrides_have_the_law_of_the_k_way_draw():
    """Uniform draws only where x0 != x_t, masking only at masked sites: the law of sample_categorical."""
    k, n = 4, 120_000
    for proc, xt in ((UniformProcess(k), torch.tensor([0, 2, 3])), (MaskingProcess(k), torch.tensor([k, 2, k]))):
        xt = xt.expand(n, 3).clone()
        logits = 1.5 * torch.randn(1, k, 3, generator=torch.Generator().manual_seed(4)).expand(n, k, 3)
        pred = proc.prediction_from_output(logits, xt, torch.full((n,), 0.7), proc.parameterizations[0])
        fast = proc.sample_x0(xt, pred, torch.Generator().manual_seed(5))
        slow = sample_categorical(proc.x0_log_probs(pred, xt), torch.Generator().manual_seed(6))
        for site in range(3):
            freq = [torch.bincount(x[:, site], minlength=k).double() / n for x in (fast, slow)]
            assert float((freq[0] - freq[1]).abs().max()) < 0.008, (proc.name, site, freq)
