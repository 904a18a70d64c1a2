"""Posterior sampling (issue 13): samples of x0 given a measurement y, p(x0 | y) ∝ p(x0) p(y | x0), with a diffusion
model (trained, or an exact table) as the prior.

- ``measurement``: the ``MeasurementOperator`` contract; ``operators``: inpaint, channel, thinning, downsample,
  parity, callable (``build_operator`` by name).
- ``exact_guidance``: exact posterior guidance on the reverse rates (oracle prior), exact at gamma = 1.
- ``dps``: the DPS-style approximation (the likelihood under the factorised prediction), biased.
- ``inpaint``: inpainting under masking by revealing the observed sites (exact).
- ``split_gibbs``: split Gibbs sampling (SGDD): prior steps by the diffusion model from level t, likelihood steps exact
  per site or Metropolis-Hastings, t annealed towards 0 (``oracle_prior``: the exact prior step of a table).
- ``sample``: ``posterior_sample(method, ...)``, one entry point with clear errors for combinations that do not apply.
"""

from __future__ import annotations

from .dps import DPSLikelihood, dps_sample, factorised_log_likelihood
from .exact_guidance import ExactMeasurementLikelihood, exact_guidance_sample
from .inpaint import masking_inpaint_sample
from .measurement import MeasurementOperator
from .operators import (
    OPERATORS,
    UNOBSERVED,
    CallableOperator,
    ChannelOperator,
    DownsampleOperator,
    InpaintOperator,
    ParityOperator,
    ThinningOperator,
    build_operator,
    inpaint_observation,
)
from .oracle_prior import OraclePriorStep
from .sample import POSTERIOR_METHODS, method_options, posterior_sample, register_method
from .split_gibbs import LikelihoodStep, SplitGibbsResult, split_gibbs_method, split_gibbs_sample

__all__ = ["MeasurementOperator", "OPERATORS", "UNOBSERVED", "CallableOperator", "ChannelOperator",
           "DownsampleOperator", "InpaintOperator", "ParityOperator", "ThinningOperator", "build_operator",
           "inpaint_observation", "DPSLikelihood", "dps_sample", "factorised_log_likelihood",
           "ExactMeasurementLikelihood", "exact_guidance_sample", "masking_inpaint_sample", "POSTERIOR_METHODS",
           "method_options", "posterior_sample", "register_method", "OraclePriorStep", "LikelihoodStep",
           "SplitGibbsResult", "split_gibbs_method", "split_gibbs_sample"]
