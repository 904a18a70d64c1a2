"""The theta-RK-2 sampler.

Reference: Ren, Chen, Zhu, Guo, Chen, Rotskoff, Tao, Ying, "Fast Solvers for Discrete Diffusion Models:
Theory and Applications of High-Order Algorithms", 2025 (theta-RK-2 method, arXiv 2502.00234).

One step from lam_t to lam_s, with the intermediate point lam_m = lam_t + theta (lam_s - lam_t):
1. y* = leap from x_t with the rates at (x_t, lam_t) over [lam_t, lam_m];
2. x_s = leap from x_t (not from y*) over the whole step [lam_t, lam_s] with the intensities
   ((1 - 1/(2 theta)) mu(x_t, lam_t) + 1/(2 theta) mu(y*, lam_m))_+, combined per channel by the process
   (``combined_leap``).
Channels (what "mu(y*)" means for a move made from x_t):
- masking: channel "site d: MASK -> y", intensity alpha p(x0^d = y | x), taken out of MASK even where y* has
  already unmasked d (there p(x0^d | y*) is the point mass on y*'s value), and the step's total hazard
  (sum_i c_i h_i)_+ is exact. A zero midpoint rate at those sites (the literal reading) made a site unmask with
  probability e^{-h1}(1 - e^{-h}) instead of 1 - e^{-h}: first order even on one site.
- Blackout: the birth channel nu = +1 fires Poisson(((1 - w) yhat(x_t) + w yhat(y*))_+ h) times, added to x_t.
- uniform / matrix: per target value (site d -> y), the rate into x_t's own value dropped.
Accuracy, measured (docs/samplers.md): on masking each site's law is exact at every step count (the masked
fraction at any grid time has no discretisation error, and independent sites are sampled exactly), but the
joint law's error is first order: sites that unmask in the same step draw their values independently given y*
(the second leap starts from x_t, so no negative weight cancels that, unlike theta-trapezoidal). Each leap
moves a categorical site at most once (``multi_jump``, default "first"; see ``theta_base``). The paper's
analysis gives second order for theta in (0, 1/2]; larger theta is allowed. Two network calls per step; the
last interval to alpha = 1 draws x0 from the denoiser (one call).
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
        terms = [(1.0 - w, xt, stage.prediction, lam_t, lam_t),
                 (w, stage.mid, stage.prediction_mid, stage.lam_m, lam_t)]
        terms = [term for term in terms if term[0] != 0.0]         # theta = 1/2 (the default) needs the midpoint only
        return process.combined_leap(xt, terms, lam_s, self.multi_jump, generator)
