"""The theta-RK-2 second-order sampler.

Reference: Ren, Chen, Zhu, Guo, Chen, Rotskoff, Tao, Ying, "Fast Solvers for Discrete Diffusion Models:
Theory and Applications of High-Order Algorithms", 2025 (theta-RK-2 method).

One step from lam_t to lam_s, with the intermediate point lam_m = lam_t + theta (lam_s - lam_t):
1. y* = leap from x_t with the rates at (x_t, lam_t) over [lam_t, lam_m];
2. x_s = leap from x_t (not from y*) over the whole step [lam_t, lam_s] with the rates
   ((1 - 1/(2 theta)) mu(x_t, lam_t) + 1/(2 theta) mu(y*, lam_m))_+.
Rates are indexed by (site, target value) and come only from the process (``integrated_reverse_rates``);
the rate into x_t's own value is dropped. Each leap uses the tau-leaping multi-jump rule (``multi_jump``).
The paper's analysis gives second order for theta in (0, 1/2]; larger theta is allowed. Two network calls
per step; the last interval to alpha = 1 draws x0 from the denoiser (one call).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import MULTI_JUMP_RULES, Sampler, jump_from_rates, without_current


class ThetaRK2Sampler(Sampler):
    name = "theta-rk2"

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, theta: float = 0.5,
                 multi_jump: str = "reject", temperature: float = 1.0, top_p: float = 1.0,
                 cache: bool = False) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache)
        if not 0.0 < float(theta) <= 1.0:
            raise ValueError(f"{self.name}: theta must lie in (0, 1], got {theta}")
        if multi_jump not in MULTI_JUMP_RULES:
            raise ValueError(f"multi_jump must be one of {list(MULTI_JUMP_RULES)}, got {multi_jump!r}")
        self.theta = float(theta)
        self.multi_jump = multi_jump

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        prediction = denoiser(xt, lam_t)
        if math.isinf(float(lam_s[0])):
            return process.sample_x0(xt, prediction, generator)
        theta = self.theta
        lam_m = lam_t.double() + theta * (lam_s.double() - lam_t.double())
        first = process.integrated_reverse_rates(xt, prediction, lam_t, lam_t, lam_m)
        mid = jump_from_rates(xt, first, generator, self.multi_jump)
        prediction_mid = denoiser(mid, lam_m.to(lam_t.dtype))
        w = 1.0 / (2.0 * theta)
        combined = ((1.0 - w) * process.integrated_reverse_rates(xt, prediction, lam_t, lam_t, lam_s)
                    + w * process.integrated_reverse_rates(mid, prediction_mid, lam_m, lam_t, lam_s))
        return jump_from_rates(xt, without_current(combined.clamp_min(0.0), xt), generator, self.multi_jump)

    def config(self) -> dict:
        out = {**super().config(), "theta": self.theta}
        if self.multi_jump != "reject":
            out["multi_jump"] = self.multi_jump
        return out
