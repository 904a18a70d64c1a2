"""A small continuous Gaussian diffusion (DDPM) baseline for count data: diffuse standardised counts as real
numbers, sample, and round back to non-negative integers.

Reference: Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (epsilon prediction, the
simple loss, ancestral sampling with sigma_t^2 = beta_t, linear betas rescaled to T steps). Chen &
Zhou (Learning to Jump, ICML 2023) compare Poisson thinning against such a baseline on count data.

Self-contained: it shares only the noise-conditioned MLP backbone (``nn.MLP``, one real input channel per site)
with the discrete models, and none of their processes. Data x (N, *sites) >= 0 are standardised per site with the
training mean and standard deviation, y = (x - m) / s; the forward process is y_t = sqrt(abar_t) y + sqrt(1 -
abar_t) eps over T discrete steps; samples are s y_0 + m, rounded to the nearest integer and clipped at 0 (the
paper's treatment of integer data). It is a sampler of counts, not a likelihood model: no bits/dim is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nn import MLP

__all__ = ["GaussianDDPM", "linear_alpha_bar"]


def linear_alpha_bar(num_steps: int, beta_start: float = 0.1, beta_end: float = 20.0) -> Tensor:
    """abar_k for k = 0..T (float64, abar_0 = 1) of Ho et al.'s linear betas rescaled to T steps:
    beta_k = (beta_start + (beta_end - beta_start) (k - 1) / (T - 1)) / T, i.e. 1e-4 .. 0.02 at T = 1000 and
    1e-3 .. 0.2 at T = 100, so abar_T ~ exp(-(beta_start + beta_end) / 2) ~ 4.5e-5 at any T."""
    k = torch.arange(num_steps, dtype=torch.float64)
    betas = (beta_start + (beta_end - beta_start) * k / max(num_steps - 1, 1)) / num_steps
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas.clamp(max=0.999), 0)])


@dataclass
class GaussianDDPM:
    """Epsilon-prediction DDPM over standardised counts with a ``nn.MLP`` backbone.

    site_shape: the shape of one example; num_steps: T (training and sampling steps); hidden, depth: the MLP."""

    site_shape: tuple[int, ...]
    num_steps: int = 100
    hidden: int = 128
    depth: int = 3

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"GaussianDDPM: num_steps must be >= 1, got {self.num_steps}")
        self.network = MLP(1, 1, self.site_shape, hidden=self.hidden, depth=self.depth)
        self.alpha_bar = linear_alpha_bar(self.num_steps)
        self.mean = torch.zeros(self.site_shape)
        self.std = torch.ones(self.site_shape)

    def _noise_level(self, k: Tensor) -> Tensor:
        """The backbone's noise input in [-1, 1] for step indices k (B,) in 1..T."""
        return 2.0 * k.float() / self.num_steps - 1.0

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The simple loss E ||eps - eps_hat(y_k, k)||^2 at a uniform step k in 1..T, for counts x (B, *sites)."""
        y = (x.float() - self.mean) / self.std
        k = torch.randint(1, self.num_steps + 1, (x.shape[0],), generator=generator)
        abar = self.alpha_bar[k].float().reshape((-1,) + (1,) * len(self.site_shape))
        eps = torch.randn(y.shape, generator=generator)
        yk = abar.sqrt() * y + (1 - abar).sqrt() * eps
        pred = self.network(yk[:, None], self._noise_level(k))[:, 0]
        return ((pred - eps) ** 2).mean()

    def fit(self, train: Tensor, steps: int, batch_size: int = 1000, lr: float = 1e-3, seed: int = 0) -> list[float]:
        """Standardise with the training data, then Adam for ``steps`` batches; returns the loss per step."""
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.network = MLP(1, 1, self.site_shape, hidden=self.hidden, depth=self.depth)
        self.mean = train.float().mean(0)
        self.std = train.float().std(0).clamp_min(1e-6)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            index = torch.randint(0, train.shape[0], (batch_size,), generator=generator)
            loss = self.loss(train[index], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling from y_T ~ N(0, I) down to y_0 (sigma_k^2 = beta_k), then round(s y_0 + m) clipped
        at 0: (num, *sites) long."""
        y = torch.randn((num, *self.site_shape), generator=generator)
        for k in range(self.num_steps, 0, -1):
            abar, abar_prev = float(self.alpha_bar[k]), float(self.alpha_bar[k - 1])
            beta = 1 - abar / abar_prev
            eps = self.network(y[:, None], self._noise_level(torch.full((num,), k)))[:, 0]
            y = (y - beta / math.sqrt(1 - abar) * eps) / math.sqrt(1 - beta)
            if k > 1:
                y = y + math.sqrt(beta) * torch.randn(y.shape, generator=generator)
        return torch.round(y * self.std + self.mean).clamp_min(0).long()
