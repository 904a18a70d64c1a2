"""Infilling (inpainting): sample the unknown sites given known values at some sites.

References: Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024 (masked infilling);
Song et al., "Score-Based Generative Modeling through SDEs", 2021, and Lugmayr et al., "RePaint", 2022 (the
replacement method: overwrite the known sites with a forward-noised copy at every step).

``known``: (B, *sites) bool, ``values``: (B, *sites) long (read only where known, in 0..K-1).

- masking, exact: the forward process acts independently per site and a revealed site stays revealed, so starting
  the reverse chain from x_1 with the known sites unmasked and the others MASK, with an exact denoiser, samples the
  exact conditional pi(x_unknown | x_known). Works with every sampler, exact simulation included. The unknown
  sites start all MASK rather than from the prior, whose few revealed values (probability alpha(1), uniform) are
  not draws of the conditional and can contradict the known values (an all-MASK site carries no information).
- every other process, approximate ("replacement"): after each grid step to level s, the known sites are
  overwritten by a fresh draw x_s^known ~ q_s(. | values). The unknown sites then see known sites distributed as
  the forward marginal rather than as the reverse chain's coupling with them, so the result is biased even with
  an exact denoiser; docs/guidance.md gives the bias measured on the oracle (uniform process). Grid samplers only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from ..processes.masking import MaskingProcess
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule


def check_infill(process: ForwardProcess, shape: tuple[int, ...], known: Tensor,
                 values: Tensor) -> tuple[Tensor, Tensor]:
    """(known bool, values long) validated against the sample shape (B, *sites) and the data values 0..K-1 at the
    known sites; ValueError with one line saying what was wrong."""
    known, values = torch.as_tensor(known), torch.as_tensor(values)
    if tuple(known.shape) != tuple(shape) or tuple(values.shape) != tuple(shape):
        raise ValueError(f"infill: the mask {tuple(known.shape)} and the known values {tuple(values.shape)} must both "
                         f"have the sample shape {tuple(shape)}")
    if known.dtype != torch.bool:
        if known.is_floating_point() or not bool(((known == 0) | (known == 1)).all()):
            raise ValueError("infill: the mask must be boolean (or 0/1 integers): True where the value is known")
        known = known.bool()
    if values.is_floating_point() or values.dtype == torch.bool:
        raise ValueError(f"infill: the known values must be integers, got {values.dtype}")
    values = values.long()
    bad = known & ((values < 0) | (values >= process.num_states))
    if bool(bad.any()):
        raise ValueError(f"infill: known values must lie in 0..{process.num_states - 1}, got {int(values[bad][0])}")
    return known, values.where(known, torch.zeros_like(values))


def impose_known(process: ForwardProcess, x: Tensor, known: Tensor, values: Tensor, lam: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """x with the known sites set: to the values themselves for masking (or at lam = +inf), else to a draw of
    q(. | values) at noise level lam (replacement). (B, *sites) long."""
    if isinstance(process, MaskingProcess) or lam == float("inf"):
        return torch.where(known, values, x)
    lam_rows = torch.full((x.shape[0],), float(lam), dtype=torch.float64, device=x.device)
    return torch.where(known, process.sample_marginal(values, lam_rows, generator), x)


def _start_from(process: ForwardProcess, known: Tensor, values: Tensor) -> ForwardProcess:
    """The same process (a subclass instance sharing its state) whose prior draw has the known sites revealed and,
    for masking, every other site MASK (module doc)."""
    base = type(process)
    masking = isinstance(process, MaskingProcess)

    class _KnownStart(base):  # type: ignore[misc, valid-type]
        def sample_prior(self, shape, lam, generator=None, device="cpu"):
            if masking:
                x = torch.full(tuple(shape), self.mask_index, dtype=torch.long, device=device)
            else:
                x = base.sample_prior(self, shape, lam, generator, device)
            return torch.where(known.to(x.device), values.to(x.device), x)

    proxy = object.__new__(_KnownStart)
    proxy.__dict__ = process.__dict__
    return proxy


@torch.no_grad()
def infill_sample(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                  known: Tensor, values: Tensor, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None, callback: ProgressCallback | None = None) -> Tensor:
    """Samples (B, *sites) long that keep ``values`` at the ``known`` sites (see the module docstring): exact for
    masking with any sampler, replacement for the other processes with a grid sampler (a ValueError otherwise)."""
    device = sampler.sampling_device(denoiser, generator, device)
    known, values = check_infill(process, tuple(known.shape), known, values)
    known, values = known.to(device), values.to(device)
    masking = isinstance(process, MaskingProcess)
    if not sampler.uses_steps:
        if not masking:
            raise ValueError(f"infilling with process {process.name!r} is the replacement method, which needs a grid "
                             f"sampler; {sampler.name!r} has no grid (use e.g. bridge or tau-leaping)")
        x = sampler.sample(_start_from(process, known, values), denoiser, schedule, tuple(known.shape), generator,
                           device, callback)
        return torch.where(known, values, x)
    start = _start_from(process, known, values) if masking else process
    return sampler.sample(start, denoiser, schedule, tuple(known.shape), generator, device, callback,
                          constrain=lambda x, lam: impose_known(process, x, known, values, lam, generator))
