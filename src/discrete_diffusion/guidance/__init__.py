"""Guidance (DESIGN.md section 3): wrappers that act on p(x0 | x_t) or on the reverse rates and nothing else, so
every process works with every sampler.

- ``classifier_free``: classifier-free guidance (``ClassifierFreeDenoiser``), per process as docs/guidance.md says.
- ``infill``: sampling given known values at some sites (exact for masking, replacement otherwise).

Classifier / predictor guidance with a noise-conditioned classifier belongs here too (a further module).
"""

from __future__ import annotations

from .classifier_free import (
    ClassifierFreeDenoiser,
    GuidanceInterval,
    geometric_mean_rates,
    guide_mean,
    guide_prediction,
    guide_x0_log_probs,
)
from .infill import check_infill, impose_known, infill_sample

__all__ = ["ClassifierFreeDenoiser", "GuidanceInterval", "geometric_mean_rates", "guide_mean", "guide_prediction",
           "guide_x0_log_probs", "check_infill", "impose_known", "infill_sample"]
