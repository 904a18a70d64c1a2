"""Exact simulation of the reverse CTMC by thinning (Lewis & Shedler, 1979), for small problems.

References: Lewis & Shedler, "Simulation of nonhomogeneous Poisson processes by thinning", 1979;
Campbell et al., NeurIPS 2022 (the reverse CTMC of a discrete diffusion).

Between jumps the total reverse rate per unit of lam is bounded by c(x) * sigmoid(lam) (the process's
``reverse_rate_bound``), whose integral is c(x) * softplus(lam). Candidate times come from that bound in
closed form; each candidate is accepted with probability (true total rate) / bound and then jumps to
(site, value) with probability proportional to the rates. No time discretisation: with an exact
denoiser the samples follow the data distribution exactly, up to the final noise-removal draw at
lam_stop (alpha = 1 - 1e-11 by default). ``num_steps`` is not used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess, sample_categorical
from ..schedules import Schedule
from .base import ProgressCallback, Sampler


class ExactSimulationSampler(Sampler):
    name = "exact"

    def __init__(self, num_steps: int = 1, final_denoise: bool = True, lam_stop: float = 25.0) -> None:
        super().__init__(num_steps, final_denoise)
        self.lam_stop = float(lam_stop)

    @torch.no_grad()
    def sample(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               callback: ProgressCallback | None = None) -> Tensor:
        grid = Sampler.time_grid(self, schedule)
        lam_end = min(float(torch.logit(torch.tensor(schedule.alpha_max, dtype=torch.float64))), self.lam_stop)
        x = process.sample_prior(tuple(shape), float(grid[0]), generator, device=device)
        batch = x.shape[0]
        lam = torch.full((batch,), float(grid[0]), dtype=torch.float64, device=device)
        active = torch.ones(batch, dtype=torch.bool, device=device)
        events = 0
        while bool(active.any()):
            idx = active.nonzero()[:, 0]
            bound = process.reverse_rate_bound(x[idx]).clamp_min(1e-12)
            exp_draw = -torch.log1p(-torch.rand(idx.shape[0], generator=generator, dtype=torch.float64, device=device))
            target = F.softplus(lam[idx]) + exp_draw / bound
            new_lam = torch.log(torch.expm1(target))                      # inverse of softplus
            finished = (new_lam >= lam_end) | (bound <= 1e-12)
            lam[idx] = torch.minimum(new_lam, torch.full_like(new_lam, lam_end))
            active[idx[finished]] = False
            idx = idx[~finished]
            if idx.numel() == 0:
                break
            xs, lams = x[idx], lam[idx]
            rates = process.reverse_rates(xs, denoiser(xs, lams.float()), lams)  # (b, *sites, M)
            flat = rates.reshape(idx.shape[0], -1)
            accept_prob = flat.sum(1) / (torch.sigmoid(lams) * bound[~finished])
            u = torch.rand(idx.shape[0], generator=generator, dtype=torch.float64, device=device)
            accepted = u < accept_prob
            if bool(accepted.any()):
                choice = sample_categorical(torch.log(flat[accepted].clamp_min(1e-300)), generator)
                num_values = rates.shape[-1]
                site, value = choice // num_values, choice % num_values
                rows = idx[accepted]
                x_flat = x.reshape(batch, -1)
                x_flat[rows, site] = value
                x = x_flat.reshape(x.shape)
            events += 1
            if callback is not None:
                callback(events, 0, x)
        if self.final_denoise:
            lam_f = torch.full((batch,), lam_end, device=device)
            x = process.sample_x0(x, denoiser(x, lam_f), generator)
        return x

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        raise ValueError("the exact simulator has no fixed steps; call sample()")

    def config(self) -> dict:
        return {**super().config(), "lam_stop": self.lam_stop}
