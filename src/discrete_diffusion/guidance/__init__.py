"""Guidance (DESIGN.md section 3): wrappers that act on p(x0 | x_t) or on the reverse rates and nothing else, so
every process works with every sampler.

- ``classifier_free``: classifier-free guidance (``ClassifierFreeDenoiser``), per process as docs/guidance.md says.
- ``infill``: sampling given known values at some sites (exact for masking, replacement otherwise).
- ``classifier``: classifier (predictor) guidance on the reverse rates with a noise-conditioned classifier
  p_t(c | x_t) (``ClassifierGuidance``), exact at gamma = 1; ``classifier_train``: the ``NoisyClassifier`` network.
"""

from __future__ import annotations

from .classifier import (
    GUIDED_SAMPLERS,
    ClassifierGuidance,
    GuidedPrediction,
    GuidedProcess,
    check_guided_sampler,
    classifier_guided_sample,
)
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
           "guide_x0_log_probs", "check_infill", "impose_known", "infill_sample", "GUIDED_SAMPLERS",
           "ClassifierGuidance", "GuidedPrediction", "GuidedProcess", "check_guided_sampler",
           "classifier_guided_sample"]
