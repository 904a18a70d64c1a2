"""The measurement contract of posterior sampling: an operator gives log p(y | x0) for data x0.

Posterior sampling draws x0 ~ p(x0 | y) ∝ p(x0) p(y | x0) with a trained (or exact) diffusion model as the prior
p(x0) and a known measurement model p(y | x0) (DESIGN.md section 3: posterior sampling is predictor guidance with
p_t(y | x_t) in place of p_t(c | x_t), or split Gibbs). Every sampler in this package talks to the measurement
only through :class:`MeasurementOperator`, so a new operator (or a user callable) works with all of them.

Shapes. x0 is (B, *sites) long in 0..K-1 (K = ``num_states``). A measurement y has a leading batch axis:
(B, *y_sites) (one observation per sample) or (1, *y_sites) (one observation shared by the whole batch);
``y_shape(site_shape)`` gives *y_sites. Log-likelihoods are float64 nats, -inf where y is impossible given x0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MeasurementOperator", "SumFactors"]


@dataclass
class SumFactors:
    """log p(y | x0) = sum_g f_g(s_g) with s_g the sum (``modulus`` None) or the sum mod ``modulus`` of x0 over a
    group g of sites, the groups disjoint (operators.py: downsample, parity). Lets samplers draw exactly from
    laws of the form prod_d q(x^d) prod_g exp(f_g(s_g)) by forward filtering / backward sampling over partial sums
    (group_likelihood.py).

    index: (G, W) long, the flattened site indices of each group (rows padded to the widest group W);
    valid: (G, W) bool, False at padding; modulus: int or None; log_factor: (B|1, G, S) float64, f_g(s) for every
    value s of a group's sum (S = modulus, or W (K - 1) + 1 for plain sums of values 0..K-1), -inf where y rules the
    sum out."""

    index: Tensor
    valid: Tensor
    modulus: int | None
    log_factor: Tensor

    @property
    def hard(self) -> bool:
        """True when some sum is ruled out (-inf): a one-site change of a feasible x then breaks the constraint."""
        return bool(torch.isneginf(self.log_factor).any())


class MeasurementOperator(ABC):
    """A measurement model p(y | x0) on data with ``num_states`` values per site.

    Subclasses implement ``y_shape``, ``check_y``, ``log_likelihood`` and ``simulate``; operators that factorise
    over sites (log p(y | x0) = sum_d l_d(x0^d)) also implement ``site_log_likelihood``, which lets samplers use
    exact per-site kernels instead of Metropolis-Hastings."""

    #: Registry / CLI name (inpaint, channel, thinning, downsample, parity, callable).
    name: str = "measurement"

    def __init__(self, num_states: int) -> None:
        if isinstance(num_states, bool) or not isinstance(num_states, int) or num_states < 2:
            raise ValueError(f"a measurement needs num_states >= 2 values per site, got {num_states!r}")
        self.num_states = num_states

    @abstractmethod
    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one observation (without the batch axis) for data of shape ``site_shape``."""

    @abstractmethod
    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        """``y`` validated (shape (B or 1, *y_shape), dtype, range) and converted to the operator's dtype;
        ValueError with one line saying what was wrong and what is allowed."""

    @abstractmethod
    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        """log p(y | x0) for x0 (B, *sites) long and a checked y (B or 1, *y_sites): (B,) float64."""

    @abstractmethod
    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A measurement y ~ p(y | x0) of each row of x0 (B, *sites): (B, *y_sites)."""

    def site_log_likelihood(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor | None:
        """log p(y | x0) as a sum over sites: the table l[b, d, k] = the site term at x0^d = k, (B or 1, *sites, K)
        float64, with log p(y | x0) = sum_d l[b, d, x0^d]; None when the operator couples sites (then samplers fall
        back to ``log_likelihood``)."""
        return None

    def sum_factors(self, y: Tensor, site_shape: tuple[int, ...]) -> SumFactors | None:
        """log p(y | x0) as a sum over disjoint groups of a function of each group's sum (or sum mod K):
        ``SumFactors``, or None when the operator is not of that form."""
        return None
