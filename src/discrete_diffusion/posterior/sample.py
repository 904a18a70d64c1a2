"""One entry point for posterior sampling: ``posterior_sample(method, ...)`` picks the method by name and refuses
combinations (method x process x operator x sampler) that do not apply, with one-line ValueErrors.

Methods (one file each, the math in its docstring):

- ``exact-guidance`` (exact_guidance.py): exact at gamma = 1, for a prior given as a table (oracle); tau-leaping,
  euler, and exact simulation for masking. Every operator.
- ``dps`` (dps.py): the DPS-style approximation, biased; any denoiser with x0 log-probs; tau-leaping, euler.
- ``infill`` (inpaint.py): the inpaint measurement under masking, observed sites revealed from the start; exact,
  every masking sampler.
- ``split-gibbs`` (split_gibbs.py): split Gibbs sampling (SGDD), annealed; any prior; its likelihood step exact for
  operators that factorise over sites and for block sums and parity with disjoint groups, Metropolis-Hastings for the
  rest (parity with shared sites, callables: slow to mix under hard coupled constraints; one-site proposals refused
  there where the operator is known to be hard); masking: only operators that factorise over sites. Its prior step
  is any sampler started mid-way (or, for an oracle, the exact joint step).

Under masking, guided chains (exact-guidance, dps) and infill start with every unobserved site MASK (common.py), and
every method warns (RuntimeWarning, with the count) when some of its samples contradict y.

Every method function has the signature ``fn(sampler, process, denoiser, schedule, operator, y, shape, *,
<its options>, generator, device, callback) -> (B, *sites) long``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule
from .dps import dps_sample
from .exact_guidance import exact_guidance_sample
from .inpaint import masking_inpaint_sample
from .measurement import MeasurementOperator
from .split_gibbs import split_gibbs_method

__all__ = ["POSTERIOR_METHODS", "posterior_sample", "register_method", "method_options"]

#: Method name -> sampling function (``register_method`` adds more).
POSTERIOR_METHODS: dict[str, Callable[..., Tensor]] = {
    "exact-guidance": exact_guidance_sample,
    "dps": dps_sample,
    "infill": masking_inpaint_sample,
    "split-gibbs": split_gibbs_method,
}

_COMMON = ("sampler", "process", "denoiser", "schedule", "operator", "y", "shape", "generator", "device", "callback")


def register_method(name: str, fn: Callable[..., Tensor]) -> None:
    """Make ``fn`` (the signature in the module doc) available as ``posterior_sample(name, ...)``."""
    if not callable(fn):
        raise ValueError(f"posterior method {name!r} must be a function, got {type(fn).__name__}")
    POSTERIOR_METHODS[name] = fn


def method_options(method: str) -> tuple[str, ...]:
    """The method-specific keyword options of ``method`` (for example gamma for exact-guidance and dps)."""
    fn = _method(method)
    return tuple(p for p in inspect.signature(fn).parameters if p not in _COMMON)


def _method(method: str) -> Callable[..., Tensor]:
    if method not in POSTERIOR_METHODS:
        raise ValueError(f"unknown posterior method {method!r}; valid methods: {', '.join(sorted(POSTERIOR_METHODS))}")
    return POSTERIOR_METHODS[method]


def posterior_sample(method: str, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                     operator: MeasurementOperator, y: Tensor, shape: tuple[int, ...], sampler: Sampler,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     callback: ProgressCallback | None = None, **options: Any) -> Tensor:
    """Samples (B, *sites) long of the posterior p(x0 | y) ∝ p(x0) p(y | x0), the prior given by (``process``,
    ``denoiser``), the measurement by ``operator`` and ``y`` (B or 1, *y_sites), drawn by ``method`` with
    ``sampler``; ``options`` are the method's own (``method_options``)."""
    fn = _method(method)
    allowed = method_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"posterior method {method!r} takes the options {list(allowed)}, got {unknown}")
    return fn(sampler, process, denoiser, schedule, operator, y, tuple(shape), generator=generator, device=device,
              callback=callback, **options)
