"""ReMDM: masked-diffusion sampling with remasking.

Reference: Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
Scaling", 2025.

Each step draws x0 ~ p(x0 | x_t) per site and then x_s from the process's ``remasking_bridge``: unmasked
sites are remasked with probability sigma_t, masked sites unmask with the probability that keeps the
marginals q_s(. | x0). sigma_t <= sigma_max(t) = min(1, (1 - alpha_s) / alpha_t) (the process's
``max_remask_probability``). Strategies (the paper's names):
- "cap":     sigma_t = min(eta, sigma_max(t));
- "rescale": sigma_t = eta * sigma_max(t), eta in [0, 1].
eta = 0 is the plain bridge (MDLM) sampler, draw for draw. The paper's time windows ("switch", "loop") and
its confidence strategy are not implemented. Masking only. Remasking corrects a model's mistakes at
inference time; with an exact denoiser it adds per-site (factorisation) error that does not vanish with
more steps for a fixed eta, so it is not expected to reach the table exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler

STRATEGIES = ("cap", "rescale")


class ReMDMSampler(Sampler):
    name = "remdm"
    supported_processes = ("masking",)

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, strategy: str = "cap",
                 eta: float = 0.02, temperature: float = 1.0, top_p: float = 1.0, cache: bool = False) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache)
        if strategy not in STRATEGIES:
            raise ValueError(f"remdm: strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"remdm: eta must lie in [0, 1], got {eta}")
        self.strategy, self.eta = strategy, float(eta)

    def remask_probability(self, process: ForwardProcess, lam_t: Tensor, lam_s: Tensor) -> Tensor:
        """sigma_t (B,) float64 for the chosen strategy."""
        sigma_max = process.max_remask_probability(lam_t, lam_s)
        if self.strategy == "cap":
            return sigma_max.clamp_max(self.eta)
        return self.eta * sigma_max

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        if not hasattr(process, "remasking_bridge"):
            raise ValueError(f"sampler 'remdm' needs the masking process, got {process.name!r}")
        prediction = denoiser(xt, lam_t)
        x0 = process.sample_x0(xt, prediction, generator)
        if math.isinf(float(lam_s[0])):
            return x0
        sigma = self.remask_probability(process, lam_t, lam_s)
        return process.remasking_bridge(xt, x0, lam_t, lam_s, sigma, generator)

    def config(self) -> dict:
        return {**super().config(), "strategy": self.strategy, "eta": self.eta}
