"""Poisson thinning and thickening ("Learning to Jump"): count diffusion with no maximum count.

Reference: Chen & Zhou, "Learning to Jump: Thinning and Thickening Latent Counts for Generative Modeling",
ICML 2023 (discrete-time model, public code tqch/poisson-jump). The continuous-time form below is this
library's derivation (docs/jump.md has it step by step).

The chain lives on a latent count z per site, never on the data x0 itself. With lam = logit(alpha), a scale
lambda > 0 (the paper's ``lbd``) and data x0 >= 0 (integers of any size, or non-negative reals):

- encoding: z_0 ~ Poisson(lambda x0) per site (z_0 = x0 is NOT assumed, even for integer x0 and lambda = 1);
- forward: Blackout's pure death on z with no upper bound: each unit of z dies at rate beta(t), so
  z_t | z_0 ~ Binomial(z_0, alpha_t) and, by Poisson thinning, z_t | x0 ~ Poisson(lambda alpha_t x0);
- reverse (exact time reversal): the only move is a birth z -> z + 1 with rate per unit of t
  -alpha'(t) lambda E[x0 | z_t], i.e. per unit of lam: lambda alpha (1 - alpha) E[x0 | z_t]. The rate is linear
  in x0, so the mean parameterisation x0_hat = E[x0 | z_t] makes it exact; given x0 the reverse births form a
  Poisson process independent of z_t, so q(z_s | z_t, x0) = z_t + Poisson(lambda (alpha_s - alpha_t) x0);
- bound (exact, Rao-Blackwellised over z_0; see ``elbo_integrand``): with the Poisson KL bracket
  b(x0, x0_hat) = x0_hat - x0 + x0 log(x0 / x0_hat) >= 0,

      E_{z_0 ~ Poisson(lambda x0)}[-log p(z_0)]  <=  sum_d H(Poisson(lambda x0^d))
          + int_{lam_1}^{lam_0} E_{z_t}[ lambda alpha (1 - alpha) sum_d b(x0^d, x0_hat^d(z_t, lam)) ] dlam
          + lambda (1 - alpha_0) E[sum_d b(x0^d, x0_hat^d(z_{t_0}))]          (only when alpha(0) < 1)
          + sum_d KL(Poisson(lambda alpha_1 x0^d) || Poisson(lambda alpha_1 c)) (the prior, c = prior_mean).

  This bounds the model's likelihood of the latent count z_0 (a discrete variable on 0, 1, 2, ...) averaged
  over z_0's Poisson noise given x0, i.e. the cross-entropy of the data seen through Poisson(lambda .) noise. It is
  not a bound on -log p(x0) of the data themselves (not even for integer x0 and lambda = 1, where z_0 != x0).
  Its expectation equals Blackout's bound on z_0 (the Bregman form on m = z_0 - z_t, ``BlackoutProcess``) with
  N = infinity: the two differ only by conditioning on x0 instead of on z_0 (lower variance).

Where it is the paper's model: the paper's T-step loss sum_t lambda (alpha_{t-1} - alpha_t) b(x0, x0_hat(z_t, t))
is the left Riemann sum in alpha of the integral above (same integrand per d alpha); its generation step
z_{t-1} = z_t + Poisson(lambda (alpha_{t-1} - alpha_t) x0_hat) is this process's bridge and tau-leap with the mean
plugged in (they coincide here); its output is z_0 / lambda. Where it differs: the paper's loss has no entropy,
reconstruction or prior term (so it is a training objective, not a likelihood bound), its prior is z_T = 0
exactly (here Poisson(lambda alpha_1 c), so that the prior KL is finite), and its network sees the step index t
(here logit alpha, so any grid works at sampling time).

Parameterisation "mean": x0_hat = mean_scale * softplus(net). In the chain's own units the missing count
E[z_0 - z_t | z_t] = lambda (1 - alpha) x0_hat (``Prediction.mean_missing``) vanishes like (1 - alpha) as
alpha -> 1, and the integrand's weight alpha (1 - alpha) makes the bound finite at both ends.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ForwardProcess, Prediction, RateTerm, check_jump_rule, expand_to_sites, sample_categorical

#: Rates up to this use the exact sum for the Poisson entropy; above it the asymptotic series (error < 1e-9).
_ENTROPY_SUM_LIMIT = 64.0
#: Terms of the exact entropy sum (k = 0..this): the mass beyond is below 1e-30 for rates <= 64.
_ENTROPY_TERMS = 240


def poisson_entropy(rate: Tensor) -> Tensor:
    """H(Poisson(rate)) in nats, elementwise, float64: an exact sum over k for rate <= 64, else the series
    0.5 log(2 pi e mu) - 1/(12 mu) - 1/(24 mu^2) - 19/(360 mu^3)."""
    mu = rate.double().clamp_min(0.0)
    out = torch.zeros_like(mu)
    small = mu <= _ENTROPY_SUM_LIMIT
    if bool(small.any()):
        m = mu[small][:, None]
        k = torch.arange(_ENTROPY_TERMS + 1, dtype=torch.float64, device=mu.device)
        log_p = torch.xlogy(k, m) - m - torch.lgamma(k + 1)
        out[small] = -(log_p.exp() * log_p).nan_to_num(0.0).sum(-1)
    large = ~small
    if bool(large.any()):
        m = mu[large]
        out[large] = 0.5 * torch.log(2 * math.pi * math.e * m) - 1 / (12 * m) - 1 / (24 * m ** 2) - 19 / (360 * m ** 3)
    return out


def poisson_kl_bracket(x0: Tensor, x0_hat: Tensor) -> Tensor:
    """b(x0, x0_hat) = x0_hat - x0 + x0 log(x0 / x0_hat) per site (x0 log x0 = 0 at x0 = 0): >= 0, zero iff equal.
    KL(Poisson(c x0) || Poisson(c x0_hat)) = c b(x0, x0_hat) for any c > 0."""
    x0 = x0.to(x0_hat.dtype)
    log_ratio = torch.log(x0.clamp_min(1e-30)) - torch.log(x0_hat.clamp_min(1e-30))
    return x0_hat - x0 + torch.where(x0 > 0, x0 * log_ratio, torch.zeros_like(x0))


def alpha_increment(lam_t: Tensor, lam_s: Tensor) -> Tensor:
    """alpha_s - alpha_t >= 0 in float64 for lam_s >= lam_t, written as a difference of 1 - alpha where alpha is
    near 1 (so that no digit is lost there); lam_s may be +inf (alpha_s = 1)."""
    lam_t, lam_s = lam_t.double(), lam_s.double()
    near_one = torch.sigmoid(-lam_t) - torch.sigmoid(-lam_s)
    near_zero = torch.sigmoid(lam_s) - torch.sigmoid(lam_t)
    return torch.where(lam_t > 0, near_one, near_zero).clamp_min(0.0)


def _positive(value: float, what: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"process 'jump': {what} must be a finite number > 0, got {value}")
    return value


class JumpProcess(ForwardProcess):
    """Pure death on an unbounded latent count z_0 ~ Poisson(scale * x0) (module docstring for the math).

    Args:
        num_states: ignored (accepted so that ``build_process(name, K)`` works for every process); the state
            space is 0, 1, 2, ... with no maximum, and ``num_states`` / ``num_values`` are None.
        scale: lambda > 0, the paper's ``lbd``: z_0 ~ Poisson(lambda x0); larger lambda makes z_0 / lambda a finer
            and less noisy copy of x0 (the paper's synthetic experiment uses 10).
        mean_scale: x0_hat = mean_scale * softplus(net): the network's output unit. The builder sets it to the
            training data's mean when the config leaves it out, so that counts in the thousands train as fast
            as counts near 1.
        prior_mean: c > 0 of the prior Poisson(lambda alpha_1 c) per site (all zeros with probability ~1).
    """

    name = "jump"
    parameterizations = ("mean",)
    unbounded = True
    prior_description = "Poisson(scale * alpha(1) * prior_mean) per site (all zeros with probability ~1)"

    def __init__(self, num_states: int | None = None, scale: float = 1.0, mean_scale: float = 1.0,
                 prior_mean: float = 1.0) -> None:
        self.num_states = None          # no maximum count
        self.num_values = None
        self.scale = _positive(scale, "scale (lambda)")
        self.mean_scale = _positive(mean_scale, "mean_scale")
        self.prior_mean = _positive(prior_mean, "prior_mean")

    def config(self) -> dict:
        return {"name": self.name, "num_states": None, "scale": self.scale, "mean_scale": self.mean_scale,
                "prior_mean": self.prior_mean}

    # ----- forward marginals -------------------------------------------------------------------
    def sample_marginal(self, x0: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """z_t ~ Poisson(lambda alpha x0) per site: (B, *sites) long (x0 long or float >= 0)."""
        rate = self.scale * expand_to_sites(torch.sigmoid(lam.double()), x0) * x0.double()
        return torch.poisson(rate, generator=generator).long()

    def log_marginal_matrix(self, lam: Tensor) -> Tensor:
        raise ValueError("process 'jump' has no finite state space (counts 0, 1, 2, ... with no maximum), so no "
                         "marginal matrix; use JumpOracle for exact tables")

    def to_data(self, z0: Tensor) -> Tensor:
        """The data value a generated latent count stands for: round(z_0 / lambda), long (the paper outputs
        z_0 / lambda and rounds it for integer data). Identity for lambda = 1."""
        if self.scale == 1.0:
            return z0
        return torch.floor(z0.double() / self.scale + 0.5).long()

    # ----- prior -------------------------------------------------------------------------------------
    def prior_rate(self, lam: Tensor | float) -> Tensor:
        """lambda alpha_1 c: the prior's Poisson rate per site."""
        return self.scale * self.prior_mean * torch.sigmoid(torch.as_tensor(lam, dtype=torch.float64))

    def sample_prior(self, shape: tuple[int, ...], lam: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        rate = torch.full(shape, float(self.prior_rate(float(lam))), dtype=torch.float64, device=device)
        return torch.poisson(rate, generator=generator).long()

    def prior_kl(self, x0: Tensor, lam: Tensor) -> Tensor:
        """sum_d KL(Poisson(lambda alpha_1 x0) || Poisson(lambda alpha_1 c)) = lambda alpha_1 sum_d b(x0, c)."""
        weight = self.scale * torch.sigmoid(lam.double())
        terms = poisson_kl_bracket(x0.double(), torch.full_like(x0, self.prior_mean, dtype=torch.float64))
        return (weight * terms.reshape(x0.shape[0], -1).sum(1)).to(torch.get_default_dtype())

    def encoding_entropy(self, x0: Tensor) -> Tensor:
        """sum_d H(Poisson(lambda x0^d)), (B,) float64: the entropy of the chain's start z_0 given the data."""
        return poisson_entropy(self.scale * x0.double()).reshape(x0.shape[0], -1).sum(1)

    # ----- the denoiser's output ---------------------------------------------------------------------
    def output_channels(self, parameterization: str) -> int:
        self.check_parameterization(parameterization)
        return 1

    @property
    def feature_channels(self) -> int:
        return 2

    def network_features(self, xt: Tensor, lam: Tensor) -> Tensor:
        """(B, 2, *sites): log1p(z_t) / 4 and log1p(z_t / (lambda alpha)) / 4 (the unbiased estimate of x0 on a log
        scale), so counts in the thousands stay O(1) inputs."""
        z = xt.float()
        alpha = expand_to_sites(torch.sigmoid(lam.float()), z).clamp_min(1e-30)
        return torch.stack([torch.log1p(z), torch.log1p(z / (self.scale * alpha))], dim=1) / 4.0

    def prediction_from_output(self, output: Tensor, xt: Tensor, lam: Tensor, parameterization: str) -> Prediction:
        self.check_parameterization(parameterization)
        x0_hat = self.mean_scale * F.softplus(output[:, 0])
        return self.prediction_from_mean(x0_hat, lam)

    def prediction_from_mean(self, x0_hat: Tensor, lam: Tensor, x0_log_probs: Tensor | None = None) -> Prediction:
        """The Prediction of x0_hat = E[x0 | z_t] (B, *sites) at lam (B,), with the chain's missing count
        lambda (1 - alpha) x0_hat and, optionally, log p(x0 | z_t) over data values 0..V-1 (an exact oracle)."""
        one_minus_alpha = expand_to_sites(torch.sigmoid(-lam.to(x0_hat.dtype)), x0_hat)
        return Prediction(x0_log_probs=x0_log_probs, mean_missing=self.scale * one_minus_alpha * x0_hat,
                          x0_mean=x0_hat, lam=lam)

    def data_mean(self, prediction: Prediction) -> Tensor:
        """x0_hat = E[x0 | z_t] (B, *sites) in data units."""
        if prediction.x0_mean is None:
            raise ValueError("process 'jump' needs a prediction with x0_mean (E[x0 | z_t])")
        return prediction.x0_mean

    def expected_missing(self, prediction: Prediction) -> Tensor:
        """E[z_0 - z_t | z_t] = lambda (1 - alpha) x0_hat, (B, *sites)."""
        if prediction.mean_missing is None:
            raise ValueError("process 'jump' needs a prediction with mean_missing")
        return prediction.mean_missing

    # ----- training and likelihood ---------------------------------------------------------------
    def elbo_integrand(self, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction) -> Tensor:
        """lambda alpha (1 - alpha) sum_d b(x0^d, x0_hat^d) per unit of lam, (B,). Per site this is the KL rate
        between the reverse birth processes given x0 (intensity lambda alpha (1 - alpha) x0) and under the model
        (x0_hat): for counting processes of intensities a and a_hat, KL rate = a_hat - a + a log(a / a_hat)."""
        terms = poisson_kl_bracket(x0, self.data_mean(prediction))
        lam = lam.to(terms.dtype)
        weight = self.scale * torch.sigmoid(lam) * torch.sigmoid(-lam)
        return weight * terms.reshape(terms.shape[0], -1).sum(1)

    def reconstruction_nll(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        """The t -> 0 term when alpha(0) < 1: KL(q(z_0 | z_{t0}, x0) || p(z_0 | z_{t0})) =
        lambda (1 - alpha_0) sum_d b(x0^d, x0_hat^d), (B,); the prediction carries lam_0."""
        if prediction.lam is None:
            raise ValueError("process 'jump' needs a prediction with its noise level (Prediction.lam)")
        terms = poisson_kl_bracket(x0, self.data_mean(prediction))
        weight = self.scale * torch.sigmoid(-prediction.lam.to(terms.dtype))
        return weight * terms.reshape(terms.shape[0], -1).sum(1)

    # ----- generation ------------------------------------------------------------------------------
    def _x0_draw(self, prediction: Prediction, generator: torch.Generator | None) -> Tensor:
        """x0 ~ p(x0 | z_t) where the prediction has log-probabilities (an exact oracle), else the mean x0_hat
        plugged in (the paper's sampler): float64 (B, *sites)."""
        if prediction.x0_log_probs is not None:
            return sample_categorical(prediction.x0_log_probs, generator).double()
        return self.data_mean(prediction).double().clamp_min(0.0)

    def bridge_from_x0(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """z_s = z_t + Poisson(lambda (alpha_s - alpha_t) x0): the thinned-away units come back as a Poisson count
        independent of z_t given x0 (x0 in data units, long or float; lam_s may be +inf). Never capped."""
        increment = expand_to_sites(alpha_increment(lam_t, lam_s), xt)
        rate = self.scale * increment * x0.double().clamp_min(0.0)
        return xt + torch.poisson(rate, generator=generator).long()

    def bridge_step(self, xt: Tensor, prediction: Prediction, lam_t: Tensor, lam_s: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
        """x0 ~ p(x0 | z_t) (exact with log-probabilities; the mean plugged in otherwise, which is the paper's
        thickening step and the same law as ``leap``), then z_s ~ q(z_s | z_t, x0)."""
        return self.bridge_from_x0(xt, self._x0_draw(prediction, generator), lam_t, lam_s, generator)

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        """The chain's state at alpha = 1: z_0 = z_t + Poisson(lambda (1 - alpha_t) x0), x0 drawn as in
        ``bridge_step`` at the prediction's own level (``Prediction.lam``). Samplers end here; ``to_data`` maps
        z_0 to the data scale."""
        if prediction.lam is None:
            raise ValueError("process 'jump' needs a prediction with its noise level (Prediction.lam)")
        lam_t = prediction.lam
        return self.bridge_step(xt, prediction, lam_t, torch.full_like(lam_t, math.inf), generator)

    def sample_x0_where(self, xt: Tensor, prediction: Prediction, where: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
        return torch.where(where, self.sample_x0(xt, prediction, generator), xt)

    def leap(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor, lam_to: Tensor,
             rule: str = "reject", generator: torch.Generator | None = None) -> Tensor:
        """Every birth due over [lam_from, lam_to] with x0_hat frozen at z_t: z_t + Poisson(lambda (alpha_to -
        alpha_from) x0_hat), never capped. The birth rate lambda alpha (1 - alpha) x0_hat integrates exactly in lam
        to that, so with the mean frozen this is also the bridge with the mean plugged in. ``rule`` (reject /
        first / euler: choices among competing targets of one site) is validated and does not apply to a
        count's single channel, as for Blackout."""
        check_jump_rule(rule)
        x0_hat = self.data_mean(prediction).double().clamp_min(0.0)
        return self.bridge_from_x0(xt, x0_hat, lam_from, lam_to, generator)

    def combined_leap(self, base: Tensor, terms: list[RateTerm], lam_to: Tensor, rule: str = "reject",
                      generator: torch.Generator | None = None) -> Tensor:
        """base + Poisson((sum_i c_i lambda (alpha_to - alpha_from_i) x0_hat_i)_+) per site, never capped: the
        theta methods' stages combined per channel (nu = +1), as for Blackout."""
        check_jump_rule(rule)
        expected = None
        for c, x, prediction, _lam, lam_from in terms:
            increment = expand_to_sites(alpha_increment(lam_from, lam_to), x)
            term = c * self.scale * increment * self.data_mean(prediction).double().clamp_min(0.0)
            expected = term if expected is None else expected + term
        return base + torch.poisson(expected.clamp_min(0.0), generator=generator).long()
