"""Exact simulation of the reverse CTMC by thinning (Lewis & Shedler, 1979), for small problems.

References: Lewis & Shedler, "Simulation of nonhomogeneous Poisson processes by thinning", 1979;
Campbell et al., NeurIPS 2022 (the reverse CTMC of a discrete diffusion).

Between jumps the total reverse rate per unit of lam is bounded by c(x) * sigmoid(lam) (the process's
``reverse_rate_bound``), whose integral is c(x) * softplus(lam). Candidate times come from that bound in
closed form; each candidate is accepted with probability (true total rate) / bound and then jumps to
(site, value) with probability proportional to the rates. No time discretisation: with an exact
denoiser the samples follow the data distribution exactly, up to the final noise-removal draw at
lam_stop (alpha = 1 - 1e-11 by default). ``num_steps`` is not used.

The bound must hold for every prediction the denoiser can give. An acceptance probability above 1 (beyond the
prediction's rounding, ``acceptance_tolerance``) means it did not, and capping it at 1 would silently simulate
another chain: the sampler raises ValueError (one line naming the samplers that work) instead (``check_acceptance``,
shared with ``exact-window``). A
denoiser that knows its rates can leave the process's bound (Blackout's classifier-free guidance at gamma outside
{0, 1}, whose guided mean m_c^gamma m_u^(1 - gamma) can exceed N - x_t) says so through a method
``thinning_refusal(process) -> str | None``; the sampler raises that ValueError before it starts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess, sample_categorical
from ..schedules import Schedule
from .base import ProgressCallback, Sampler, check_start


def acceptance_tolerance(prediction) -> float:
    """How far above 1 an acceptance probability may read from rounding alone: 1e-9 for float64 predictions, 64
    machine epsilons of a lower precision (float32: 7.6e-6), whose probabilities sum to 1 only to that precision."""
    tensors = [t for t in (getattr(prediction, "x0_log_probs", None), getattr(prediction, "mean_missing", None))
               if t is not None]
    eps = max((torch.finfo(t.dtype).eps for t in tensors if t.is_floating_point()), default=0.0)
    return max(1e-9, 64.0 * eps if eps > torch.finfo(torch.float64).eps else 0.0)


def check_acceptance(accept_prob: Tensor, name: str, tolerance: float = 1e-9) -> None:
    """ValueError when a thinning acceptance probability exceeds 1 + ``tolerance``: the reverse rate left the rate
    bound the candidate times were drawn from, and min(1, rate / bound) would simulate another chain."""
    if accept_prob.numel() and bool((accept_prob > 1.0 + tolerance).any()):
        worst = float(accept_prob.max())
        raise ValueError(f"{name}: the reverse rate exceeded the thinning bound (rate / bound = {worst:.6g} > 1); "
                           f"the denoiser's rates leave the process's bound, so exact simulation would be wrong: use "
                           f"tau-leaping, euler or theta-trapezoidal")


def check_thinning_denoiser(denoiser: Denoiser, process: ForwardProcess) -> None:
    """ValueError (one line) when ``denoiser`` declares (``thinning_refusal``) that its rates can exceed the
    process's thinning bound."""
    refusal = getattr(denoiser, "thinning_refusal", None)
    message = refusal(process) if callable(refusal) else None
    if message:
        raise ValueError(message)


def apply_jumps(x: Tensor, rows: Tensor, flat_rates: Tensor, num_values: int,
                generator: torch.Generator | None) -> Tensor:
    """Jump once in each of ``rows`` of x (B, *sites): to (site, value) drawn in proportion to flat_rates
    (len(rows), sites * num_values). Returns the updated x."""
    if rows.numel() == 0:
        return x
    choice = sample_categorical(torch.log(flat_rates.clamp_min(1e-300)), generator)
    site, value = choice // num_values, choice % num_values
    x_flat = x.reshape(x.shape[0], -1).clone()
    x_flat[rows, site] = value
    return x_flat.reshape(x.shape)


#: Largest ``lam_stop`` of the thinning samplers. Their events per sample grow with the simulated range of lam
#: (about S per unit lam for exact-thinning), and from lam ~ 37 on alpha = 1 - sigmoid(-lam) is 1 in float64, so
#: no further noise is left to remove: the bound stops a hostile lam_stop from running for hours.
MAX_LAM_STOP = 50.0


class ExactSimulationSampler(Sampler):
    name = "exact"
    supported_processes: tuple[str, ...] | None = ("masking", "blackout")
    uses_steps = False  # event-driven: num_steps is ignored

    def __init__(self, num_steps: int = 1, final_denoise: bool = True, lam_stop: float = 25.0,
                 temperature: float = 1.0, top_p: float = 1.0, cache: bool = False,
                 grid: str | None = None, top_k: int = 0) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache, grid, top_k)
        if not math.isfinite(float(lam_stop)) or float(lam_stop) > MAX_LAM_STOP:
            raise ValueError(f"{self.name}: lam_stop must be a finite number <= {MAX_LAM_STOP:g} (alpha = 1 in "
                             f"float64 from lam ~ 37 on), got {lam_stop!r}")
        self.lam_stop = float(lam_stop)

    @torch.no_grad()
    def sample(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               callback: ProgressCallback | None = None, *, start: tuple[Tensor, float] | None = None) -> Tensor:
        """Samples (B, *sites) from the prior at t = 1, or from ``start=(x_t, t)`` (x_t at time t of ``schedule``,
        see ``Sampler.sample``): the reverse CTMC simulated exactly from lam = logit(alpha(t)) to lam_stop."""
        device = self.sampling_device(denoiser, generator, device)
        x, denoiser, lam, lam_end = self._start(process, denoiser, schedule, shape, generator, device, start)
        batch = x.shape[0]
        active = torch.ones(batch, dtype=torch.bool, device=device)
        events = 0
        while bool(active.any()):
            idx = active.nonzero()[:, 0]
            bound = self.rate_bound(process, x[idx])                       # (b, 2): [c_alpha, c_noise]
            exp_draw = -torch.log1p(-torch.rand(idx.shape[0], generator=generator, dtype=torch.float64, device=device))
            new_lam = self.next_candidate(bound, lam[idx], exp_draw)
            finished = (new_lam >= lam_end) | (bound.sum(1) <= 1e-12)
            lam[idx] = torch.minimum(new_lam, torch.full_like(new_lam, lam_end))
            active[idx[finished]] = False
            idx = idx[~finished]
            if idx.numel() == 0:
                break
            xs, lams = x[idx], lam[idx]
            prediction = denoiser(xs, lams.float())
            rates = process.reverse_rates(xs, prediction, lams)  # (b, *sites, M)
            flat = rates.reshape(idx.shape[0], -1)
            live = bound[~finished]
            accept_prob = flat.sum(1) / (torch.sigmoid(lams) * live[:, 0] + torch.sigmoid(-lams) * live[:, 1])
            check_acceptance(accept_prob, self.name, acceptance_tolerance(prediction))
            u = torch.rand(idx.shape[0], generator=generator, dtype=torch.float64, device=device)
            accepted = u < accept_prob
            x = apply_jumps(x, idx[accepted], flat[accepted], rates.shape[-1], generator)
            events += 1
            self._after_event(events, x, callback)
        return self._finish(process, denoiser, x, lam_end, generator)

    def _start(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None, device: torch.device | str,
               start: tuple[Tensor, float] | None = None) -> tuple[Tensor, Denoiser, Tensor, float]:
        """(x_1 from the prior or the given start x_t, the wrapped denoiser, lam (B,) float64 there, the lam where
        simulation stops)."""
        check_thinning_denoiser(denoiser, process)
        lam_end = min(float(torch.logit(torch.tensor(schedule.alpha_max, dtype=torch.float64))), self.lam_stop)
        if start is None:
            lam_start = float(Sampler.time_grid(self, schedule)[0])
            x = process.sample_prior(tuple(shape), lam_start, generator, device=device)
        else:
            x, t_start = check_start(process, shape, start, torch.device(device))
            lam_start = float(torch.logit(schedule.alpha(torch.tensor(t_start, dtype=torch.float64)).clamp(0.0, 1.0)))
        denoiser = self.wrap_denoiser(process, denoiser, x.shape[0])
        lam = torch.full((x.shape[0],), lam_start, dtype=torch.float64, device=device)
        return x, denoiser, lam, lam_end

    def _after_event(self, events: int, x: Tensor, callback: ProgressCallback | None) -> None:
        self._record_cost()
        if callback is not None:
            callback(events, 0, x)

    def _finish(self, process: ForwardProcess, denoiser: Denoiser, x: Tensor, lam_end: float,
                generator: torch.Generator | None) -> Tensor:
        """The final noise-removal draw at lam_end (with ``final_denoise``), then the cost record."""
        if self.final_denoise:
            lam_f = torch.full((x.shape[0],), lam_end, device=x.device)
            x = process.sample_x0(x, denoiser(x, lam_f), generator)
        self._record_cost()
        return x

    def rate_bound(self, process: ForwardProcess, xt: Tensor) -> Tensor:
        """(b, 2) float64 [c_alpha, c_noise]: total reverse rate <= c_alpha sigmoid(lam) + c_noise sigmoid(-lam)
        until the next jump. Here c_noise = 0 (the process's ``reverse_rate_bound``)."""
        c = process.reverse_rate_bound(xt).double().clamp_min(1e-12)
        return torch.stack([c, torch.zeros_like(c)], dim=1)

    @staticmethod
    def next_candidate(bound: Tensor, lam: Tensor, exp_draw: Tensor) -> Tensor:
        """The lam' > lam at which the bound's integral, c_alpha softplus(lam) - c_noise softplus(-lam), has grown
        by exp_draw: in closed form when c_noise = 0, else by bisection (the integral increases in lam)."""
        c_alpha, c_noise = bound[:, 0], bound[:, 1]
        if not bool((c_noise > 0).any()):
            target = F.softplus(lam) + exp_draw / c_alpha
            return torch.log(torch.expm1(target))                          # inverse of softplus

        def integral(value: Tensor) -> Tensor:
            return c_alpha * F.softplus(value) - c_noise * F.softplus(-value)

        target = integral(lam) + exp_draw
        low = lam.clone()
        high = lam + exp_draw / torch.minimum(c_alpha, c_noise).clamp_min(1e-12)   # the rate is >= min(c) everywhere
        for _ in range(200):
            mid = 0.5 * (low + high)
            below = integral(mid) < target
            low = torch.where(below, mid, low)
            high = torch.where(below, high, mid)
            if bool(((high - low) <= 1e-12 * (1.0 + high.abs())).all()):
                break
        return high

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        raise ValueError("the exact simulator has no fixed steps; call sample()")

    def config(self) -> dict:
        return {**super().config(), "lam_stop": self.lam_stop}


class TwoTermThinningSampler(ExactSimulationSampler):
    """Exact simulation for processes whose reverse rate is not bounded by c(x) sigmoid(lam) but by
    c_alpha(x) sigmoid(lam) + c_noise(x) sigmoid(-lam) (the process's ``reverse_rate_bound_terms``): the
    uniform process, whose rate per site is <= (K-1)/K (1 - alpha) + alpha for every prediction. Same thinning
    algorithm; candidate times are found by bisection on the bound's integral. The bound stays ~S per unit lam
    as alpha -> 1, so this costs about S * (lam_stop - lam(1)) candidate events per sample (small problems)."""

    name = "exact-thinning"
    supported_processes = ("uniform",)

    def rate_bound(self, process: ForwardProcess, xt: Tensor) -> Tensor:
        if not hasattr(process, "reverse_rate_bound_terms"):
            raise ValueError(f"sampler {self.name!r} needs a process with reverse_rate_bound_terms (uniform); "
                             f"got {process.name!r} (use 'exact' for masking and blackout)")
        c_alpha, c_noise = process.reverse_rate_bound_terms(xt)
        return torch.stack([c_alpha.double(), c_noise.double()], dim=1)
