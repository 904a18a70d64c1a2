"""The exact denoiser of a small table of counts for the jump process (no maximum count), and the exact
quantities its oracle tests compare against (DESIGN.md section 6, for an unbounded state space).

Reference: Chen & Zhou, "Learning to Jump", ICML 2023; the continuous-time form of ``processes/jump.py``.

A table puts probability pi_j on J data vectors x0_j (D sites each, values >= 0, integers or reals, some of
them far above the rest). With z_t | x0 ~ Poisson(lambda alpha x0) per site, the posterior over the table is

    p(j | z_t) ∝ pi_j prod_d Poisson(z_t^d; lambda alpha x0_j^d),

which gives E[x0^d | z_t] (the mean parameterisation: exact reverse rates) and, for integer tables, the
marginal p(x0^d = v | z_t) over v = 0..max (exact bridge draws). The latent z_0 has the law
sum_j pi_j prod_d Poisson(z^d; lambda x0_j^d); its entropy, and the mutual information between x0 and z_1,
follow by quadrature over a grid of z that holds all but < 1e-12 of the mass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .processes.base import Prediction
from .processes.jump import JumpProcess, poisson_entropy


def log_poisson_pmf(k: Tensor, rate: Tensor) -> Tensor:
    """log Poisson(k; rate), broadcast, float64 (-inf for k > 0 at rate 0)."""
    k, rate = k.double(), rate.double()
    return torch.xlogy(k, rate) - rate - torch.lgamma(k + 1)


class JumpOracle:
    """Exact E[x0^d | z_t] (and p(x0^d | z_t) for an integer table) of data drawn from ``probs`` over ``support``.

    support: (J, D) data vectors (long or float, >= 0); probs: (J,) non-negative weights. ``with_log_probs``
    False gives the mean only (what a trained network gives: the samplers then plug it in), at less cost."""

    def __init__(self, process: JumpProcess, support: Tensor, probs: Tensor, with_log_probs: bool = True) -> None:
        if support.dim() != 2 or probs.shape != (support.shape[0],) or bool((support < 0).any()):
            raise ValueError(f"jump oracle: support must be (J, D) values >= 0 and probs (J,), got "
                             f"{tuple(support.shape)} and {tuple(probs.shape)}")
        self.process = process
        self.support = support.double()
        self.integer = not support.is_floating_point() or bool((support == support.round()).all())
        self.log_probs = torch.log(probs.double() / probs.double().sum())
        self.num_values = int(self.support.max()) + 1 if self.integer else 0
        self.with_log_probs = bool(with_log_probs)

    def posterior(self, zt: Tensor, lam: Tensor) -> Tensor:
        """p(j | z_t): (B, J) float64 for z_t (B, D) at lam (B,)."""
        alpha = torch.sigmoid(lam.double())[:, None, None]
        rates = self.process.scale * alpha * self.support[None]                  # (B, J, D)
        log_like = log_poisson_pmf(zt[:, None, :], rates).sum(-1)                   # (B, J)
        return torch.softmax(self.log_probs[None] + log_like, dim=-1)

    def __call__(self, zt: Tensor, lam: Tensor) -> Prediction:
        post = self.posterior(zt, lam)
        x0_mean = post @ self.support                                                # (B, D)
        log_probs = None
        if self.integer and self.with_log_probs:   # p(x0^d = v | z_t) = sum of p(j | z_t) over rows with x0_j^d = v
            index = self.support.long()
            marginals = torch.zeros(post.shape[0], index.shape[1], self.num_values, dtype=torch.float64)
            for d in range(index.shape[1]):
                marginals[:, d].index_add_(1, index[:, d], post)
            log_probs = torch.log(marginals.clamp_min(1e-300))
        return self.process.prediction_from_mean(x0_mean, lam.double(), log_probs)

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Data draws x0 from the table: (num, D) (long for an integer table)."""
        index = torch.multinomial(self.log_probs.exp(), num, replacement=True, generator=generator)
        x = self.support[index]
        return x.long() if self.integer else x

    def sample_latent(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of z_0 ~ sum_j pi_j Poisson(lambda x0_j): (num, D) long (the samplers' target)."""
        return torch.poisson(self.process.scale * self.sample(num, generator).double(), generator=generator).long()

    # ----- exact quantities by quadrature ------------------------------------------------------------
    def latent_grid(self, alpha: float = 1.0) -> Tensor:
        """Every z (G, D) on a grid per site 0..max_j(rate) + 12 sqrt(max rate) + 30 at rate lambda alpha x0:
        the mass outside is < 1e-12."""
        top = self.process.scale * alpha * self.support.max(0).values                # (D,)
        limits = (top + 12 * top.sqrt() + 30).ceil().long().tolist()
        axes = [torch.arange(limit + 1, dtype=torch.float64) for limit in limits]
        return torch.cartesian_prod(*axes).reshape(-1, len(axes))

    def latent_log_pmf(self, z: Tensor, alpha: float = 1.0) -> Tensor:
        """log sum_j pi_j prod_d Poisson(z^d; lambda alpha x0_j^d) for z (N, D): (N,) float64."""
        rates = self.process.scale * alpha * self.support                            # (J, D)
        log_like = log_poisson_pmf(z.double()[:, None, :], rates[None]).sum(-1)     # (N, J)
        return torch.logsumexp(self.log_probs[None] + log_like, dim=-1)

    def latent_entropy(self, alpha: float = 1.0) -> float:
        """H(z_alpha) in nats, z_alpha ~ sum_j pi_j Poisson(lambda alpha x0_j), by quadrature."""
        log_p = self.latent_log_pmf(self.latent_grid(alpha), alpha)
        return float(-(log_p.exp() * log_p).nan_to_num(0.0).sum())

    def conditional_entropy(self, alpha: float = 1.0) -> float:
        """H(z_alpha | x0) = sum_j pi_j sum_d H(Poisson(lambda alpha x0_j^d)) in nats."""
        per_row = poisson_entropy(self.process.scale * alpha * self.support).sum(-1)
        return float((self.log_probs.exp() * per_row).sum())

    def mutual_information(self, alpha: float) -> float:
        """I(x0; z_alpha) = H(z_alpha) - H(z_alpha | x0) in nats."""
        return self.latent_entropy(alpha) - self.conditional_entropy(alpha)

    def expected_bound(self, alpha_1: float) -> float:
        """E over the table of the jump bound with the exact denoiser (alpha(0) = 1), in nats:
        H(z_0) - I(x0; z_1) + E KL(Poisson(lambda alpha_1 x0) || prior).

        Derivation: the bound is H(z_0 | x0) + KL(Q(path | x0) || P) with P's reverse rates exact; splitting the
        path at t = 1 gives KL(q_1(. | x0) || prior) + KL(q(z_0 | x0) || q(z_0)) - KL(q_1(. | x0) || q_1), and
        the expectation over x0 of the last two is I(x0; z_0) - I(x0; z_1)."""
        lam_1 = torch.tensor([math.log(alpha_1) - math.log1p(-alpha_1)], dtype=torch.float64)
        prior = self.process.prior_kl(self.support, lam_1.expand(self.support.shape[0])).double()
        expected_prior = float((self.log_probs.exp() * prior).sum())
        return self.latent_entropy(1.0) - self.mutual_information(alpha_1) + expected_prior
