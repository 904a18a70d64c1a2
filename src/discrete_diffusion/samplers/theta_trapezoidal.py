"""The theta-trapezoidal second-order sampler.

Reference: Ren, Chen, Zhu, Guo, Chen, Rotskoff, Tao, Ying, "Fast Solvers for Discrete Diffusion Models:
Theory and Applications of High-Order Algorithms", 2025 (theta-trapezoidal method; after the theta-
trapezoidal tau-leap of Anderson & Mattingly, 2011, for chemical kinetics).

One step from lam_t to lam_s, with the intermediate point lam_m = lam_t + theta (lam_s - lam_t):
1. y* = leap from x_t with the rates at (x_t, lam_t) over [lam_t, lam_m];
2. x_s = leap from y* with the rates (a1 mu(y*, lam_m) - a2 mu(x_t, lam_t))_+ over [lam_m, lam_s],
   a1 = 1 / (2 theta (1 - theta)), a2 = ((1 - theta)^2 + theta^2) / (2 theta (1 - theta)), a1 - a2 = 1.
Rates come only from the process (``combined_leap`` on ``integrated_reverse_rates``, the expected jumps with
the prediction frozen, which for masking and Blackout integrate the alpha factor exactly): per target value
(site, y) on categorical processes, the rate into y*'s own value dropped, and the masked site's total hazard
exact; per channel on Blackout (nu = +1: y* + Poisson((a1 yhat(y*) - a2 yhat(x_t))_+ h) births). Each leap
moves a categorical site at most once (``multi_jump``, default "first"; see ``theta_base``). Two network calls
per step; the last interval to alpha = 1 draws x0 from the denoiser (one call).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..processes.base import ForwardProcess
from .theta_base import FirstStage, ThetaSampler


class ThetaTrapezoidalSampler(ThetaSampler):
    name = "theta-trapezoidal"

    def second_stage(self, process: ForwardProcess, xt: Tensor, lam_t: Tensor, lam_s: Tensor, stage: FirstStage,
                     generator: torch.Generator | None) -> Tensor:
        theta = self.theta
        a1 = 1.0 / (2.0 * theta * (1.0 - theta))
        a2 = ((1.0 - theta) ** 2 + theta**2) / (2.0 * theta * (1.0 - theta))
        terms = [(a1, stage.mid, stage.prediction_mid, stage.lam_m, stage.lam_m),
                 (-a2, xt, stage.prediction, lam_t, stage.lam_m)]
        return process.combined_leap(stage.mid, terms, lam_s, self.multi_jump, generator)
