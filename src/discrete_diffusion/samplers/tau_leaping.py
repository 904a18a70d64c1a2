"""Tau-leaping: freeze the reverse rates in the current state over a step and draw Poisson jump counts.

Reference: Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022;
for Blackout (Poisson births), Santos et al., ICML 2023.

The step's last interval to alpha = 1 (noise removal) cannot be leapt (its hazard is infinite); it draws
x0 from the denoiser as the bridge sampler does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler


class TauLeapingSampler(Sampler):
    name = "tau-leaping"

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        if not hasattr(process, "tau_leap"):
            raise ValueError(f"sampler 'tau-leaping' does not support process {process.name!r} yet")
        prediction = denoiser(xt, lam_t)
        if math.isinf(float(lam_s[0])):
            return process.sample_x0(xt, prediction, generator)
        return process.tau_leap(xt, process.expected_missing(prediction), lam_t, lam_s, generator)
