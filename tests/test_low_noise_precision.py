"""Exactness at the low-noise end (issue 10, items 5 and the precision nits): quantities of the form 1 - (a number
near 1) must keep their digits. Each is checked against an independent float64 evaluation of its definition."""

from __future__ import annotations

import math

import torch

import discrete_diffusion.processes.uniform as uniform_module
from discrete_diffusion.processes import BlackoutProcess, UniformProcess

K, LAM = 256, 15.0


def _uniform_case(seed: int = 0) -> tuple[UniformProcess, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 network logits (B, K, S), x_t (B, S) and lam (B,) at K = 256, lam = 15."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 128, generator=gen) * 3.0
    xt = torch.randint(0, K, (2, 128), generator=gen)
    return UniformProcess(K), logits, xt, torch.full((2,), LAM)


def _reference(logits: torch.Tensor, xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """float64 (1 - p_x, p_x, 1/(1 + g)) from the definition p = softmax(l + log(1 + g) 1[x0 = x_t])."""
    g = K * math.exp(LAM)
    boosted = logits.double().movedim(1, -1) + math.log1p(g) * torch.nn.functional.one_hot(xt, K).double()
    probs = torch.softmax(boosted, dim=-1)
    p_x = torch.gather(probs, -1, xt[..., None])[..., 0]
    rest = probs.scatter(-1, xt[..., None], 0.0).sum(-1)
    return rest, p_x, 1.0 / (1.0 + g)


def test_uniform_noise_probability_is_accurate_at_low_noise():
    """1 - p_x and pi = (1 - p_x) + p_x/(1 + g) at K = 256, lam = 15 from a float32 network output: relative
    error < 1e-3 (log p_x formed as a float32 difference of terms of size lam + log K put 1 - p_x off by 0.25 in
    the median and up to ~100x)."""
    proc, logits, xt, lam = _uniform_case()
    pred = proc.prediction_from_output(logits, xt, lam, "logits")
    rest, p_x, keep = _reference(logits, xt)
    log_p_x = torch.gather(pred.x0_log_probs, -1, xt[..., None])[..., 0].double()
    assert float(((-torch.expm1(log_p_x) - rest).abs() / rest).max()) < 1e-3
    # the other probabilities too (they sum to 1 - p_x)
    others = pred.x0_log_probs.double().exp().scatter(-1, xt[..., None], 0.0).sum(-1)
    assert float(((others - rest).abs() / rest).max()) < 1e-3
    expected = rest + p_x * keep
    got = proc.noise_probability(xt, pred, lam)
    assert got.dtype == torch.float64
    assert float(((got - expected).abs() / expected).max()) < 1e-3


def test_uniform_leap_move_hazard_is_accurate_at_low_noise(monkeypatch):
    """The leap's expected jumps per site, h [(1 - alpha)(K - 1)/K pi + alpha (1 - p_x)], at lam = 15 against
    float64: relative error < 1e-3 (the rest term 1 - p_x came from an inaccurate float32 log p_x)."""
    proc, logits, xt, lam = _uniform_case(1)
    pred = proc.prediction_from_output(logits, xt, lam, "logits")
    seen = []
    original = uniform_module.move_probability

    def recording(total: torch.Tensor, rule: str) -> torch.Tensor:
        seen.append(total.clone())
        return original(total, rule)

    monkeypatch.setattr(uniform_module, "move_probability", recording)
    width = 0.5
    proc.leap(xt, pred, lam, lam, lam + width, "first", torch.Generator().manual_seed(0))
    rest, p_x, keep = _reference(logits, xt)
    alpha = 1.0 / (1.0 + math.exp(-LAM))
    expected = width * ((1 - alpha) * (K - 1) / K * (rest + p_x * keep) + alpha * rest)
    assert len(seen) == 1
    assert float(((seen[0] - expected).abs() / expected).max()) < 1e-3


def test_uniform_bridge_weights_keep_their_digits_near_alpha_one():
    """far_0 = (1 - alpha_s)/K and far_t = (1 - rho)/K stay positive and exact where 1 - sigmoid(lam) and
    1 - exp(log rho) round to 0 in float64 (lam >= 37)."""
    proc = UniformProcess(4)
    xt = torch.zeros(3, 2, dtype=torch.long)
    lam_t = torch.tensor([30.0, 38.0, 45.0], dtype=torch.float64)
    lam_s = lam_t + 1.0
    far_t, near_t, far_0, near_0 = proc._bridge_weights(xt, lam_t, lam_s)
    one_minus_alpha_s = torch.exp(-lam_s) / (1 + torch.exp(-lam_s))                     # sigmoid(-lam_s)
    torch.testing.assert_close(far_0[:, 0], one_minus_alpha_s / 4, rtol=1e-12, atol=0.0)
    # 1 - rho = 1 - sigmoid(lam_t)/sigmoid(lam_s) = (e^-lam_t - e^-lam_s) / (1 + e^-lam_t)
    one_minus_rho = (torch.exp(-lam_t) - torch.exp(-lam_s)) / (1 + torch.exp(-lam_t))
    torch.testing.assert_close(far_t[:, 0], one_minus_rho / 4, rtol=1e-12, atol=0.0)
    assert bool((far_0 > 0).all()) and bool((far_t > 0).all())


def test_blackout_birth_probability_keeps_its_digits_near_alpha_one():
    """(alpha_s - alpha_t)/(1 - alpha_t) = 1 - e^-(lam_s - lam_t) (1 + e^-lam_t)/(1 + e^-lam_s): about 0.63 for
    lam_s = lam_t + 1 at every lam, where subtracting sigmoids loses the digits (all of them for lam >= 37)."""
    lam_t = torch.tensor([5.0, 30.0, 36.0, 40.0], dtype=torch.float64)
    lam_s = lam_t + 1.0
    expected = 1.0 - torch.exp(-(lam_s - lam_t)) * (1 + torch.exp(-lam_t)) / (1 + torch.exp(-lam_s))
    got = BlackoutProcess.birth_probability(lam_t, lam_s)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0.0)
