"""The sampler base: owns the time grid, the loop from t = 1 to t = 0 and the progress callback.

A sampler subclass implements one ``step`` from noise level lam_t to lam_s > lam_t (lam = logit(alpha)),
calling only the process's methods (a sampler never re-derives a rate). The grid is uniform in t and
mapped through the schedule, so the Blackout schedule gives the paper's grid (uniform in logit(alpha)).
With ``final_denoise`` the last step goes to alpha = 1 (lam = +inf): every remaining unit of noise is
removed by drawing x0 from the denoiser.

Options every sampler honours (the base wraps the denoiser, so subclasses see their effect without code):
- ``temperature``, ``top_k`` and ``top_p``: applied to the predicted log p(x0 | x_t) before any sampling or
  rate (``transform_x0_log_probs``); a mean-only Blackout prediction cannot be transformed and raises, and a
  Blackout "logits" prediction loses its mean (it would no longer match), so only samplers that draw x0
  (bridge) accept it there.
- ``grid``: the name of a schedule whose alpha(t) places the steps instead of the run's schedule (e.g.
  "cosine", "log-linear", "blackout": the Blackout paper's grid, uniform in logit alpha).
- ``cache``: reuse the previous prediction of a batch row while its x_t is unchanged, calling the network on
  the changed rows only. Exact only for processes whose posterior does not depend on the noise level at fixed
  x_t (masking; other processes raise) and a denoiser that ignores the noise level (the exact oracle, or a
  transformer trained with ``model.time_conditioning=false``). A time-conditioned ``NetworkDenoiser`` feeds lam to
  its backbone, so with such a network a cached prediction is the one made at an earlier level and the samples
  differ from the uncached run: an approximation that saves calls. A denoiser with ``rows(index)`` (block
  diffusion's context denoiser) is restricted to the changed rows before the call.
- ``start=(x_t, t)``: ``sample`` denoises a given state x_t at level t of the run's schedule (lam =
  logit(alpha(t))) instead of a prior draw at t = 1, over the grid from t down to 0 (``time_grid(schedule,
  t_start)``): with an exact denoiser it draws from p(x0 | x_t), the prior step of split Gibbs.
- after ``sample``, ``network_calls`` (batched denoiser calls) and ``network_evaluations`` (rows evaluated,
  summed over calls) report the cost; ``nfe`` = network_evaluations / batch size.

The leap rules (``processes.base.jump_from_rates`` and the processes' ``leap`` hooks) serve every rate-based
sampler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor

from ..config import MAX_SAMPLER_STEPS
from ..denoiser import Denoiser, denoiser_device
from ..processes.base import ForwardProcess, Prediction
from ..schedules import SCHEDULES, Schedule, build_schedule

#: callback(step, num_steps, x) after each step; step counts from 1.
ProgressCallback = Callable[[int, int, Tensor], None]


#: The multi-jump rules of the leaping samplers (tau-leaping, theta methods); "euler" is the Euler sampler's.
MULTI_JUMP_RULES = ("reject", "first")


#: Rows x values of float64 work that ``transform_x0_log_probs`` holds at once (2^22 values: 32 MiB).
TRANSFORM_CHUNK = 1 << 22


def transform_x0_log_probs(log_probs: Tensor, temperature: float = 1.0, top_p: float = 1.0,
                           top_k: int = 0) -> Tensor:
    """Temperature, then top-k, then nucleus (top-p) on log p(x0 | x_t) (..., K): renormalised log-probs in the
    input's dtype (..., K).

    Temperature divides the log-probs (-inf stays -inf, so SUBS's copied sites stay copied). Top-k (k >= 1;
    0 = off) keeps the k most probable values (ties broken by index order of ``torch.topk``). Top-p keeps the
    smallest set of most probable values whose mass reaches top_p (always at least the most probable one).
    The arithmetic is float64, a bounded block of rows at a time (``TRANSFORM_CHUNK`` values), so a float32
    (B, L, K) input never has a (B, L, K) float64 copy. Rows with a single finite value (a point mass, such as
    SUBS's unmasked sites) are fixed points of all three and are copied without work."""
    if temperature == 1.0 and top_p >= 1.0 and (top_k <= 0 or top_k >= log_probs.shape[-1]):
        return log_probs
    k = log_probs.shape[-1]
    rows = log_probs.reshape(-1, k)
    out = rows.clone()
    active = (torch.isfinite(rows).sum(-1) > 1).nonzero()[:, 0]           # rows that the transform can change
    step = max(1, TRANSFORM_CHUNK // k)
    for start in range(0, active.shape[0], step):
        block = active[start:start + step]
        out[block] = _transform_rows(rows[block].double(), temperature, top_p, top_k).to(out.dtype)
    return out.reshape(log_probs.shape)


def _transform_rows(out: Tensor, temperature: float, top_p: float, top_k: int) -> Tensor:
    """transform_x0_log_probs on a float64 block (n, K)."""
    if temperature != 1.0:
        out = torch.log_softmax(out / temperature, dim=-1)
    if 0 < top_k < out.shape[-1]:
        keep = torch.zeros_like(out, dtype=torch.bool).scatter_(-1, out.topk(top_k, dim=-1).indices, True)
        out = torch.log_softmax(out.masked_fill(~keep, -torch.inf), dim=-1)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(out, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_lp.exp(), dim=-1) - sorted_lp.exp()
        keep_sorted = mass_before < top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        out = torch.log_softmax(torch.where(keep, out, torch.full_like(out, -torch.inf)), dim=-1)
    return out


def check_start(process: ForwardProcess, shape: tuple[int, ...], start: tuple[Tensor, float],
                device: torch.device) -> tuple[Tensor, float]:
    """A sampler's ``start=(x_t, t)`` validated: x_t of the sample shape with integer values in
    0..num_values-1 (MASK included for masking), t a time in (0, 1]. Returns (x_t long on ``device``, t)."""
    if not isinstance(start, (tuple, list)) or len(start) != 2:
        raise ValueError(f"start must be a pair (x_t, t), got {type(start).__name__}")
    x, t = start
    x = torch.as_tensor(x)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"start: x_t has shape {tuple(x.shape)}, expected the sample shape {tuple(shape)}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"start: x_t must hold integer states, got {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= process.num_values):
        raise ValueError(f"start: x_t values must lie in 0..{process.num_values - 1} for process {process.name!r}, "
                         f"got {int(x.min())}..{int(x.max())}")
    if isinstance(t, Tensor) and t.numel() == 1 and t.is_floating_point():
        t = float(t)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) <= 1.0:
        raise ValueError(f"start: t must be a number in (0, 1] (the time of x_t in the run's schedule), got {t!r}")
    return x.to(device=device, dtype=torch.long), float(t)


#: Largest value of a size option that only has to reach a size of the data (top_k, block_size, refresh_every):
#: beyond the data's size it changes nothing (k >= K keeps every value, a block of L >= S sites is the whole
#: sequence, a period longer than the decode never comes round); the bound keeps such values in int64 for torch.
#: The same bound as the CLI's count flags (``cli.common.MAX_COUNT``).
MAX_OPTION_SIZE = 10**9


def check_size(value: object, option: str, who: str, low: int, high: int, note: str = "",
               integral_floats: bool = False) -> int:
    """``value`` of an integer size or count option as an int in ``low..high``: a one-line ValueError naming
    ``who``, the option, the value and the range otherwise (``note``, e.g. " (0 = off)", follows the range).
    ``integral_floats``: 4.0 counts as 4 (bool never counts)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif integral_floats and isinstance(value, float) and value.is_integer():
        number = int(value)
    if number is None or not low <= number <= high:
        raise ValueError(f"{who}: {option} must be an integer in {low}..{high}{note}, got {value!r}")
    return number


def check_top_k(top_k: int, who: str) -> int:
    """top_k as an int in 0..MAX_OPTION_SIZE (0 = off; k >= K keeps every value); a ValueError naming ``who``
    otherwise."""
    return check_size(top_k, "top_k", who, 0, MAX_OPTION_SIZE, " (0 = off)", integral_floats=True)


def check_num_steps(num_steps: Any, who: str) -> int:
    """num_steps as an int in 1..MAX_SAMPLER_STEPS (the bound of sample.steps and --steps: every sampler builds a
    grid of num_steps + 1 levels, exact ones too); anything ``int()`` reads counts (2.5 -> 2), a ValueError naming
    ``who`` otherwise."""
    try:
        steps = int(num_steps)
    except (TypeError, ValueError, OverflowError):      # "abc", nan, inf: refused by name below
        steps = num_steps
    return check_size(steps, "num_steps", who, 1, MAX_SAMPLER_STEPS)


class _CountingDenoiser:
    """Counts batched calls and evaluated rows of the wrapped denoiser."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser, self.calls, self.rows = denoiser, 0, 0

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        self.calls += 1
        self.rows += int(xt.shape[0])
        return self.denoiser(xt, lam)

    def call_rows(self, xt: Tensor, lam: Tensor, rows: Tensor) -> Prediction:
        """The denoiser on batch rows ``rows`` of the full batch (x_t, lam: those rows). A denoiser whose rows carry
        their own state (block diffusion's context: ``rows(index)`` gives it restricted) is restricted first."""
        restrict = getattr(self.denoiser, "rows", None)
        self.calls += 1
        self.rows += int(xt.shape[0])
        return (self.denoiser if restrict is None else restrict(rows))(xt, lam)


def _take(value: Tensor | None, rows: Tensor) -> Tensor | None:
    return None if value is None else value[rows]


class _CachingDenoiser:
    """Reuses each row's last prediction while its x_t is unchanged; calls the network on changed rows only."""

    def __init__(self, denoiser: _CountingDenoiser) -> None:
        self.denoiser = denoiser
        self.last_x: Tensor | None = None
        self.last: Prediction | None = None

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        if self.last_x is None or self.last is None or self.last_x.shape != xt.shape:
            self.last_x, self.last = xt.clone(), self.denoiser(xt, lam)
            return self.last
        changed = (xt != self.last_x).reshape(xt.shape[0], -1).any(1)
        if bool(changed.any()):
            rows = changed.nonzero()[:, 0]
            fresh = self.denoiser.call_rows(xt[rows], lam[rows], rows)
            merged: list[Tensor | None] = []
            for old, new in ((self.last.x0_log_probs, fresh.x0_log_probs),
                             (self.last.mean_missing, fresh.mean_missing)):
                if old is None or new is None:
                    merged.append(None)
                else:
                    old = old.clone()
                    old[rows] = new.to(old.dtype)
                    merged.append(old)
            self.last = Prediction(*merged)
            self.last_x = xt.clone()
        return self.last


class _TransformedDenoiser:
    """Applies temperature / top-k / top-p to every prediction's x0 log-probs."""

    def __init__(self, denoiser: Denoiser, temperature: float, top_p: float, top_k: int = 0) -> None:
        self.denoiser, self.temperature, self.top_p, self.top_k = denoiser, temperature, top_p, top_k

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        prediction = self.denoiser(xt, lam)
        if prediction.x0_log_probs is None:
            raise ValueError("temperature / top_k / top_p need a prediction with x0 log-probs (not a mean-only model)")
        # a count process's mean would no longer match the transformed probabilities: drop it
        return Prediction(x0_log_probs=transform_x0_log_probs(prediction.x0_log_probs, self.temperature, self.top_p,
                                                                    self.top_k))


class Sampler(ABC):
    """Base of every sampler. ``num_steps`` is the number of grid intervals (network calls for most)."""

    name: str = ""
    #: registry names of the processes this sampler applies to; None means every process.
    supported_processes: tuple[str, ...] | None = None
    #: whether ``num_steps`` changes what the sampler does (False for exact simulation, which has no grid)
    uses_steps: bool = True

    @classmethod
    def supports(cls, process: ForwardProcess | str) -> bool:
        """Whether the sampler applies to a process (an instance or a registry name)."""
        name = process if isinstance(process, str) else process.name
        return cls.supported_processes is None or name in cls.supported_processes

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, temperature: float = 1.0,
                 top_p: float = 1.0, cache: bool = False, grid: str | None = None, top_k: int = 0) -> None:
        self.num_steps = check_num_steps(num_steps, type(self).__name__)
        if not float(temperature) > 0:
            raise ValueError(f"{type(self).__name__}: temperature must be > 0, got {temperature}")
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"{type(self).__name__}: top_p must lie in (0, 1], got {top_p}")
        self.final_denoise = bool(final_denoise)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = check_top_k(top_k, type(self).__name__)
        self.cache = bool(cache)
        if grid is not None and grid not in SCHEDULES:
            raise ValueError(f"{type(self).__name__}: unknown grid {grid!r}; valid grids (schedules): "
                             f"{', '.join(sorted(SCHEDULES))}")
        self.grid = grid
        self.network_calls = 0
        self.network_evaluations = 0
        self.nfe = 0.0
        self._counter: _CountingDenoiser | None = None
        self._batch = 1

    def wrap_denoiser(self, process: ForwardProcess, denoiser: Denoiser, batch: int) -> Denoiser:
        """The denoiser as the steps see it: counted, cached (option) and transformed (options)."""
        if self.cache and process.posterior_depends_on_noise_level:
            raise ValueError(f"cache=True reuses predictions across noise levels, which is exact only when p(x0 | "
                             f"x_t) does not depend on the noise level (masking); process {process.name!r} does")
        self._counter = _CountingDenoiser(denoiser)
        self._batch = max(int(batch), 1)
        self.network_calls = self.network_evaluations = 0
        self.nfe = 0.0
        wrapped: Denoiser = self._counter
        if self.cache:
            wrapped = _CachingDenoiser(self._counter)
        if self.temperature != 1.0 or self.top_p < 1.0 or self.top_k > 0:
            wrapped = _TransformedDenoiser(wrapped, self.temperature, self.top_p, self.top_k)
        return wrapped

    def _record_cost(self) -> None:
        if self._counter is not None:
            self.network_calls = self._counter.calls
            self.network_evaluations = self._counter.rows
            self.nfe = self.network_evaluations / self._batch

    def time_grid(self, schedule: Schedule, t_start: float | None = None) -> Tensor:
        """lam_k = logit(alpha(t_k)) for t_k = t_start (1 - k / num_steps), k = 0..num_steps (t_start = 1 by
        default), float64 and increasing; the last entry is +inf when final_denoise is set (or alpha(0) = 1). With the
        ``grid`` option the alpha(t) of that schedule (with its default settings) replaces the run's: the denoiser is
        conditioned on logit alpha, not on t, so any grid works with a trained model. A given ``t_start`` (a start
        from a state, see ``sample``) is a time of the run's schedule: the grid starts exactly at
        lam = logit(schedule.alpha(t_start)) and, with the ``grid`` option, runs from that schedule's time of the
        same alpha down to 0."""
        lam_start = None
        if t_start is None:
            t_start = 1.0
        else:
            alpha_start = schedule.alpha(torch.tensor(float(t_start), dtype=torch.float64))
            lam_start = float(torch.logit(alpha_start.clamp(0.0, 1.0)))
        if self.grid is not None:
            schedule = build_schedule(self.grid)
            if lam_start is not None:
                t_start = float(schedule.time_of_alpha(alpha_start))
        t = torch.linspace(float(t_start), 0.0, self.num_steps + 1, dtype=torch.float64)
        lam = torch.logit(schedule.alpha(t).clamp(0.0, 1.0))
        if lam_start is not None:     # exactly the start level; later points never below it (a grid clamped at t = 0)
            lam[0] = lam_start
            lam[1:] = torch.maximum(lam[1:], lam[:1])
        if self.final_denoise:
            lam[-1] = torch.inf
        return lam

    @staticmethod
    def sampling_device(denoiser: Denoiser, generator: torch.Generator | None,
                        device: torch.device | str | None) -> torch.device:
        """``device`` when given, else the denoiser's (its parameters' device for a ``NetworkDenoiser``, else the
        generator's, else CPU: ``denoiser_device``). ValueError when the generator lives on another device type."""
        device = denoiser_device(denoiser, generator) if device is None else torch.device(device)
        if generator is not None and generator.device.type != device.type:
            raise ValueError(f"the generator is on {generator.device} but sampling runs on {device}: create it with "
                             f"torch.Generator(device={str(device)!r})")
        return device

    @torch.no_grad()
    def sample(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               callback: ProgressCallback | None = None,
               constrain: Callable[[Tensor, float], Tensor] | None = None, *,
               start: tuple[Tensor, float] | None = None) -> Tensor:
        """Generate samples of shape (B, *sites) starting from the process's prior at t = 1, on ``device`` (default:
        the denoiser's device, see ``sampling_device``). ``constrain(x, lam)``, if given, replaces the state after
        the prior draw and after every step (lam: the grid's noise level there); infilling by replacement uses it
        (guidance/infill.py). ``start=(x_t, t)``: start from the given x_t (B, *sites) long at time t in (0, 1] of
        ``schedule`` instead of the prior (``check_start``), over ``time_grid(schedule, t)``."""
        device = self.sampling_device(denoiser, generator, device)
        if start is None:
            grid = self.time_grid(schedule)
            x = process.sample_prior(tuple(shape), float(grid[0]), generator, device=device)
        else:
            x, t_start = check_start(process, shape, start, device)
            grid = self.time_grid(schedule, t_start)
        if constrain is not None:
            x = constrain(x, float(grid[0]))
        batch = x.shape[0]
        denoiser = self.wrap_denoiser(process, denoiser, batch)
        self.begin(x)
        for k in range(self.num_steps):
            lam_t = torch.full((batch,), float(grid[k]), device=device)
            lam_s = torch.full((batch,), float(grid[k + 1]), device=device)
            x = self.step(process, denoiser, x, lam_t, lam_s, generator)
            if constrain is not None:
                x = constrain(x, float(grid[k + 1]))
            self._record_cost()
            if callback is not None:
                callback(k + 1, self.num_steps, x)
        return x

    def begin(self, x: Tensor) -> None:
        """Called with the prior draw (B, *sites) before the first step: samplers that carry state across
        steps reset it here."""

    @abstractmethod
    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        """One reverse step x_t -> x_s, lam_s > lam_t (both (B,)). Returns (B, *sites) long."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments; the options are listed only when they differ from their defaults."""
        out = {"name": self.name, "num_steps": self.num_steps, "final_denoise": self.final_denoise}
        if self.temperature != 1.0:
            out["temperature"] = self.temperature
        if self.top_p != 1.0:
            out["top_p"] = self.top_p
        if self.top_k:
            out["top_k"] = self.top_k
        if self.cache:
            out["cache"] = True
        if self.grid is not None:
            out["grid"] = self.grid
        return out
