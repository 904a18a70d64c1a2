"""Exact posterior guidance: predictor guidance with the exact p_t(y | x_t) of an enumerable prior (the oracle).

Reference: Nisonoff, Xiong, Allenspach, Listgarten, "Unlocking Guidance for Discrete State-Space Diffusion and
Flow Models", ICLR 2025 (predictor guidance on CTMC rates, exact at gamma = 1).

Math. Measuring y splits the prior pi(x0) into the two-class joint pi(x0, "y observed") = pi(x0) L(x0) and
pi(x0, "not") = pi(x0) (1 - L(x0)), L(x0) = p(y | x0); the posterior pi(x0 | y) is class "y observed". The forward
process does not depend on the class, so (guidance/classifier.py) the posterior's reverse rates are the prior's
times a ratio of the noisy likelihood

    p_t(y | x_t) = sum_x0 p(x0 | x_t) p(y | x0) = sum_x0 pi(x0) q_t(x_t | x0) L(x0) / sum_x0 pi(x0) q_t(x_t | x0),
    R_post(x -> x') = R(x -> x') p_t(y | x') / p_t(y | x)            (x' = x with one site changed),

exactly, at gamma = 1 (gamma != 1 raises the ratio to that power: no longer a posterior). Only class "y observed"
enters the ratio, so ``ExactMeasurementLikelihood`` returns that single column. The last, noise-removal step draws
x0 jointly from p(x0 | x_t, y) ∝ pi(x0) q_t(x_t | x0) L(x0) (exact given x_t; the prior-only samplers draw each
site from its marginal there). Leaps (tau-leaping, euler) freeze the rates over a step, so under a hard constraint
they can overshoot into a state with p_t(y | x_t) = 0 (Blackout births past a block sum: 10% of samples at 128
steps, 2% at 512 on the test table); such a chain is stuck and its sample violates y. Its error is the leap's and
shrinks with the steps, as for the prior; exact simulation (masking) never overshoots.

Computable only where p(x0 | x_t) is known jointly over all sites, i.e. for a prior given as a table over the K^D
configurations (``OracleDenoiser`` / ``SharedLevelOracle``): a trained network gives per-site marginals only, for
which use the DPS-style approximation (dps.py, biased) or split Gibbs. Cost: the table of p_t(y_r | x) over every
noisy state x (num_values^D of them) is built once per noise level, O(num_values^D K^D (D + B_y)); each candidate
move is then a lookup. The guided rates go to the samplers that read rates: tau-leaping and euler for every process,
exact simulation for masking (p_t(y | x_t) does not depend on the noise level there, so the bound c(x) max weight
holds until the next jump); with one observation per sample, exact simulation runs once per distinct y (its events
evaluate subsets of rows).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..guidance.classifier import ClassifierGuidance, GuidedProcess
from ..oracle import OracleDenoiser, SharedLevelOracle, all_configurations, configuration_index
from ..processes.base import ForwardProcess, Prediction, sample_categorical
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

__all__ = ["ExactMeasurementLikelihood", "ExactPosteriorProcess", "exact_guidance_sample", "oracle_of"]

#: Largest (noisy states x rows of y) table built per noise level; beyond it each call enumerates directly.
TABLE_LIMIT = 1 << 24


class ExactMeasurementLikelihood:
    """The exact log p_t(y | x_t) of a prior table ``probs`` (K^D,) over all_configurations(K, D), D = prod(site_shape),
    as a one-class noisy classifier with per-row context: ``(x_t (n, *sites), lam (n,), rows (n,)) -> (n, 1)``
    float64, -inf where y is impossible given x_t. ``y`` (B_y, *y_sites) checked by ``operator``."""

    num_classes = 1
    row_context = True

    def __init__(self, process: ForwardProcess, probs: Tensor, site_shape: tuple[int, ...],
                 operator: MeasurementOperator, y: Tensor) -> None:
        self.process, self.site_shape = process, tuple(site_shape)
        sites = math.prod(self.site_shape)
        if probs.numel() != process.num_states ** sites:
            raise ValueError(f"exact guidance: the prior table has {probs.numel()} entries, not K^D = "
                             f"{process.num_states ** sites}")
        self.configs = all_configurations(process.num_states, sites)                    # (J, D)
        self.log_prior = torch.log(probs.double().reshape(-1) / probs.double().sum())     # (J,)
        self.log_like = configuration_log_likelihood(operator, y.cpu(), self.site_shape)  # (B_y, J)
        evidence = torch.logsumexp(self.log_prior + self.log_like, 1)
        if not bool(torch.isfinite(evidence).all()):
            bad = int((~torch.isfinite(evidence)).nonzero()[0, 0])
            raise ValueError(f"exact guidance: observation {bad} of y is impossible under the prior (p(y) = 0)")
        self.noise_level_free = not process.posterior_depends_on_noise_level
        self._cache: tuple[float, Tensor] | None = None

    # ----- log q_t(x_t | x0 = j) ------------------------------------------------------------------------------
    def _log_q_rows(self, flat: Tensor, lam: Tensor) -> Tensor:
        """log q_t(x_t | j) + log pi_j for states flat (n, D), one noise level each: (n, J) float64."""
        log_q = self.process.log_marginal_matrix(lam.double())                          # (n, K, M)
        rows = torch.arange(flat.shape[0])[:, None]
        out = self.log_prior[None].repeat(flat.shape[0], 1)
        for d in range(flat.shape[1]):
            out += log_q[rows, self.configs[None, :, d], flat[:, d, None]]
        return out

    def _table(self, lam: float) -> Tensor | None:
        """log p_t(y_r | x) for every noisy state x of all_configurations(num_values, D) and row r: (X, B_y), cached
        for the last noise level; None when it would exceed ``TABLE_LIMIT``."""
        sites, rows = self.configs.shape[1], self.log_like.shape[0]
        states = self.process.num_values ** sites
        if states * max(rows, self.configs.shape[0]) > TABLE_LIMIT:
            return None
        if self._cache is not None and self._cache[0] == lam:
            return self._cache[1]
        noisy = all_configurations(self.process.num_values, sites)                      # (X, D)
        log_q = self.process.log_marginal_matrix(torch.tensor([lam], dtype=torch.float64))[0]   # (K, M)
        joint = self.log_prior[None].repeat(states, 1)                                  # (X, J)
        for d in range(sites):
            joint += log_q[self.configs[:, d]][:, noisy[:, d]].T
        norm = torch.logsumexp(joint, 1, keepdim=True)                                  # (X, 1)
        if rows == 1:
            table = torch.logsumexp(joint + self.log_like, 1, keepdim=True)
        else:                 # sum_j exp(joint) exp(log_like): a matmul with per-row and per-column shifts
            top_x = joint.max(1, keepdim=True).values.clamp_min(-1e300)
            top_r = self.log_like.max(1, keepdim=True).values                           # finite: p(y) > 0
            table = torch.log(torch.exp(joint - top_x) @ torch.exp(self.log_like - top_r).T) + top_x + top_r.T
        table = table - norm
        self._cache = (lam, table)
        return table

    def __call__(self, xt: Tensor, lam: Tensor, rows: Tensor | None = None) -> Tensor:
        device = xt.device
        flat = xt.reshape(xt.shape[0], -1).cpu()
        rows = observation_rows(flat.shape[0], self.log_like.shape[0], rows, torch.device("cpu"))
        lam = lam.double().cpu()
        if self.noise_level_free:                 # masking: p_t(y | x_t) is the same at every finite level
            lam = torch.zeros_like(lam)
        if flat.shape[0] and bool((lam == lam[0]).all()):
            table = self._table(float(lam[0]))
            if table is not None:
                return table[configuration_index(flat, self.process.num_values), rows][:, None].to(device)
        out = torch.empty(flat.shape[0], dtype=torch.float64)
        step = max(1, ENUM_CHUNK // self.configs.shape[0])
        for start in range(0, flat.shape[0], step):
            part = slice(start, start + step)
            joint = self._log_q_rows(flat[part], lam[part])
            out[part] = torch.logsumexp(joint + self.log_like[rows[part]], 1) - torch.logsumexp(joint, 1)
        return out[:, None].to(device)

    def sample_posterior(self, xt: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x0 ~ p(x0 | x_t, y) ∝ pi(x0) q_t(x_t | x0) L(x0) jointly over the sites, for xt (n, *sites) (n = B_y or
        B_y = 1): (n, *sites) long."""
        flat = xt.reshape(xt.shape[0], -1).cpu()
        rows = observation_rows(flat.shape[0], self.log_like.shape[0], None, torch.device("cpu"))
        lam = torch.zeros_like(lam.double().cpu()) if self.noise_level_free else lam.double().cpu()
        joint = self._log_q_rows(flat, lam)
        log_post = joint + self.log_like[rows]
        # a leap can overshoot into a state that y rules out (p_t(y | x_t) = 0, where the exact chain never goes):
        # there draw from the prior's p(x0 | x_t), which leaves the sample visibly inconsistent with y
        stuck = torch.isneginf(log_post).all(1, keepdim=True)
        index = sample_categorical(torch.where(stuck, joint, log_post).to(xt.device), generator)
        return self.configs.to(xt.device)[index].reshape(xt.shape)


class ExactPosteriorProcess(GuidedProcess):
    """The guided process of exact posterior guidance: the rates of ``GuidedProcess``; at gamma = 1 the final draw is
    the joint x0 ~ p(x0 | x_t, y) (``ExactMeasurementLikelihood.sample_posterior``)."""

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        if self.guidance.gamma != 1.0 or getattr(prediction, "xt", None) is None:
            return super().sample_x0(xt, prediction, generator)
        return self.guidance.classifier.sample_posterior(xt, prediction.lam, generator)


def oracle_of(denoiser: Denoiser) -> OracleDenoiser:
    """The table-backed oracle behind ``denoiser`` (an ``OracleDenoiser`` or ``SharedLevelOracle``); ValueError for
    anything else (a network gives no joint p(x0 | x_t))."""
    if isinstance(denoiser, SharedLevelOracle):
        return denoiser.oracle
    if isinstance(denoiser, OracleDenoiser):
        return denoiser
    raise ValueError("exact posterior guidance needs p(x0 | x_t) jointly over the sites, i.e. a prior given as a table "
                     f"(OracleDenoiser / SharedLevelOracle), got {type(denoiser).__name__}; for a network use dps "
                     "(biased) or split-gibbs")


class _SiteShaped:
    """A (B, D) oracle seen through samples of shape (B, *sites)."""

    def __init__(self, denoiser: Denoiser, site_shape: tuple[int, ...]) -> None:
        self.denoiser, self.site_shape = denoiser, site_shape

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        pred = self.denoiser(xt.reshape(xt.shape[0], -1), lam)

        def reshape(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.reshape(xt.shape + t.shape[2:])

        return Prediction(reshape(pred.x0_log_probs), reshape(pred.mean_missing))


@torch.no_grad()
def exact_guidance_sample(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                          operator: MeasurementOperator, y: Tensor, shape: tuple[int, ...], gamma: float = 1.0,
                          generator: torch.Generator | None = None, device: torch.device | str | None = None,
                          callback: ProgressCallback | None = None) -> Tensor:
    """Samples (B, *sites) long of pi(x0 | y) (gamma = 1) by exact posterior guidance (see the module doc).

    ``denoiser``: the prior as an ``OracleDenoiser`` / ``SharedLevelOracle`` table over K^D configurations; ``y``
    (B or 1, *y_sites) for ``operator``; ``sampler``: tau-leaping, euler, or exact (masking)."""
    y, site_shape = check_posterior_inputs(process, operator, y, shape)
    oracle = oracle_of(denoiser)
    if oracle.process.name != process.name or oracle.process.num_states != process.num_states:
        raise ValueError(f"the oracle prior was built for process {oracle.process.name!r} (K = "
                         f"{oracle.process.num_states}), not {process.name!r} (K = {process.num_states})")
    sites = math.prod(site_shape)
    if oracle.configs.shape[1] != sites:
        raise ValueError(f"the oracle prior has {oracle.configs.shape[1]} sites but the samples have {sites}")
    check_rate_sampler(sampler, process, "exact-guidance", exact_ok=True)
    if isinstance(denoiser, OracleDenoiser) and process.num_values ** sites <= 1 << 16:
        denoiser = SharedLevelOracle(denoiser, sites)           # the same numbers, one enumeration per level
    if len(site_shape) > 1:
        denoiser = _SiteShaped(denoiser, site_shape)
    probs = oracle.log_probs.exp()

    def make_guidance(rows_y: Tensor) -> ClassifierGuidance:
        likelihood = ExactMeasurementLikelihood(process, probs, site_shape, operator, rows_y)
        guidance = ClassifierGuidance(process, likelihood, 0, gamma, "exact")
        guidance.process = ExactPosteriorProcess(process, guidance)
        return guidance

    x0 = run_guided(sampler, process, denoiser, schedule, tuple(shape), y, make_guidance, generator, device, callback)
    warn_if_contradicting(operator, y, x0, "exact-guidance")
    return x0
