"""Tau-leaping: freeze the reverse rates in the current state over a step and draw Poisson jump counts.

Reference: Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022;
for Blackout (Poisson births), Santos et al., ICML 2023.

Count processes (Blackout, those with ``tau_leap``) keep their Poisson-count leap: births add up at a site.
Categorical processes (masking, uniform, matrix): the expected number of jumps per (site, target) over the
step is the process's ``integrated_reverse_rates`` (exact in lam where the rate is a known function of lam
times a lam-free factor, as for masking; otherwise rate(lam_t) * (lam_s - lam_t)); Poisson counts are drawn
per (site, target) and a site with more than one jump keeps its value (``multi_jump="reject"``, Campbell
et al. 2022) or takes the first jump of its competing clocks (``multi_jump="first"``).

The step's last interval to alpha = 1 (noise removal) cannot be leapt (its hazard is infinite); it draws
x0 from the denoiser as the bridge sampler does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess, check_jump_rule
from .base import MULTI_JUMP_RULES, Sampler


class TauLeapingSampler(Sampler):
    name = "tau-leaping"

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, multi_jump: str = "reject",
                 temperature: float = 1.0, top_p: float = 1.0, cache: bool = False,
                 grid: str | None = None, top_k: int = 0) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache, grid, top_k)
        check_jump_rule(multi_jump, MULTI_JUMP_RULES)
        self.multi_jump = multi_jump

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        prediction = denoiser(xt, lam_t)
        if math.isinf(float(lam_s[0])):
            return process.sample_x0(xt, prediction, generator)
        if hasattr(process, "tau_leap"):
            return process.tau_leap(xt, process.expected_missing(prediction), lam_t, lam_s, generator)
        return process.leap(xt, prediction, lam_t, lam_t, lam_s, self.multi_jump, generator)

    def config(self) -> dict:
        out = super().config()
        if self.multi_jump != "reject":
            out["multi_jump"] = self.multi_jump
        return out
