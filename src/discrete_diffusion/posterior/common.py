"""Helpers shared by the posterior samplers that act on the reverse rates (exact_guidance.py, dps.py): input checks,
the per-row observation index, the likelihood of every configuration of a small state space, the run of a guided
sampler (with exact simulation grouped by distinct observation), and the check that no returned sample contradicts y.

Start of a posterior chain under masking: all sites MASK at t = 1 (``masked_start``), not the prior's draw. The
masking prior reveals each site with probability alpha(1) (1e-4 on the log-linear schedule) as a uniform value; a
revealed value that y rules out makes p_t(y | x_t) = 0, every guided rate 0, and the sample a prior draw that
contradicts y. An all-MASK x_1 carries no information about x0 (q_1(MASK^D | x0) is the same for every x0), so the
exact posterior chain started there still samples p(x0 | y) exactly."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..guidance.classifier import ClassifierGuidance, check_guided_sampler
from ..oracle import all_configurations
from ..processes.base import ForwardProcess
from ..processes.masking import MaskingProcess
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule
from .measurement import MeasurementOperator

#: Rows x configurations of float64 work held at once when enumerating.
ENUM_CHUNK = 1 << 22


def check_posterior_inputs(process: ForwardProcess, operator: MeasurementOperator, y: Tensor,
                           shape: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """(y checked by the operator, the site shape) for samples of ``shape`` (B, *sites); one-line ValueErrors."""
    if not isinstance(operator, MeasurementOperator):
        raise ValueError(f"posterior sampling needs a MeasurementOperator, got {type(operator).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"the sample shape must be (B, *sites) with every size >= 1, got {shape}")
    if operator.num_states != process.num_states:
        raise ValueError(f"the measurement has K = {operator.num_states} values per site but process "
                         f"{process.name!r} has K = {process.num_states}")
    y = operator.check_y(y, shape[1:])
    if y.shape[0] not in (1, shape[0]):
        raise ValueError(f"y has {y.shape[0]} rows but {shape[0]} samples are asked for: give one observation per "
                         "sample or one shared (batch 1)")
    return y, shape[1:]


def observation_rows(n: int, y_rows: int, rows: Tensor | None, device: torch.device) -> Tensor:
    """The row of y that each of n evaluated states belongs to: (n,) long (all 0 for a shared y)."""
    if y_rows == 1:
        return torch.zeros(n, dtype=torch.long, device=device)
    if rows is None:
        if n != y_rows:
            raise ValueError(f"y has {y_rows} rows (one per sample) but the sampler evaluated {n} states without "
                             "saying which sample each belongs to; use tau-leaping or euler, which evaluate every row")
        return torch.arange(n, device=device)
    rows = rows.to(device).long()
    if rows.numel() and int(rows.max()) >= y_rows:
        raise ValueError(f"row {int(rows.max())} asked of a y with {y_rows} rows")
    return rows


def configuration_log_likelihood(operator: MeasurementOperator, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
    """log p(y_r | x0 = j) for every row r of y and every configuration j of all_configurations(K, D), D the number
    of sites, in chunks: (B_y, K^D) float64."""
    k, sites = operator.num_states, math.prod(site_shape)
    configs = all_configurations(k, sites).to(y.device).reshape((-1, *site_shape))
    count = configs.shape[0]
    step = max(1, ENUM_CHUNK // (count * sites))
    out = []
    for start in range(0, y.shape[0], step):
        chunk = y[start:start + step]
        x0 = configs.repeat((chunk.shape[0],) + (1,) * len(site_shape))
        out.append(operator.log_likelihood(x0, chunk.repeat_interleave(count, 0)).reshape(chunk.shape[0], count))
    return torch.cat(out).double()


def check_rate_sampler(sampler: Sampler, process: ForwardProcess, method: str, exact_ok: bool) -> None:
    """ValueError unless ``sampler`` consumes guided rates for ``process`` (tau-leaping, euler; exact simulation on
    masking when ``exact_ok``)."""
    name = getattr(sampler, "name", type(sampler).__name__)
    allowed = ["tau-leaping", "euler"] + (["exact"] if exact_ok and isinstance(process, MaskingProcess) else [])
    if name not in allowed:
        raise ValueError(f"posterior method {method!r} acts on the reverse rates: sampler {name!r} does not use them "
                         f"for process {process.name!r}; use one of {allowed}")
    check_guided_sampler(sampler, process)


@torch.no_grad()
def run_guided(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
               shape: tuple[int, ...], y: Tensor, make_guidance: Callable[[Tensor], ClassifierGuidance],
               generator: torch.Generator | None, device: torch.device | str | None,
               callback: ProgressCallback | None) -> Tensor:
    """Samples (B, *sites) of ``sampler`` on the guidance that ``make_guidance(y)`` builds. Grid samplers evaluate
    every row at each call, so one run takes per-sample y; exact simulation evaluates a subset of rows per event
    (which the per-row context cannot follow), so it runs once per distinct observation."""
    device = sampler.sampling_device(denoiser, generator, device)
    y = y.to(device)
    if sampler.uses_steps or y.shape[0] == 1:
        guidance = make_guidance(y)
        return sampler.sample(guidance.process, guidance.denoiser(denoiser), schedule, shape, generator, device,
                              callback, start=masked_start(process, shape, device))
    distinct, group = torch.unique(y.reshape(y.shape[0], -1), dim=0, return_inverse=True)
    out = torch.empty(shape, dtype=torch.long, device=device)
    for g in range(distinct.shape[0]):
        rows = (group == g).nonzero()[:, 0]
        guidance = make_guidance(y[rows[:1]])
        part = (rows.shape[0], *shape[1:])
        out[rows] = sampler.sample(guidance.process, guidance.denoiser(denoiser), schedule, part, generator, device,
                                   callback, start=masked_start(process, part, device))
    return out


def masked_start(process: ForwardProcess, shape: tuple[int, ...], device: torch.device | str) -> \
        tuple[Tensor, float] | None:
    """For masking, ``start=(x_1, 1.0)`` with every site MASK (module doc); None (the prior) otherwise."""
    if not isinstance(process, MaskingProcess):
        return None
    return torch.full(tuple(shape), process.mask_index, dtype=torch.long, device=device), 1.0


def warn_if_contradicting(operator: MeasurementOperator, y: Tensor, x0: Tensor, method: str) -> int:
    """Count the samples x0 (B, *sites) with p(y | x0) = 0 and say so (RuntimeWarning) when there are any: a
    posterior sample that contradicts a hard observation is never returned silently. Returns the count."""
    bad = int(torch.isneginf(operator.log_likelihood(x0, y.to(x0.device))).sum())
    if bad:
        warnings.warn(f"posterior method {method!r}: {bad} of {x0.shape[0]} samples contradict y (p(y | x0) = 0); "
                      f"see docs/posterior.md for when this happens (leaps past a hard constraint, too few "
                      f"iterations) and how to reduce it", RuntimeWarning, stacklevel=4)
    return bad
