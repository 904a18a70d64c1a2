"""The theta-RK-2 second-order sampler.

Reference: Ren, Chen, Zhu, Guo, Chen, Rotskoff, Tao, Ying, "Fast Solvers for Discrete Diffusion Models:
Theory and Applications of High-Order Algorithms", 2025 (theta-RK-2 method).

One step from lam_t to lam_s, with the intermediate point lam_m = lam_t + theta (lam_s - lam_t):
1. y* = leap from x_t with the rates at (x_t, lam_t) over [lam_t, lam_m];
2. x_s = leap from x_t (not from y*) over the whole step [lam_t, lam_s] with the rates
   ((1 - 1/(2 theta)) mu(x_t, lam_t) + 1/(2 theta) mu(y*, lam_m))_+.
Rates are indexed by (site, target value) and come only from the process (``integrated_reverse_rates``);
the rate into x_t's own value is dropped. Each leap moves a site at most once (``multi_jump``, default "first"; see ``theta_base``).
The paper's analysis gives second order for theta in (0, 1/2]; larger theta is allowed. Two network calls
per step; the last interval to alpha = 1 draws x0 from the denoiser (one call).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..processes.base import ForwardProcess
from .theta_base import FirstStage, ThetaSampler


class ThetaRK2Sampler(ThetaSampler):
    name = "theta-rk2"
    allow_theta_one = True

    def second_stage(self, process: ForwardProcess, xt: Tensor, lam_t: Tensor, lam_s: Tensor, stage: FirstStage,
                     generator: torch.Generator | None) -> Tensor:
        w = 1.0 / (2.0 * self.theta)
        terms = [(1.0 - w, xt, stage.prediction, lam_t, lam_t), (w, stage.mid, stage.prediction_mid, stage.lam_m, lam_t)]
        terms = [term for term in terms if term[0] != 0.0]         # theta = 1/2 (the default) needs the midpoint only
        return process.combined_leap(xt, terms, lam_s, self.multi_jump, generator)
