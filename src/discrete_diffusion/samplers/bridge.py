"""Exact bridge ("ancestral") sampler for every process.

Reference: Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces" (D3PM),
NeurIPS 2021; for Blackout, Santos et al., ICML 2023 (binomial bridge).

One step draws x0 ~ p(x0 | x_t) per site, then x_s ~ q(x_s | x_t, x0). Per site this samples
sum_{x0} q(x_s | x_t, x0) p(x0 | x_t), the exact discrete-time reverse transition when p is exact.
With a Blackout mean-parameterised model (no logits), x0 - x_t is the stochastically rounded mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler


class BridgeSampler(Sampler):
    name = "bridge"

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        return process.bridge_step(xt, denoiser(xt, lam_t), lam_t, lam_s, generator)
