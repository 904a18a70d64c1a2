"""Noise schedules: alpha(t), the probability that a site (or a unit of count) is still untouched.

Conventions (DESIGN.md section 2): t in [0, 1], t = 0 is data, t = 1 is the prior; alpha is decreasing with
alpha(0) <= 1 and alpha(1) near 0. sigma(t) = -log alpha(t) is the integrated rate, beta(t) = sigma'(t).

Every loss and likelihood in this library is written in terms of alpha (or lambda = logit(alpha)), so a
schedule only decides *where* a sampler spends its steps and which time value the network is told. Each
schedule therefore also gives its inverse t(alpha).

References:
- log-linear: Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (MDLM), 2024.
- cosine: Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021 (alpha = cos(pi t / 2)).
- blackout: Santos et al., "Blackout Diffusion: Generative Diffusion Models in Discrete-State Spaces",
  ICML 2023: logit(alpha) linear in the step index between +L and -L with L = -logit(exp(-t_end)).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor


class Schedule(ABC):
    """alpha(t): decreasing from alpha(0) <= 1 to alpha(1) > 0 (small)."""

    name: str = ""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t) for t of any shape, same shape out."""

    @abstractmethod
    def alpha_derivative(self, t: Tensor) -> Tensor:
        """d alpha / d t (<= 0)."""

    @abstractmethod
    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        """The inverse t(alpha), clamped into [0, 1]."""

    def sigma(self, t: Tensor) -> Tensor:
        """Integrated rate sigma(t) = -log alpha(t)."""
        return -torch.log(self.alpha(t))

    def beta(self, t: Tensor) -> Tensor:
        """Rate beta(t) = d sigma / d t = -alpha'(t) / alpha(t)."""
        return -self.alpha_derivative(t) / self.alpha(t)

    @property
    def alpha_min(self) -> float:
        """alpha(1): the noise level of the prior."""
        return float(self.alpha(torch.tensor(1.0, dtype=torch.float64)))

    @property
    def alpha_max(self) -> float:
        """alpha(0): 1 for an exact start at the data, slightly below 1 for the Blackout grid."""
        return float(self.alpha(torch.tensor(0.0, dtype=torch.float64)))

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (with the registry name under "name")."""
        return {"name": self.name}


class LogLinearSchedule(Schedule):
    """alpha(t) = 1 - (1 - eps) t, so sigma(t) = -log(1 - (1 - eps) t) (MDLM's "log-linear")."""

    name = "log-linear"

    def __init__(self, eps: float = 1e-4) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"log-linear schedule: eps must lie in (0, 0.5), got {eps}")
        self.eps = float(eps)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        return ((1.0 - alpha) / (1.0 - self.eps)).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps}


class CosineSchedule(Schedule):
    """alpha(t) = eps + (1 - eps) cos(pi t / 2)."""

    name = "cosine"

    def __init__(self, eps: float = 1e-4) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"cosine schedule: eps must lie in (0, 0.5), got {eps}")
        self.eps = float(eps)

    def alpha(self, t: Tensor) -> Tensor:
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        c = ((alpha - self.eps) / (1.0 - self.eps)).clamp(0.0, 1.0)
        return torch.arccos(c) * (2.0 / math.pi)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps}


class LinearRateSchedule(Schedule):
    """Constant rate: sigma(t) = sigma_max t, alpha(t) = exp(-sigma_max t) (the paper's tau = sigma_max t)."""

    name = "linear"

    def __init__(self, sigma_max: float = 10.0) -> None:
        if sigma_max <= 1.0:
            raise ValueError(f"linear schedule: sigma_max must exceed 1 (alpha(1) = exp(-sigma_max)), got {sigma_max}")
        self.sigma_max = float(sigma_max)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-self.sigma_max * t)

    def alpha_derivative(self, t: Tensor) -> Tensor:
        return -self.sigma_max * torch.exp(-self.sigma_max * t)

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        return (-torch.log(alpha.clamp_min(1e-300)) / self.sigma_max).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "sigma_max": self.sigma_max}


class BlackoutSchedule(Schedule):
    """The Blackout paper's observation times: logit(alpha) linear in t from +L to -L.

    L = -logit(exp(-t_end)) (about t_end for t_end >= 5), so alpha(1) = exp(-t_end) and
    alpha(0) = 1 - exp(-t_end) approximately; the small gap at t = 0 is covered by the ELBO's
    reconstruction term. With `num_steps` grid points t_k = k / (num_steps - 1) this is exactly the
    paper's grid (t_end = 15, 1000 steps).
    """

    name = "blackout"

    def __init__(self, t_end: float = 15.0) -> None:
        if t_end < 3.0:
            raise ValueError(f"blackout schedule: t_end must be >= 3 so that alpha(1) = exp(-t_end) is near 0, "
                             f"got {t_end}")
        self.t_end = float(t_end)
        a_end = math.exp(-self.t_end)
        self.half_range = -math.log(a_end / (1.0 - a_end))

    def _logit(self, t: Tensor) -> Tensor:
        return self.half_range * (1.0 - 2.0 * t)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self._logit(t))

    def alpha_derivative(self, t: Tensor) -> Tensor:
        a = self.alpha(t)
        return -2.0 * self.half_range * a * (1.0 - a)

    def time_of_alpha(self, alpha: Tensor) -> Tensor:
        lam = torch.logit(alpha.clamp(1e-300, 1.0))
        return (0.5 * (1.0 - lam / self.half_range)).clamp(0.0, 1.0)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "t_end": self.t_end}


SCHEDULES: dict[str, type[Schedule]] = {
    LogLinearSchedule.name: LogLinearSchedule,
    CosineSchedule.name: CosineSchedule,
    LinearRateSchedule.name: LinearRateSchedule,
    BlackoutSchedule.name: BlackoutSchedule,
}


def build_schedule(name: str, **options: float) -> Schedule:
    """Build a schedule by registry name; unknown names raise ValueError listing the valid ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(sorted(SCHEDULES))}")
    try:
        return SCHEDULES[name](**options)
    except TypeError as err:
        raise ValueError(f"bad options for schedule {name!r}: {err}") from None
