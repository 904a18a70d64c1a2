"""The Blackout paper's binomial bridge with the mean plug-in.

Reference: Santos et al., "Blackout Diffusion", ICML 2023; the stochastic rounding follows the
observation in CountsDiff (2025) that rounding the mean collapses small means to zero.

x_s = x_t + Binomial(R(yhat), (alpha_s - alpha_t) / (1 - alpha_t)), yhat ~ E[x0 - x_t | x_t] and R
stochastic rounding (floor or ceil with E[R(y)] = y). Count processes only (those with ``mean_bridge``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler


class MeanBridgeSampler(Sampler):
    name = "mean-bridge"
    supported_processes = ("blackout",)

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        if not hasattr(process, "mean_bridge"):
            raise ValueError(f"sampler 'mean-bridge' needs a count process (blackout), got {process.name!r}")
        prediction = denoiser(xt, lam_t)
        return process.mean_bridge(xt, process.expected_missing(prediction), lam_t, lam_s, generator)
