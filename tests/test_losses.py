"""Tests of the ELBO estimator, its importance proposal, the training weightings, and the oracle ELBO
check of DESIGN.md section 6a: with the exact denoiser the negative ELBO averages to the data entropy
(plus the exact prior gap KL(q_1 || prior), about 1e-4 nats here)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.losses import (
    LogitAlphaProposal,
    build_weighting,
    estimate_elbo,
    logit_alpha_range,
    training_loss,
)
from discrete_diffusion.oracle import OracleDenoiser, all_configurations
from discrete_diffusion.processes import BlackoutProcess, Prediction
from discrete_diffusion.schedules import BlackoutSchedule, build_schedule


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- importance proposal over lam = logit(alpha) -----------------------------------------------------
PROPOSAL_CASES = [(0.0, 2.0, -9.0, 4.0), (0.0, 2.0, -9.2, math.inf), (1.0, 0.7, -3.0, 5.0), (-1.0, 1.3, -15.0, 15.0)]


@pytest.mark.parametrize("loc,scale,lo,hi", PROPOSAL_CASES)
def test_proposal_range_and_density(loc, scale, lo, hi):
    prop = LogitAlphaProposal(loc=loc, scale=scale)
    lam, inv_g = prop.sample(4096, lo, hi, _gen(0))
    assert lam.dtype == torch.float64 and inv_g.dtype == torch.float64
    assert torch.all((lam >= lo) & (lam <= hi))
    mass = stats.logistic.cdf(hi, loc, scale) - stats.logistic.cdf(lo, loc, scale)
    density = stats.logistic.pdf(lam.numpy(), loc, scale) / mass
    torch.testing.assert_close(inv_g, torch.from_numpy(1.0 / density), rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("loc,scale,lo,hi", PROPOSAL_CASES)
def test_proposal_importance_weights_integrate(loc, scale, lo, hi, stratified):
    """mean h(lam) / g(lam) estimates int_lo^hi h with h = sigmoid(lam) sigmoid(-lam) = sigmoid'."""
    lam, inv_g = LogitAlphaProposal(loc, scale).sample(20_000, lo, hi, _gen(1), stratified=stratified)
    values = torch.sigmoid(lam) * torch.sigmoid(-lam) * inv_g
    exact = expit(hi) - expit(lo)
    se = float(values.std()) / math.sqrt(values.numel())  # the i.i.d. error bounds the stratified one
    assert abs(float(values.mean()) - exact) <= 4 * se
    if stratified:  # stratification cuts the error well below the i.i.d. standard error
        assert abs(float(values.mean()) - exact) <= 0.2 * se


@pytest.mark.parametrize("loc,scale,lo,hi", PROPOSAL_CASES)
def test_proposal_stratification_covers_each_stratum_once(loc, scale, lo, hi):
    batch = 257
    lam, _ = LogitAlphaProposal(loc, scale).sample(batch, lo, hi, _gen(2))
    cdf = lambda v: stats.logistic.cdf(v, loc, scale)  # noqa: E731
    u = (cdf(lam.numpy()) - cdf(lo)) / (cdf(hi) - cdf(lo))
    strata = np.floor(u * batch).astype(int)
    assert sorted(strata.tolist()) == list(range(batch))
    lam2, _ = LogitAlphaProposal(loc, scale).sample(batch, lo, hi, _gen(3))
    assert not torch.equal(lam, lam2)


def test_proposal_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        LogitAlphaProposal(scale=0.0)


def test_logit_alpha_range():
    assert logit_alpha_range(build_schedule("log-linear")) == (pytest.approx(math.log(1e-4 / (1 - 1e-4))), math.inf)
    lo, hi = logit_alpha_range(build_schedule("blackout"))
    half = -math.log(math.exp(-15) / (1 - math.exp(-15)))
    assert lo == pytest.approx(-half, rel=1e-9) and hi == pytest.approx(half, rel=1e-6)


# ----- weightings ----------------------------------------------------------------------------------------
LAM = torch.linspace(-12.0, 12.0, 97, dtype=torch.float64)


def test_elbo_and_instantaneous_weightings():
    torch.testing.assert_close(build_weighting("elbo")(LAM), torch.ones_like(LAM))
    torch.testing.assert_close(build_weighting("instantaneous")(LAM), 1.0 - torch.sigmoid(LAM))


def test_finite_time_weighting_tends_to_one_minus_alpha():
    # (sigmoid(lam + d) - sigmoid(lam)) / (d sigmoid(lam)) -> sigmoid'(lam) / sigmoid(lam) = 1 - alpha
    w = build_weighting("finite-time", num_steps=1_000_001)
    torch.testing.assert_close(w(LAM), 1.0 - torch.sigmoid(LAM), rtol=1e-4, atol=1e-7)


def test_finite_time_weighting_is_the_papers_grid_sum():
    """On the paper's grid (1000 steps, t_end 15) each ELBO-weighted step alpha_k w d equals
    alpha_{k-1} - alpha_k (the Blackout paper's finite-time loss coefficient)."""
    w = build_weighting("finite-time")
    sched = BlackoutSchedule(15.0)
    alpha = sched.alpha(torch.arange(1000, dtype=torch.float64) / 999)
    lam = torch.logit(alpha)
    d = float(lam[0] - lam[1])
    torch.testing.assert_close(alpha[1:] * w(lam[1:]) * d, alpha[:-1] - alpha[1:], rtol=1e-7, atol=1e-15)
    assert w.config() == {"name": "finite-time", "num_steps": 1000, "t_end": 15.0}


def test_unknown_weighting_lists_names():
    with pytest.raises(ValueError) as info:
        build_weighting("nope")
    for name in ("elbo", "instantaneous", "finite-time"):
        assert name in str(info.value)
    with pytest.raises(ValueError, match="num_steps"):
        build_weighting("finite-time", num_steps=1)


# ----- training loss with a small network -------------------------------------------------------------
class TinyBackbone(torch.nn.Module):
    """(B, C_in, D) features and a (B,) noise level to (B, C_out, D)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(c_in, c_out, kernel_size=3, padding=1)
        self.noise = torch.nn.Linear(1, c_out)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.noise(noise[:, None])[:, :, None]


@pytest.mark.parametrize("parameterization", ["mean", "logits"])
@pytest.mark.parametrize("schedule_name", ["log-linear", "blackout"])
def test_training_loss_finite_with_gradients(parameterization, schedule_name):
    torch.manual_seed(0)
    proc = BlackoutProcess(6)
    model = NetworkDenoiser(TinyBackbone(2, proc.output_channels(parameterization)), proc, parameterization)
    x0 = torch.randint(0, 6, (64, 5), generator=_gen(4))
    sched, prop = build_schedule(schedule_name), LogitAlphaProposal()
    out = training_loss(proc, model, x0, sched, prop, generator=_gen(5))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.elbo_diffusion.shape == (64,) and torch.all(out.elbo_diffusion >= 0)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.all(torch.isfinite(g)) and g.abs().sum() > 0 for g in grads)
    # the same draws with the instantaneous weighting (1 - alpha <= 1) give a smaller loss
    weighted = training_loss(proc, model, x0, sched, prop, build_weighting("instantaneous"), _gen(5))
    assert float(weighted.loss.detach()) < float(out.loss.detach())
    torch.testing.assert_close(weighted.elbo_diffusion, out.elbo_diffusion)
    if schedule_name == "log-linear":  # no reconstruction term: loss is the per-site mean ELBO
        torch.testing.assert_close(out.loss.detach(), out.elbo_diffusion.mean() / 5)


# ----- oracle ELBO (DESIGN.md 6a) ------------------------------------------------------------------------
def _table(num_states: int, num_sites: int, seed: int) -> torch.Tensor:
    probs = torch.rand(num_states**num_sites, generator=_gen(seed), dtype=torch.float64) + 0.05
    return probs / probs.sum()


def _prior_gap(probs: torch.Tensor, num_states: int, num_sites: int, alpha1: float) -> float:
    """KL(q_1 || prior) between the noised data marginal at t = 1 and the product Binomial(N, alpha1)
    prior: E_data[-ELBO] - H exactly, for the exact reverse process."""
    configs = all_configurations(num_states, num_sites).numpy()
    # transition[j, i] = prod_d Bin(configs[i, d]; configs[j, d], alpha1)
    trans = np.prod(stats.binom.pmf(configs[None, :, :], configs[:, None, :], alpha1), axis=-1)
    q1 = probs.numpy() @ trans
    prior = np.prod(stats.binom.pmf(configs, num_states - 1, alpha1), axis=-1)
    return float(np.sum(np.where(q1 > 0, q1 * np.log(np.where(q1 > 0, q1, 1) / prior), 0)))


def _oracle_elbo(schedule, num_states, num_sites, seed, num=40_000, denoiser=None):
    proc = BlackoutProcess(num_states)
    probs = _table(num_states, num_sites, seed)
    oracle = OracleDenoiser(proc, probs, num_sites)
    x0 = oracle.sample(num, _gen(seed + 1))
    est = estimate_elbo(proc, denoiser(oracle) if denoiser else oracle, x0, schedule, generator=_gen(seed + 2))
    expected = oracle.entropy() + _prior_gap(probs, num_states, num_sites, schedule.alpha_min)
    total = est.total
    return est, float(total.mean()), expected, float(total.std()) / math.sqrt(num)


ORACLE_CASES = [  # (schedule, K, D, table seed); t_end = 4 makes the prior and reconstruction terms matter
    (build_schedule("log-linear"), 3, 3, 10),
    (build_schedule("cosine"), 4, 2, 20),
    (build_schedule("blackout"), 5, 2, 30),
    (build_schedule("blackout", t_end=4.0), 4, 1, 40),
]


@pytest.mark.parametrize("schedule,num_states,num_sites,seed", ORACLE_CASES,
                         ids=["log-linear-K3D3", "cosine-K4D2", "blackout-K5D2", "blackout4-K4D1"])
def test_oracle_elbo_equals_entropy(schedule, num_states, num_sites, seed):
    est, mean, expected, se = _oracle_elbo(schedule, num_states, num_sites, seed)
    assert abs(mean - expected) <= 4 * se, (mean, expected, se)
    assert torch.all(est.diffusion >= 0) and torch.all(est.prior >= 0) and torch.all(est.reconstruction >= 0)
    if schedule.alpha_max < 1:
        assert float(est.reconstruction.mean()) > 0
    else:
        assert torch.all(est.reconstruction == 0)


def _scaled_mean(factor):
    def wrap(oracle):
        def denoiser(xt, lam):
            return Prediction(mean_missing=oracle(xt, lam).mean_missing * factor)
        return denoiser
    return wrap


def _other_table(oracle):
    return OracleDenoiser(oracle.process, _table(4, 2, 21), 2)


@pytest.mark.parametrize("wrong", [_scaled_mean(1.5), _other_table], ids=["mean-x1.5", "other-table"])
def test_oracle_elbo_negative_control(wrong):
    """A wrong denoiser raises the bound by many standard errors (measured: 9.9 and 8.9), so the test
    above can fail."""
    _, mean, expected, se = _oracle_elbo(build_schedule("cosine"), 4, 2, 20, denoiser=wrong)
    assert mean - expected > 4 * se, (mean, expected, se)


def test_oracle_elbo_same_for_mean_and_logit_predictions():
    sched = build_schedule("blackout")
    full, mean_full, _, se = _oracle_elbo(sched, 4, 2, 50, num=8_000)
    only_mean, mean_only, _, _ = _oracle_elbo(sched, 4, 2, 50, num=8_000, denoiser=_scaled_mean(1.0))
    torch.testing.assert_close(full.diffusion, only_mean.diffusion)  # same draws, same integrand
    torch.testing.assert_close(full.prior, only_mean.prior)
    assert abs(mean_full - mean_only) < 1e-3 * se
