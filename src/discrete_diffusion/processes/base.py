"""The forward-process contract (DESIGN.md section 3).

A forward process is a continuous-time Markov chain acting independently on every site, with rates
R_t(x -> y) = beta(t) Q[x, y]. Its marginal q_t(y | x0) depends on t only through alpha(t), so every method
here takes the noise level as ``lam = logit(alpha)``, shape (B,), one value per batch element; alpha and
1 - alpha are recovered stably as sigmoid(lam) and sigmoid(-lam).

Tensor conventions:
- x0, xt: long tensors (B, *sites) with values in 0..num_states-1 (x0) and 0..num_values-1 (xt).
- A ``Prediction`` holds the denoiser's estimate of p(x0^d | x_t) per site.

The process owns all the math: marginals, reverse rates, the ELBO integrand, the bridge. Samplers and
losses only call these methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Prediction:
    """A denoiser's output for x_t of shape (B, *sites).

    x0_log_probs: (B, *sites, K) normalised log p(x0^d = k | x_t), or None.
    mean_missing: (B, *sites) E[x0^d - x_t^d | x_t] for count processes (Blackout's mean
        parameterisation), or None. At least one of the two is set.
    x0_mean: (B, *sites) E[x0^d | x_t] in data units, for a process whose chain runs on a latent count
        rather than on x0 (jump: z_0 ~ Poisson(lambda x0)), or None.
    lam: (B,) the noise level the prediction was made at, for a process whose draw of the chain's state at
        alpha = 1 needs it (jump), or None.
    """

    x0_log_probs: Tensor | None = None
    mean_missing: Tensor | None = None
    x0_mean: Tensor | None = None
    lam: Tensor | None = None


#: Rows x values of float64 work that ``sample_categorical`` holds at once (2^22 values: 32 MiB).
CATEGORICAL_CHUNK = 1 << 22


def sample_categorical(log_probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one index per row of log-probabilities (..., K) by inverse CDF in float64: (...) long.

    float64 matters: float32/bfloat16 sampling truncates the tails and makes samples look better than
    the model is (Zheng et al., 2024, on generative perplexity). The log-probs keep their dtype (float32 from a
    network); only the rows being drawn are turned into a float64 CDF, a bounded block of rows at a time
    (``CATEGORICAL_CHUNK`` values), so at a vocabulary of 50k no (N, K) float64 tensor exists. The uniforms are
    drawn for all rows first, in one call, so the draws are the same whatever the block size."""
    k = log_probs.shape[-1]
    rows = log_probs.reshape(-1, k)
    u = torch.rand((rows.shape[0], 1), generator=generator, dtype=torch.float64, device=log_probs.device)
    index = torch.empty(rows.shape[0], dtype=torch.long, device=log_probs.device)
    step = max(1, CATEGORICAL_CHUNK // k)
    for start in range(0, rows.shape[0], step):
        cdf = rows[start:start + step].double().exp().cumsum(-1)      # out of place: .double() may alias
        # the first index whose cdf exceeds u * total (never a zero-probability value, even at u = 0)
        found = torch.searchsorted(cdf, u[start:start + step] * cdf[:, -1:], right=True)[:, 0]
        index[start:start + step] = found.clamp_max_(k - 1)
    return index.reshape(log_probs.shape[:-1])


#: The kinds of network input a process can declare (``ForwardProcess.input_kind``).
INPUT_KINDS = ("features", "tokens")


#: How a leap turns expected jump counts into at most one move per site (see ``jump_from_rates``).
JUMP_RULES = ("reject", "first", "euler")


def jump_from_rates(xt: Tensor, expected_jumps: Tensor, generator: torch.Generator | None = None,
                    rule: str = "reject") -> Tensor:
    """Apply one leap: expected_jumps (B, *sites, M) >= 0 per (site, target), zero at the current value.
    With total E = sum_y E_y per site and the target y drawn in proportion to E_y, a site moves with probability

    - "reject" (Campbell et al., 2022): E exp(-E), the chance of exactly one jump among Poisson counts per
      (site, target) (a site with none or several keeps its value);
    - "first": 1 - exp(-E), the first jump of competing exponential clocks (exact for frozen rates out of an
      absorbing state, as in masking);
    - "euler": min(E, 1), the Euler step of the reverse CTMC (discrete flow matching).
    """
    check_jump_rule(rule)
    rates = expected_jumps.double().clamp_min(0.0)
    total = rates.sum(-1)
    move = (torch.rand(total.shape, generator=generator, dtype=torch.float64, device=xt.device)
            < move_probability(total, rule))
    if not bool(move.any()):
        return xt
    out = xt.clone()
    out[move] = sample_categorical(torch.log(rates[move]), generator)
    return out


def check_jump_rule(rule: str, allowed: tuple[str, ...] = JUMP_RULES) -> None:
    """ValueError naming the allowed rules when ``rule`` is not one of them."""
    if rule not in allowed:
        raise ValueError(f"jump rule (multi_jump) must be one of {list(allowed)}, got {rule!r}")


def move_probability(total: Tensor, rule: str) -> Tensor:
    """The probability that a site with E = ``total`` expected jumps moves in one leap under ``rule``."""
    if rule == "reject":
        return total * torch.exp(-total)
    if rule == "first":
        return -torch.expm1(-total)
    return total.clamp_max(1.0)


#: One term c * E of a combined leap: (c, x, prediction at x, lam of the prediction, lam_from).
RateTerm = tuple[float, Tensor, "Prediction", Tensor, Tensor]


def expand_to_sites(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example values (B,) so they broadcast against a (B, *sites) tensor."""
    return values.reshape(values.shape + (1,) * (like.dim() - 1))


class ForwardProcess(ABC):
    """Base class of every forward process.

    Attributes:
        num_states: K, the number of data values (x0 in 0..K-1).
        num_values: the number of values x_t can take (K, or K + 1 with a mask state).
    """

    name: str = ""
    parameterizations: tuple[str, ...] = ("logits",)
    #: Whether the exact p(x0 | x_t) changes with the noise level while x_t stays fixed. When False (masking:
    #: a mask carries no information whatever alpha is), a sampler may reuse a prediction until x_t changes.
    posterior_depends_on_noise_level: bool = True
    #: What the network reads (one of ``INPUT_KINDS``). "features": ``network_features`` (B, C_in, *sites) float.
    #: "tokens": ``network_features`` is exactly one_hot(x_t, feature_channels) on the channel axis, so a backbone
    #: that embeds indices (``accepts_tokens``) is given x_t itself, (B, *sites) long, and never sees the one-hot
    #: tensor (see ``denoiser.backbone_input``); a backbone that does not still gets the one-hot features.
    input_kind: str = "features"
    #: Whether the state space is 0, 1, 2, ... with no maximum (jump): then ``num_states`` and ``num_values`` are
    #: None and nothing that enumerates values (marginal matrices, exact tables over K^D, logits) applies.
    unbounded: bool = False

    def __init__(self, num_states: int) -> None:
        if int(num_states) < 2:
            raise ValueError(f"{type(self).__name__}: num_states must be >= 2, got {num_states}")
        self.num_states = int(num_states)
        self.num_values = int(num_states)

    # ----- forward marginals -------------------------------------------------------------------
    @abstractmethod
    def sample_marginal(self, x0: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q_t(. | x0) per site. x0: (B, *sites), lam: (B,). Returns (B, *sites) long."""

    @abstractmethod
    def log_marginal_matrix(self, lam: Tensor) -> Tensor:
        """log q_t(y | x0) for all pairs: (B, K, num_values) float64 (-inf where impossible)."""

    # ----- the prior at t = 1 ----------------------------------------------------------------
    @abstractmethod
    def sample_prior(self, shape: tuple[int, ...], lam: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        """Draw x_1 from the prior used for generation, shape (B, *sites), at noise level lam = logit(alpha(1))."""

    @abstractmethod
    def prior_kl(self, x0: Tensor, lam: Tensor) -> Tensor:
        """KL(q_1(. | x0) || prior) summed over sites, in nats: (B,)."""

    def encoding_entropy(self, x0: Tensor) -> Tensor | None:
        """H(q(x_{t=0} | x0)) summed over sites, (B,) in nats, for a process whose chain starts from a random
        encoding of the data (jump: z_0 ~ Poisson(lambda x0)), whose bound then covers E[-log p(x_{t=0})]; None
        (zero) when the chain starts at x0 itself, as for every finite process."""
        return None

    def to_data(self, x: Tensor) -> Tensor:
        """The data value a generated state at t = 0 stands for (jump: round(z_0 / lambda)); the identity here."""
        return x

    # ----- the denoiser's output -------------------------------------------------------------
    def output_channels(self, parameterization: str) -> int:
        """How many channels per site the network must output for a parameterisation."""
        self.check_parameterization(parameterization)
        return self.num_states

    def check_parameterization(self, parameterization: str) -> None:
        if parameterization not in self.parameterizations:
            raise ValueError(f"process {self.name!r} supports parameterizations {list(self.parameterizations)}, "
                             f"got {parameterization!r}")

    @abstractmethod
    def network_features(self, xt: Tensor, lam: Tensor) -> Tensor:
        """Float input to the backbone: (B, C_in, *sites)."""

    @property
    @abstractmethod
    def feature_channels(self) -> int:
        """C_in of network_features."""

    @abstractmethod
    def prediction_from_output(self, output: Tensor, xt: Tensor, lam: Tensor, parameterization: str) -> Prediction:
        """Turn raw network output (B, C_out, *sites) into a Prediction (enforcing the parameterisation's
        constraints, such as the support of x0 given x_t)."""

    # ----- training and likelihood -----------------------------------------------------------
    @abstractmethod
    def elbo_integrand(self, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction) -> Tensor:
        """The continuous-time ELBO integrand with respect to lam, summed over sites: (B,).

        -log p(x0) <= int_{lam(1)}^{lam(0)} E_{x_t ~ q}[elbo_integrand] dlam + prior_kl + reconstruction.
        It equals (1 - alpha) sum_d sum_{y != x_t^d} Q[y, x_t^d] [s_y - r_y log s_y + r_y log r_y - r_y]
        (DESIGN.md section 3), so it is >= 0 and zero when the prediction is exact.
        """

    @abstractmethod
    def reconstruction_nll(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        """-log p_model(x0 | x_t) summed over sites, (B,): the t -> 0 term used when alpha(0) < 1."""

    # ----- generation ------------------------------------------------------------------------
    @abstractmethod
    def bridge_from_x0(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """Draw x_s ~ q(x_s | x_t, x0) for s < t (lam_s > lam_t). Returns (B, *sites) long."""

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        """Draw x0 ~ p(x0 | x_t) independently per site (float64 inverse-CDF sampling): (B, *sites) long."""
        return sample_categorical(self.x0_log_probs(prediction, xt), generator)

    def sample_x0_where(self, xt: Tensor, prediction: Prediction, where: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
        """x_t with the sites in ``where`` (B, *sites) bool replaced by draws of x0 ~ p(x0 | x_t): (B, *sites) long.
        Only the selected rows of the prediction are touched (float64 inverse CDF)."""
        out = xt.clone()
        if bool(where.any()):
            out[where] = sample_categorical(self.x0_log_probs(prediction, xt)[where], generator)
        return out

    def bridge_step(self, xt: Tensor, prediction: Prediction, lam_t: Tensor, lam_s: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
        """One ancestral step: x0 ~ p(x0 | x_t), then x_s ~ q(x_s | x_t, x0). Processes that need x0 at a few
        sites only (masking: the sites that unmask) override this with the same law at less cost."""
        return self.bridge_from_x0(xt, self.sample_x0(xt, prediction, generator), lam_t, lam_s, generator)

    def leap(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor, lam_to: Tensor,
             rule: str = "reject", generator: torch.Generator | None = None) -> Tensor:
        """One leap over [lam_from, lam_to] with the reverse rates frozen at x_t (prediction made at lam):
        ``jump_from_rates(integrated_reverse_rates(...), rule)``, at most one move per site. Processes whose rates
        factorise (masking: a per-site hazard times p(x0 | x_t)) override it to draw targets only where a site
        moves; count processes (Blackout) override it to fire every birth due (Poisson per channel)."""
        expected = self.integrated_reverse_rates(xt, prediction, lam, lam_from, lam_to)
        return jump_from_rates(xt, expected, generator, rule)

    def combined_leap(self, base: Tensor, terms: list[RateTerm], lam_to: Tensor, rule: str = "reject",
                      generator: torch.Generator | None = None) -> Tensor:
        """One leap from ``base`` with the expected jumps (sum_i c_i E_i)_+ (the current value dropped), where
        E_i = integrated_reverse_rates(x_i, prediction_i, lam_i, lam_from_i, lam_to) for each term
        (c_i, x_i, prediction_i, lam_i, lam_from_i): the second stage of the theta methods. Processes whose
        rates are sparse (masking: only masked sites) override it to work on the sites that can move; masking and
        Blackout combine per channel (MASK -> y out of base's MASK; the birth nu = +1, Poisson), see theirs."""
        combined = torch.stack([c * self.integrated_reverse_rates(x, p, lam, lam_from, lam_to)
                                for c, x, p, lam, lam_from in terms]).sum(0)
        return jump_from_rates(base, combined.clamp_min(0.0).scatter(-1, base[..., None], 0.0), generator, rule)

    def reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """Reverse-time jump rates per unit of lam, (B, *sites, num_values), zero at the current value, for the
        exact simulators and (through ``integrated_reverse_rates``) the leaping samplers; processes that support
        them override this."""
        raise ValueError(f"process {self.name!r} does not provide reverse_rates (needed by exact simulation)")

    def integrated_reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor,
                                 lam_to: Tensor) -> Tensor:
        """Expected jumps per (site, target) over [lam_from, lam_to] with x_t and the prediction (made at lam)
        frozen: (B, *sites, num_values) float64, zero at the current value. The default freezes the whole rate:
        reverse_rates(lam) * (lam_to - lam_from). Processes whose rate is a known function of lam times a
        lam-free factor override this with the exact integral."""
        rates = self.reverse_rates(xt, prediction, lam)
        width = expand_to_sites((lam_to.double() - lam_from.double()).clamp_min(0.0), xt)[..., None]
        return rates * width

    def reverse_rate_bound(self, xt: Tensor) -> Tensor:
        """c(x) (B,) with total reverse rate <= c(x) * sigmoid(lam) until the next jump (exact simulation)."""
        raise ValueError(f"process {self.name!r} does not provide reverse_rate_bound (needed by exact simulation)")

    def x0_log_probs(self, prediction: Prediction, xt: Tensor) -> Tensor:
        """log p(x0 | x_t): (B, *sites, K). Processes with other parameterisations override this."""
        if prediction.x0_log_probs is None:
            raise ValueError(f"process {self.name!r} needs a prediction with x0_log_probs")
        return prediction.x0_log_probs

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (with the registry name under "name")."""
        return {"name": self.name, "num_states": self.num_states}
