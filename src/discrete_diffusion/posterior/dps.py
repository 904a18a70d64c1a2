"""DPS-style posterior guidance: the noisy likelihood p_t(y | x_t) replaced by the likelihood under the denoiser's
factorised prediction. BIASED (a test shows it on a correlated table); exact for one site and for independent sites.

References: Chung, Kim, Mccann, Klasky, Ye, "Diffusion Posterior Sampling for General Noisy Inverse Problems", ICLR
2023 (the likelihood at the denoiser's estimate of x0, continuous data); Nisonoff et al., ICLR 2025 (predictor
guidance on CTMC rates, and its first-order form), into whose rates the approximation is plugged.

Math. The exact guidance (exact_guidance.py) needs p_t(y | x_t) = sum_x0 p(x0 | x_t) p(y | x0), the joint posterior
over all sites. A denoiser gives only the per-site marginals p(x0^d | x_t); DPS-style guidance uses

    p^_t(y | x_t) = sum_x0 prod_d p(x0^d | x_t) p(y | x0)          (x0 drawn site-independently from the prediction)

in the guided rates R(x -> x') [p^_t(y | x') / p^_t(y | x)]^gamma (gamma = 1 by default). It is exact when the
sites of x0 are independent given x_t: always for D = 1, and for a prior that is a product over sites. On a
correlated prior it ignores the correlations the measurement propagates between sites, and its samples do not
follow pi(x0 | y). Measured on the test table (K = 3, D = 4, neighbours strongly correlated; tau-leaping, 64 steps,
4000 samples; exact guidance with the same sampler in brackets, Monte-Carlo floor after the slash): block sums of
pairs, uniform 0.34 (0.018) / 0.009, masking 0.27 (0.014) / 0.009; parity 0.13 (0.031) / 0.023; binomial thinning
0.069 (0.024) / 0.023; the symmetric channel 0.050 (0.022) / 0.031 (tests/test_posterior_guidance.py asserts it).

Evaluating p^_t(y | x_t) from the per-site laws p_d = exp(log p(x0^d | x_t)):
- factorising operators (inpaint, channel, thinning; ``site_log_likelihood`` l_d): prod_d sum_k p_d(k) exp(l_d(k));
- downsample and parity with disjoint groups: their ``factorised_log_likelihood`` (exact convolutions per block /
  group);
- anything else (parity with overlapping groups, a callable): exact enumeration of the K^D configurations when
  K^D <= ``ENUM_LIMIT``; else a Monte-Carlo mean of p(y | x0) over ``mc_samples`` draws of x0 from the prediction,
  made by inverse CDF from the same fixed uniforms at every evaluation (common random numbers, so ratios between
  neighbouring states are not swamped by sampling noise; log of a mean: a further, documented bias).
The final noise-removal draw is tilted per site where the operator factorises: x0^d ∝ p(x0^d | x_t) exp(gamma
l_d(x0^d)); otherwise by the move weights as in classifier guidance.

Cost (the ``exact`` form, the only one here): one denoiser evaluation per candidate move and step: per sample,
(K - 1) D rows for uniform and matrix processes, K per masked site for masking, D for Blackout (batched in chunks
of ``CANDIDATE_CHUNK`` rows), on top of the step's own call. Samplers: tau-leaping and euler (the network's
prediction may depend on the noise level, so no rate bound holds for exact simulation). A first-order (gradient)
form would need a denoiser differentiable in one_hot(x_t) and is not provided.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..guidance.classifier import ClassifierGuidance, GuidedProcess
from ..oracle import all_configurations
from ..processes.base import ForwardProcess, Prediction
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule
from .common import (
    ENUM_CHUNK,
    check_posterior_inputs,
    check_rate_sampler,
    configuration_log_likelihood,
    observation_rows,
    run_guided,
    warn_if_contradicting,
)
from .measurement import MeasurementOperator

__all__ = ["DPSLikelihood", "DPSGuidedProcess", "dps_sample", "factorised_log_likelihood", "ENUM_LIMIT"]

#: Largest K^D enumerated exactly for an operator without a closed form; beyond it, Monte Carlo.
ENUM_LIMIT = 4096


def factorised_log_likelihood(operator: MeasurementOperator, log_probs: Tensor, y: Tensor, rows: Tensor,
                              mc_samples: int = 64, seed: int = 0, cache: dict | None = None) -> Tensor:
    """log p^(y | x_t) = log E_{x0^d ~ p_d independently}[p(y | x0)] for per-site laws ``log_probs`` (n, *sites, K)
    and the rows ``rows`` (n,) of y (B_y, *y_sites) they belong to (see the module doc for the method used):
    (n,) float64. ``cache`` (a dict) keeps the enumeration table / uniforms between calls."""
    cache = {} if cache is None else cache
    log_probs = log_probs.double()
    n, site_shape, k = log_probs.shape[0], tuple(log_probs.shape[1:-1]), log_probs.shape[-1]
    if "site" not in cache:
        cache["site"] = operator.site_log_likelihood(y, site_shape)
    table = cache["site"]
    if table is not None:
        picked = table[rows] if table.shape[0] > 1 else table
        return torch.logsumexp(log_probs + picked.to(log_probs.device), -1).reshape(n, -1).sum(1)
    closed = getattr(operator, "factorised_log_likelihood", None)
    if closed is not None:
        out = closed(log_probs, y[rows] if y.shape[0] > 1 else y)
        if out is not None:
            return out
    sites = math.prod(site_shape)
    flat = log_probs.reshape(n, sites, k)
    out = torch.empty(n, dtype=torch.float64, device=log_probs.device)
    if k ** sites <= ENUM_LIMIT:
        if "enum" not in cache:
            cache["enum"] = (all_configurations(k, sites).to(log_probs.device),
                             configuration_log_likelihood(operator, y, site_shape).to(log_probs.device))
        configs, log_like = cache["enum"]                                           # (J, D), (B_y, J)
        step = max(1, ENUM_CHUNK // configs.shape[0])
        for start in range(0, n, step):
            part = slice(start, start + step)
            joint = log_like[rows[part]].clone()
            for d in range(sites):
                joint += flat[part, d][:, configs[:, d]]
            out[part] = torch.logsumexp(joint, 1)
        return out
    if "uniforms" not in cache:
        g = torch.Generator().manual_seed(seed)
        cache["uniforms"] = torch.rand(mc_samples, sites, generator=g, dtype=torch.float64).to(log_probs.device)
    u = cache["uniforms"]                                                            # (S, D)
    step = max(1, ENUM_CHUNK // (mc_samples * sites))
    for start in range(0, n, step):
        part = slice(start, start + step)
        cdf = flat[part].exp().cumsum(-1)                                            # (m, D, K)
        cdf = cdf / cdf[..., -1:]
        draws = (cdf[:, None] <= u[None, :, :, None]).sum(-1).clamp_max(k - 1)       # (m, S, D)
        m = draws.shape[0]
        x0 = draws.reshape((m * mc_samples, *site_shape))
        ys = y if y.shape[0] == 1 else y[rows[part]].repeat_interleave(mc_samples, 0)
        ll = operator.log_likelihood(x0, ys).reshape(m, mc_samples)
        out[part] = torch.logsumexp(ll, 1) - math.log(mc_samples)
    return out


class DPSLikelihood:
    """log p^_t(y | x_t) under ``denoiser``'s factorised prediction as a one-class noisy classifier with per-row
    context: ``(x_t (n, *sites), lam (n,), rows (n,)) -> (n, 1)`` float64 (one denoiser call per evaluation)."""

    num_classes = 1
    row_context = True
    noise_level_free = False

    def __init__(self, process: ForwardProcess, denoiser: Denoiser, operator: MeasurementOperator, y: Tensor,
                 mc_samples: int = 64, seed: int = 0) -> None:
        self.process, self.denoiser, self.operator, self.y = process, denoiser, operator, y
        self.mc_samples, self.seed = mc_samples, seed
        self.cache: dict = {}

    def site_table(self, site_shape: tuple[int, ...]) -> Tensor | None:
        """The operator's per-site log-likelihood (B_y, *sites, K), or None when it couples sites."""
        if "site" not in self.cache:
            self.cache["site"] = self.operator.site_log_likelihood(self.y, site_shape)
        return self.cache["site"]

    def __call__(self, xt: Tensor, lam: Tensor, rows: Tensor | None = None) -> Tensor:
        rows = observation_rows(xt.shape[0], self.y.shape[0], rows, xt.device)
        log_probs = self.process.x0_log_probs(self.denoiser(xt, lam), xt)
        return factorised_log_likelihood(self.operator, log_probs, self.y, rows, self.mc_samples, self.seed,
                                         self.cache)[:, None]


class DPSGuidedProcess(GuidedProcess):
    """The guided process of DPS-style guidance: the rates of ``GuidedProcess``; the final draw tilted per site by
    exp(gamma l_d) where the operator factorises (see the module doc)."""

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        likelihood: DPSLikelihood = self.guidance.classifier
        table = likelihood.site_table(tuple(xt.shape[1:]))
        if table is None or prediction.x0_log_probs is None:
            return super().sample_x0(xt, prediction, generator)
        rows = observation_rows(xt.shape[0], likelihood.y.shape[0], None, xt.device)
        base = prediction.x0_log_probs.double()
        tilted = base + self.guidance.gamma * (table[rows] if table.shape[0] > 1 else table).to(base.device)
        impossible = torch.isneginf(tilted).all(-1, keepdim=True)     # y rules out every value the prediction allows
        tilted = torch.log_softmax(torch.where(impossible, base, tilted), -1)
        return self.base.sample_x0(xt, Prediction(x0_log_probs=tilted), generator)


@torch.no_grad()
def dps_sample(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
               operator: MeasurementOperator, y: Tensor, shape: tuple[int, ...], gamma: float = 1.0,
               mc_samples: int = 64, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, callback: ProgressCallback | None = None) -> Tensor:
    """Samples (B, *sites) long by DPS-style guidance (see the module doc; biased): any denoiser whose prediction
    has x0 log-probs, ``y`` (B or 1, *y_sites) for ``operator``, ``sampler`` tau-leaping or euler, scale ``gamma``
    >= 0, ``mc_samples`` draws where the Monte-Carlo estimate is used."""
    y, _ = check_posterior_inputs(process, operator, y, shape)
    check_rate_sampler(sampler, process, "dps", exact_ok=False)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"dps: mc_samples must be an integer >= 1, got {mc_samples!r}")

    def make_guidance(rows_y: Tensor) -> ClassifierGuidance:
        guidance = ClassifierGuidance(process, DPSLikelihood(process, denoiser, operator, rows_y, mc_samples),
                                      0, gamma, "exact")
        guidance.process = DPSGuidedProcess(process, guidance)
        return guidance

    x0 = run_guided(sampler, process, denoiser, schedule, tuple(shape), y, make_guidance, generator, device, callback)
    warn_if_contradicting(operator, y, x0, "dps")
    return x0
