"""Exact simulation for any generator matrix: thinning with a rate bound that holds over a window of lam.

References: Lewis & Shedler, "Simulation of nonhomogeneous Poisson processes by thinning", 1979;
Campbell et al., NeurIPS 2022 (the reverse CTMC of a discrete diffusion).

For a general Q the total reverse rate has no bound of the form c(x) sigmoid(lam) (see ``exact``), but the
process can bound it over a window [lam, lam + w] for every prediction (``reverse_rate_window_table``: one bound
per state value, summed over the sites). The simulation walks lam upward in windows: in each, a candidate time is
drawn from the constant bound B; past the window's end the chain moves on to the next window without a jump,
otherwise the candidate is accepted with probability (true total rate) / B and jumps to (site, value) in
proportion to the rates. After a jump the window and its per-state table stay (they hold for every state), only
the sum over the sites is redone. With an exact denoiser the samples follow the data distribution exactly up to
the final noise-removal draw at lam_stop.

The bound is the rate of the worst prediction (sure of the data value x0 that maximises the rate) at its worst
lam in the window, within a factor ~2 (``MatrixProcess`` bisects the window until it is): each rejected candidate
costs a network call. Near the data end that worst rate stays about d (1 - alpha) / sigma ~ d per unit lam and
site (d the largest number of jumps between two values), so the cost grows with lam_stop; meant as ground truth
for small problems (a few sites and states), with ``lam_stop`` lower than ``exact``'s. Where P_t underflows (a far
state at lam ~ 25) no valid bound exists and the sampler raises ValueError instead of stalling. ``num_steps`` is
not used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from ..schedules import Schedule
from .base import ProgressCallback
from .exact import (
    ExactSimulationSampler,
    acceptance_tolerance,
    apply_jumps,
    check_acceptance,
)

#: Smallest ``window``: the sampler walks lam in windows of at most this width (one rate table each), so the loop
#: runs (lam_stop - lam(1)) / window times at least; the table bisects each window itself until its bound is within
#: a factor 2, so a narrower window gains nothing.
MIN_WINDOW = 0.01


class WindowThinningSampler(ExactSimulationSampler):
    name = "exact-window"
    supported_processes = ("matrix",)

    def __init__(self, num_steps: int = 1, final_denoise: bool = True, lam_stop: float = 10.0, window: float = 0.5,
                 temperature: float = 1.0, top_p: float = 1.0, cache: bool = False,
                 grid: str | None = None) -> None:
        super().__init__(num_steps, final_denoise, lam_stop, temperature, top_p, cache, grid)
        if not window >= MIN_WINDOW:
            raise ValueError(f"exact-window: window must be a number >= {MIN_WINDOW:g} (each window is bisected "
                             f"until its bound is tight; narrower ones only add loop iterations), got {window!r}")
        self.window = float(window)

    @torch.no_grad()
    def sample(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               callback: ProgressCallback | None = None, *, start: tuple[Tensor, float] | None = None) -> Tensor:
        device = self.sampling_device(denoiser, generator, device)
        if not hasattr(process, "reverse_rate_window_table"):
            raise ValueError(f"sampler {self.name!r} needs a process with reverse_rate_window_table (matrix); got "
                             f"{process.name!r} (use 'exact' for masking and blackout, 'exact-thinning' for uniform)")
        x, denoiser, lam, lam_end = self._start(process, denoiser, schedule, shape, generator, device, start)
        window_end = torch.minimum(lam + self.window, torch.full_like(lam, lam_end))
        table = process.reverse_rate_window_table(lam, window_end)                 # (B, M): per state value
        bound = process.window_bound_from_table(x, table)
        events = 0
        while True:
            active = (lam < lam_end).nonzero()[:, 0]
            if active.numel() == 0:
                break
            exp_draw = -torch.log1p(-torch.rand(active.shape[0], generator=generator, dtype=torch.float64,
                                                device=device))
            candidate = lam[active] + exp_draw / bound[active].clamp_min(1e-300)
            past = candidate >= window_end[active]
            # no candidate inside the window: move to its end and bound the next window
            moved = active[past]
            lam[moved] = window_end[moved]
            idx = active[~past]
            lam[idx] = candidate[~past]
            if idx.numel():
                xs, lams = x[idx], lam[idx]
                prediction = denoiser(xs, lams.float())
                rates = process.reverse_rates(xs, prediction, lams)       # (b, *sites, M)
                flat = rates.reshape(idx.shape[0], -1)
                accept_prob = flat.sum(1) / bound[idx]
                check_acceptance(accept_prob, self.name, acceptance_tolerance(prediction))
                u = torch.rand(idx.shape[0], generator=generator, dtype=torch.float64, device=device)
                accepted = u < accept_prob
                x = apply_jumps(x, idx[accepted], flat[accepted], rates.shape[-1], generator)
                jumped = idx[accepted]
                if jumped.numel():                      # same window, new state: re-sum the per-state table
                    bound[jumped] = process.window_bound_from_table(x[jumped], table[jumped])
            if moved.numel():
                window_end[moved] = torch.minimum(lam[moved] + self.window, torch.full_like(lam[moved], lam_end))
                table[moved] = process.reverse_rate_window_table(lam[moved], window_end[moved])
                bound[moved] = process.window_bound_from_table(x[moved], table[moved])
            events += 1
            self._after_event(events, x, callback)
        return self._finish(process, denoiser, x, lam_end, generator)

    def config(self) -> dict:
        return {**super().config(), "window": self.window}
