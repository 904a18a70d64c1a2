"""Inpainting under masking diffusion: start the reverse chain with the observed sites unmasked (exact).

Reference: Sahoo et al., "Simple and Effective Masked Diffusion Language Models", NeurIPS 2024, and Shi et al.,
"Simplified and Generalized Masked Diffusion for Discrete Data", NeurIPS 2024 (the absorbing process; conditioning
by clamping revealed tokens); guidance/infill.py for the mechanics.

Math. Under masking a revealed site equals x0 and a mask carries no information, so p(x0 | x_t) = pi(x0 | the
revealed values of x_t). The posterior of the inpaint measurement is pi(x | y) = pi(x_unobserved | x_observed =
y_observed), and the reverse chain run with the observed sites revealed from the prior draw on is the reverse chain
of pi(x | y) under a forward process that never masks the observed sites: with an exact denoiser it samples
pi(x_unobserved | x_observed) exactly, with every masking sampler (grid or exact simulation). With a trained network
it is as good as the network's conditionals.

Other processes do not reveal values: their replacement infilling (guidance/infill.py) is biased, so this method
refuses them; use exact posterior guidance (oracle prior), the DPS-style approximation (biased) or split Gibbs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..guidance.infill import infill_sample
from ..processes.base import ForwardProcess
from ..processes.masking import MaskingProcess
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule
from .common import check_posterior_inputs
from .measurement import MeasurementOperator
from .operators import InpaintOperator

__all__ = ["masking_inpaint_sample"]


@torch.no_grad()
def masking_inpaint_sample(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                           operator: MeasurementOperator, y: Tensor, shape: tuple[int, ...],
                           generator: torch.Generator | None = None, device: torch.device | str | None = None,
                           callback: ProgressCallback | None = None) -> Tensor:
    """Samples (B, *sites) long of pi(x | y) for the inpaint measurement under masking, every sampler (exact; see
    the module doc). ``y`` (B or 1, *sites): the observed values, ``UNOBSERVED`` (-1) elsewhere."""
    if not isinstance(operator, InpaintOperator):
        raise ValueError(f"posterior method 'infill' takes the inpaint measurement only, got {operator.name!r}; use "
                         "exact-guidance (oracle prior), dps (biased) or split-gibbs")
    if not isinstance(process, MaskingProcess):
        raise ValueError(f"posterior method 'infill' is exact for masking only, got process {process.name!r} (its "
                         "replacement infilling is biased); use exact-guidance (oracle prior), dps (biased) or "
                         "split-gibbs")
    y, _ = check_posterior_inputs(process, operator, y, shape)
    y = y.expand(tuple(shape))
    known = y >= 0
    return infill_sample(sampler, process, denoiser, schedule, known, y.clamp_min(0), generator, device, callback)
