"""The sampler base: owns the time grid, the loop from t = 1 to t = 0 and the progress callback.

A sampler subclass implements one ``step`` from noise level lam_t to lam_s > lam_t (lam = logit(alpha)),
calling only the process's methods (a sampler never re-derives a rate). The grid is uniform in t and
mapped through the schedule, so the Blackout schedule gives the paper's grid (uniform in logit(alpha)).
With ``final_denoise`` the last step goes to alpha = 1 (lam = +inf): every remaining unit of noise is
removed by drawing x0 from the denoiser.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from ..schedules import Schedule

#: callback(step, num_steps, x) after each step; step counts from 1.
ProgressCallback = Callable[[int, int, Tensor], None]


class Sampler(ABC):
    """Base of every sampler. ``num_steps`` is the number of grid intervals (network calls for most)."""

    name: str = ""

    def __init__(self, num_steps: int = 100, final_denoise: bool = True) -> None:
        if int(num_steps) < 1:
            raise ValueError(f"{type(self).__name__}: num_steps must be >= 1, got {num_steps}")
        self.num_steps = int(num_steps)
        self.final_denoise = bool(final_denoise)

    def time_grid(self, schedule: Schedule) -> Tensor:
        """lam_k = logit(alpha(t_k)) for t_k = 1 - k / num_steps, k = 0..num_steps, float64 and increasing;
        the last entry is +inf when final_denoise is set (or alpha(0) = 1)."""
        t = torch.linspace(1.0, 0.0, self.num_steps + 1, dtype=torch.float64)
        lam = torch.logit(schedule.alpha(t).clamp(0.0, 1.0))
        if self.final_denoise:
            lam[-1] = torch.inf
        return lam

    @torch.no_grad()
    def sample(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               callback: ProgressCallback | None = None) -> Tensor:
        """Generate samples of shape (B, *sites) starting from the process's prior at t = 1."""
        grid = self.time_grid(schedule)
        x = process.sample_prior(tuple(shape), float(grid[0]), generator, device=device)
        batch = x.shape[0]
        for k in range(self.num_steps):
            lam_t = torch.full((batch,), float(grid[k]), device=device)
            lam_s = torch.full((batch,), float(grid[k + 1]), device=device)
            x = self.step(process, denoiser, x, lam_t, lam_s, generator)
            if callback is not None:
                callback(k + 1, self.num_steps, x)
        return x

    @abstractmethod
    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        """One reverse step x_t -> x_s, lam_s > lam_t (both (B,)). Returns (B, *sites) long."""

    def config(self) -> dict:
        return {"name": self.name, "num_steps": self.num_steps, "final_denoise": self.final_denoise}
