"""Blackout diffusion: a pure-death process on counts 0..N.

Reference: Santos, Fox, Lubbers, Lin, "Blackout Diffusion: Generative Diffusion Models in Discrete-State
Spaces", ICML 2023.

Each of the x0 units at a site dies independently at rate beta(t), so x_t ~ Binomial(x0, alpha_t). Writing
m = x0 - x_t (the units still to be reborn) and lam = logit(alpha):

- forward rates R(x -> x - 1) = beta x; the only reverse move is a birth x -> x + 1 with rate
  beta * alpha / (1 - alpha) * E[m | x_t]  (linear in x0, so the mean parameterisation is exact);
- ELBO integrand per d lam:  alpha * sum_d [yhat - m log yhat + m log m - m],  yhat ~ E[m | x_t];
- bridge: x_s = x_t + Binomial(m, (alpha_s - alpha_t) / (1 - alpha_t)).

Parameterisations:
- "mean": yhat = (N - x_t) * sigmoid(net - lam). It never exceeds N - x_t and vanishes like (1 - alpha)
  as alpha -> 1, as the true E[m | x_t] does, so the ELBO integral is finite down to t = 0.
- "logits": logits over x0 in 0..N plus log Binomial(x_t; x0, alpha), which puts zero mass on x0 < x_t
  and concentrates on x0 = x_t as alpha -> 1; yhat is its mean of x0 - x_t.

Network input (the paper feeds raw counts): two channels in [-1, 1], the count scaled by N and the
estimate x_t / (alpha N) of x0 / N (clipped to [0, 2]), so the network sees the image at the same scale
at every noise level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ForwardProcess, Prediction, RateTerm, check_jump_rule, expand_to_sites


def log_binomial_pmf(k: Tensor, n: Tensor, log_p: Tensor, log_1mp: Tensor) -> Tensor:
    """log Binomial(k; n, p), -inf where k < 0 or k > n. All arguments broadcast."""
    k, n = torch.broadcast_tensors(k, n)
    valid = (k >= 0) & (k <= n)
    kc = torch.where(valid, k, torch.zeros_like(k))
    nc = torch.where(valid, n, torch.zeros_like(n))
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    out = (torch.lgamma(nc + 1) - torch.lgamma(kc + 1) - torch.lgamma(nc - kc + 1)
           + torch.where(kc > 0, kc * log_p, zero) + torch.where(nc > kc, (nc - kc) * log_1mp, zero))
    return torch.where(valid, out, torch.full_like(out, -torch.inf))


def stochastic_round(values: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Round non-negative values to floor or ceil with probability given by the fractional part, so that
    E[round(v)] = v (a plain round would collapse every mean below 0.5 to zero). Returns float."""
    low = torch.floor(values)
    u = torch.rand(values.shape, generator=generator, device=values.device, dtype=values.dtype)
    return low + (u < values - low).to(values.dtype)


class BlackoutProcess(ForwardProcess):
    """Pure death on counts 0..N (num_states = N + 1). Prior: Binomial(N, alpha(1)), i.e. all zeros in
    practice; the NLL's prior term is KL(Binomial(x0, alpha1) || Binomial(N, alpha1))."""

    name = "blackout"
    parameterizations = ("mean", "logits")
    prior_description = "Binomial(N, alpha(1)) per site (full support; all zeros with probability ~1)"

    @property
    def max_count(self) -> int:
        """N, the largest count."""
        return self.num_states - 1

    # ----- forward marginals -------------------------------------------------------------------
    def sample_marginal(self, x0: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        alpha = expand_to_sites(torch.sigmoid(lam.double()), x0).expand(x0.shape)
        return torch.binomial(x0.double(), alpha, generator=generator).long()

    def log_marginal_matrix(self, lam: Tensor) -> Tensor:
        values = torch.arange(self.num_states, dtype=torch.float64, device=lam.device)
        lam64 = lam.double()[:, None, None]
        return log_binomial_pmf(values[None, None, :], values[None, :, None],
                                F.logsigmoid(lam64), F.logsigmoid(-lam64))

    # ----- prior ---------------------------------------------------------------------------------
    def sample_prior(self, shape: tuple[int, ...], lam: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        alpha = torch.sigmoid(torch.tensor(float(lam), dtype=torch.float64))
        counts = torch.full(shape, float(self.max_count), dtype=torch.float64, device=device)
        return torch.binomial(counts, torch.full_like(counts, float(alpha)), generator=generator).long()

    def prior_kl(self, x0: Tensor, lam: Tensor) -> Tensor:
        log_q = self.log_marginal_matrix(lam)                       # (B, K, K): [b, x0, y]
        flat = x0.reshape(x0.shape[0], -1)                         # (B, D)
        rows = torch.gather(log_q, 1, flat[:, :, None].expand(-1, -1, self.num_states))  # (B, D, K)
        prior_row = log_q[:, self.max_count, :][:, None, :]        # Binomial(N, alpha1)
        q = rows.exp()
        kl = torch.where(q > 0, q * (rows - prior_row), torch.zeros_like(q))
        return kl.sum(dim=(1, 2)).to(torch.get_default_dtype())

    # ----- denoiser output -----------------------------------------------------------------------
    def output_channels(self, parameterization: str) -> int:
        self.check_parameterization(parameterization)
        return 1 if parameterization == "mean" else self.num_states

    @property
    def feature_channels(self) -> int:
        return 2

    def network_features(self, xt: Tensor, lam: Tensor) -> Tensor:
        x = xt.float()
        alpha = expand_to_sites(torch.sigmoid(lam.float()), x)
        scaled = 2.0 * x / self.max_count - 1.0
        x0_estimate = (x / (alpha.clamp_min(1e-12) * self.max_count)).clamp(0.0, 2.0) - 1.0
        return torch.stack([scaled, x0_estimate], dim=1)

    def prediction_from_output(self, output: Tensor, xt: Tensor, lam: Tensor, parameterization: str) -> Prediction:
        self.check_parameterization(parameterization)
        lam_sites = expand_to_sites(lam.to(output.dtype), xt)
        room = (self.max_count - xt).to(output.dtype)
        if parameterization == "mean":
            return Prediction(mean_missing=room * torch.sigmoid(output[:, 0] - lam_sites))
        logits = output.movedim(1, -1)                             # (B, *sites, K)
        x0_values = torch.arange(self.num_states, device=xt.device, dtype=output.dtype)
        missing = x0_values - xt[..., None].to(output.dtype)       # (B, *sites, K): x0 - x_t
        # log Binomial(x_t; x0, alpha) up to terms constant in x0: log C(x0, x_t) + (x0 - x_t) log(1 - alpha).
        valid = missing >= 0
        safe_missing = missing.clamp_min(0)
        log_choose = (torch.lgamma(x0_values + 1) - torch.lgamma(safe_missing + 1)
                      - torch.lgamma(xt[..., None].to(output.dtype) + 1))
        log_1m_alpha = F.logsigmoid(-lam_sites)[..., None]
        log_lik = log_choose + torch.where(safe_missing > 0, safe_missing * log_1m_alpha, torch.zeros_like(log_choose))
        log_lik = torch.where(valid, log_lik, torch.full_like(log_lik, -torch.inf))
        log_probs = torch.log_softmax(logits + log_lik, dim=-1)
        mean_missing = (log_probs.exp() * safe_missing).sum(-1)
        return Prediction(x0_log_probs=log_probs, mean_missing=mean_missing)

    def expected_missing(self, prediction: Prediction) -> Tensor:
        """yhat = E[x0 - x_t | x_t] per site, (B, *sites)."""
        if prediction.mean_missing is None:
            raise ValueError("blackout needs a prediction with mean_missing")
        return prediction.mean_missing

    # ----- training and likelihood ---------------------------------------------------------------
    def bregman_terms(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        """yhat - m log yhat + m log m - m per site, (B, *sites); >= 0 and zero iff yhat = m."""
        yhat = self.expected_missing(prediction)
        m = (x0 - xt).to(yhat.dtype)
        log_ratio = torch.log(m.clamp_min(1.0)) - torch.log(yhat.clamp_min(1e-30))  # log(m / yhat) where m > 0
        return yhat - m + torch.where(m > 0, m * log_ratio, torch.zeros_like(m))

    def elbo_integrand(self, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction) -> Tensor:
        terms = self.bregman_terms(x0, xt, prediction)
        alpha = torch.sigmoid(lam.to(terms.dtype))
        return alpha * terms.reshape(terms.shape[0], -1).sum(1)

    def reconstruction_nll(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        if prediction.x0_log_probs is not None:
            nll = -torch.gather(prediction.x0_log_probs, -1, x0[..., None])[..., 0]
        else:  # mean parameterisation: the missing count is modelled as Poisson(yhat)
            yhat = prediction.mean_missing
            m = (x0 - xt).to(yhat.dtype)
            nll = yhat - m * torch.log(yhat.clamp_min(1e-30)) + torch.lgamma(m + 1)
        return nll.reshape(nll.shape[0], -1).sum(1)

    # ----- generation ------------------------------------------------------------------------------
    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        """x0 ~ p(x0 | x_t) from the logits; with only a mean, x_t + stochastic_round(yhat) (capped at N)."""
        if prediction.x0_log_probs is not None:
            return super().sample_x0(xt, prediction, generator)
        missing = stochastic_round(self.expected_missing(prediction).double().clamp_min(0), generator)
        return torch.minimum(xt + missing.long(), torch.full_like(xt, self.max_count))

    def reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """Births only: rate alpha * yhat per unit of lam into x_t + 1."""
        birth = expand_to_sites(torch.sigmoid(lam.double()), xt) * self.expected_missing(prediction).double()
        rates = torch.zeros(xt.shape + (self.num_states,), dtype=torch.float64, device=xt.device)
        target = (xt + 1).clamp_max(self.max_count)[..., None]
        rates.scatter_(-1, target, (birth * (xt < self.max_count))[..., None])
        return rates

    def integrated_reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor,
                                 lam_to: Tensor) -> Tensor:
        """Births at alpha(lam) * yhat with yhat frozen: yhat * (softplus(lam_to) - softplus(lam_from)),
        exact in lam."""
        rates = self.reverse_rates(xt, prediction, torch.full_like(lam.double(), torch.inf))   # alpha = 1: yhat
        hazard = (F.softplus(lam_to.double()) - F.softplus(lam_from.double())).clamp_min(0.0)
        return rates * expand_to_sites(hazard, xt)[..., None]

    def reverse_rate_bound(self, xt: Tensor) -> Tensor:
        """yhat <= N - x_t at every site, so the total rate is <= sigmoid(lam) * sum_d (N - x_t^d)."""
        return (self.max_count - xt).reshape(xt.shape[0], -1).sum(1).double()

    @staticmethod
    def birth_probability(lam_t: Tensor, lam_s: Tensor) -> Tensor:
        """(alpha_s - alpha_t) / (1 - alpha_t) in float64, (B,): the chance that a missing unit is back by s,
        as -expm1(log(1 - alpha_s) - log(1 - alpha_t)) (subtracting sigmoids loses every digit as alpha_t -> 1)."""
        lam_t, lam_s = lam_t.double(), lam_s.double()
        return (-torch.expm1(F.logsigmoid(-lam_s) - F.logsigmoid(-lam_t))).clamp(0.0, 1.0)

    def bridge_from_x0(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        p = expand_to_sites(self.birth_probability(lam_t, lam_s), xt).expand(xt.shape)
        missing = (x0 - xt).clamp_min(0).double()
        return xt + torch.binomial(missing, p, generator=generator).long()

    def mean_bridge(self, xt: Tensor, mean_missing: Tensor, lam_t: Tensor, lam_s: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
        """The paper's binomial bridge with the mean plugged in for x0 - x_t, rounded stochastically."""
        room = (self.max_count - xt).double()
        missing = torch.minimum(stochastic_round(mean_missing.double().clamp_min(0), generator), room)
        p = expand_to_sites(self.birth_probability(lam_t, lam_s), xt).expand(xt.shape)
        return xt + torch.binomial(missing, p, generator=generator).long()

    def tau_leap(self, xt: Tensor, mean_missing: Tensor, lam_t: Tensor, lam_s: Tensor,
                 generator: torch.Generator | None = None) -> Tensor:
        """Poisson births with the reverse rate frozen in the state over [s, t]:
        E[births] = yhat * int alpha dlam = yhat * log((1 - alpha_t) / (1 - alpha_s)); capped at N."""
        lam_t, lam_s = lam_t.double(), lam_s.double()
        hazard = expand_to_sites(F.softplus(lam_s) - F.softplus(lam_t), xt)
        births = torch.poisson(mean_missing.double().clamp_min(0) * hazard, generator=generator)
        return torch.minimum(xt + births.long(), torch.full_like(xt, self.max_count))

    # ----- leaps: the birth channel (nu = +1) fires a Poisson number of times -------------------------------
    def leap(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor, lam_to: Tensor,
             rule: str = "reject", generator: torch.Generator | None = None) -> Tensor:
        """Every birth due over [lam_from, lam_to] with the rate frozen at x_t: x_t + Poisson(yhat h), h =
        softplus(lam_to) - softplus(lam_from), capped at N (Santos et al. 2023). A count site has one channel,
        nu = +1, whose jumps add up, so the categorical one-move rules (``rule``: reject / first / euler, which
        decide between competing targets of one site) do not apply: every rule gives this law."""
        check_jump_rule(rule)
        return self.tau_leap(xt, self.expected_missing(prediction), lam_from, lam_to, generator)

    def combined_leap(self, base: Tensor, terms: list[RateTerm], lam_to: Tensor, rule: str = "reject",
                      generator: torch.Generator | None = None) -> Tensor:
        """base + Poisson((sum_i c_i yhat_i h_i)_+) per site, capped at N: the stages combined per channel
        (nu = +1), as Ren et al. 2025 combine intensities. Term i = (c_i, x_i, prediction_i, lam_i, lam_from_i)
        gives the birth intensity at x_i, yhat_i = E[x0 - x_i | x_i], and h_i = softplus(lam_to) -
        softplus(lam_from_i) its integrated alpha; the births are added to ``base`` whatever x_i is (theta-RK-2
        adds them to x_t with intensities from y*). ``rule`` is validated and, as in ``leap``, does not apply."""
        check_jump_rule(rule)
        expected = None
        for c, x, prediction, _lam, lam_from in terms:
            hazard = (F.softplus(lam_to.double()) - F.softplus(lam_from.double())).clamp_min(0.0)
            term = c * self.expected_missing(prediction).double().clamp_min(0) * expand_to_sites(hazard, x)
            expected = term if expected is None else expected + term
        births = torch.poisson(expected.clamp_min(0.0), generator=generator)
        return torch.minimum(base + births.long(), torch.full_like(base, self.max_count))
