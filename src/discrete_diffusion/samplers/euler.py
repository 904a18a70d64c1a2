"""Euler step of the reverse CTMC, as in discrete flow matching.

References: Gat et al., "Discrete Flow Matching", NeurIPS 2024; Campbell et al., "Generative Flows on
Discrete State-Spaces" (multiflow), ICML 2024.

Per site, independently: with E_y the expected jumps to y over the step (the process's
``integrated_reverse_rates``, i.e. rate * dlam, exact in lam for masking and Blackout), move to y with
probability E_y and stay with probability 1 - sum_y E_y. Where sum_y E_y > 1 the jump probabilities are
scaled to sum to one (stay probability clipped at 0). At most one change per site per step on a categorical
process. This is the "euler" rule of the process's ``leap`` (move with probability min(E, 1), target in
proportion to E_y), which masking draws only at the sites that move. On Blackout (a count process) the
leap fires every birth due: x_t + Poisson(yhat h) (``BlackoutProcess.leap``), the same step as tau-leaping;
one birth per site per step would end a 100-step run on data at count 200 near 67. The last interval to
alpha = 1 draws x0 from the denoiser.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler


class EulerSampler(Sampler):
    name = "euler"

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        prediction = denoiser(xt, lam_t)
        if math.isinf(float(lam_s[0])):
            return process.sample_x0(xt, prediction, generator)
        return process.leap(xt, prediction, lam_t, lam_t, lam_s, "euler", generator)
