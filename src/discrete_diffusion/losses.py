"""The continuous-time ELBO, its importance-sampled estimator, and training weightings.

References:
- Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022.
- Lou, Meng, Ermon, "Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution" (the
  score-entropy / Bregman form), ICML 2024.
- Santos et al., "Blackout Diffusion", ICML 2023 (the "instantaneous" and "finite-time" weightings).
- Kingma et al., "Variational Diffusion Models", 2021 (the ELBO is invariant to the schedule except at its
  end points, so it is written as an integral over lam = logit(alpha)).
- Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces" (D3PM), NeurIPS 2021, eq. 5:
  the hybrid loss L_vb + lambda * E[-log p(x0 | x_t)].
- Gat et al., "Discrete Flow Matching", NeurIPS 2024, and Campbell et al., "Generative Flows on Discrete
  State-Spaces", ICML 2024: training by plain cross-entropy on x0.

With lam = logit(alpha), every bound in this library is

    -log p(x0) <= int_{lam_1}^{lam_0} E_{x_t ~ q(.|x0)}[ f(x0, x_t, lam) ] dlam  + KL(q_1 || prior)
                  + E[-log p(x0 | x_{t=0})] (only when alpha(0) < 1)

where f is the process's ``elbo_integrand``. A process whose chain starts from a random encoding z_0 of the data
(jump: z_0 ~ Poisson(lambda x0)) bounds E_{z_0}[-log p(z_0)] instead, and adds H(q(z_0 | x0))
(``encoding_entropy``; ``ElboEstimate.encoding``). The integral is estimated by importance sampling lam from a
truncated logistic density g (most of the ELBO lies in a middle band of lam), stratified over the batch:
estimate = f(lam) / g(lam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from .blocks.denoiser import BlockModel, block_size_of
from .blocks.loss import block_elbo_integrand, clipped_lam_range, draw_block_noise
from .denoiser import Denoiser
from .processes.base import ForwardProcess, Prediction
from .schedules import Schedule

#: How the uniforms behind a batch's noise levels are drawn (``train.t_draws``): "stratified" (default: one per
#: stratum under a random permutation, MDLM's low-discrepancy sampler up to the permutation), "antithetic" (rows
#: i and i + B/2 get u and 1 - u) or "iid" (independent).
T_DRAWS = ("stratified", "antithetic", "iid")


@dataclass
class LogitAlphaProposal:
    """Logistic(loc, scale) density over lam = logit(alpha), truncated to [lam_low, lam_high]; ``draws`` is how the
    batch's uniforms are drawn (``T_DRAWS``)."""

    loc: float = 0.0
    scale: float = 2.0
    draws: str = "stratified"

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"proposal scale must be > 0, got {self.scale}")
        if self.draws not in T_DRAWS:
            raise ValueError(f"unknown t draws {self.draws!r}; valid: {', '.join(T_DRAWS)}")

    def sample(self, batch: int, lam_low: float, lam_high: float, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", stratified: bool = True,
               stratum: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor]:
        """Draw lam (B,) and return (lam, 1 / g(lam)), both float64.

        Stratified: example i gets the i-th of B equal-probability strata under a random permutation, so
        each example's estimate stays unbiased while the batch average has much lower variance. With
        ``draws="antithetic"`` rows i and i + B/2 get u and 1 - u instead (B odd: the last row is independent), with
        ``draws="iid"`` every u is independent; ``stratified=False`` also gives independent draws.
        ``stratum=(k, S)`` confines every draw to the k-th of S equal-probability bands (u in [k/S, (k+1)/S)):
        the S draws k = 0..S-1 of one example then cover the proposal evenly, and their mean stays unbiased.
        """
        k, num_strata = stratum
        if not 0 <= k < num_strata:
            raise ValueError(f"stratum must be (k, S) with 0 <= k < S, got {stratum}")
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        if stratified and self.draws == "stratified":
            order = torch.randperm(batch, generator=generator, device=device).to(torch.float64)
            u = (order + u) / batch
        elif stratified and self.draws == "antithetic":
            half = batch // 2
            u = torch.cat([u[:half], 1.0 - u[:half], u[2 * half:]])
        if num_strata > 1:
            u = (k + u) / num_strata
        cdf_low = self._cdf(lam_low)
        cdf_high = self._cdf(lam_high)
        mass = cdf_high - cdf_low
        v = (cdf_low + mass * u).clamp(1e-300, 1 - 1e-16)
        lam = (self.loc + self.scale * torch.logit(v)).clamp(lam_low, lam_high)
        z = (lam - self.loc) / self.scale
        inverse_density = self.scale * mass / (torch.sigmoid(z) * torch.sigmoid(-z))
        return lam, inverse_density

    def _cdf(self, lam: float) -> float:
        if math.isinf(lam):
            return 1.0 if lam > 0 else 0.0
        return 1.0 / (1.0 + math.exp(-(lam - self.loc) / self.scale))


def logit_alpha_range(schedule: Schedule) -> tuple[float, float]:
    """(lam_1, lam_0) = (logit alpha(1), logit alpha(0)); lam_0 is +inf when alpha(0) = 1."""
    a1, a0 = schedule.alpha_min, schedule.alpha_max
    lam0 = math.inf if a0 >= 1.0 else math.log(a0 / (1.0 - a0))
    return math.log(a1 / (1.0 - a1)), lam0


# ----- training weightings: multipliers of the ELBO integrand ---------------------------------------
class Weighting:
    """Relative weight w(lam) multiplying the ELBO integrand in the training loss (1 = the ELBO itself)."""

    name = "elbo"

    def __call__(self, lam: Tensor) -> Tensor:
        return torch.ones_like(lam)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class InstantaneousWeighting(Weighting):
    """Blackout paper, "instantaneous": sum_k alpha_k (tau_k - tau_{k-1}) B_k, i.e. alpha dsigma per
    Bregman term, which is the ELBO's alpha / (1 - alpha) dsigma times (1 - alpha)."""

    name = "instantaneous"

    def __call__(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)


class FiniteTimeWeighting(Weighting):
    """Blackout paper, "finite-time": sum_k (alpha_{k-1} - alpha_k) B_k on its grid of ``num_steps`` steps
    equally spaced in lam with step d = 2 L / (num_steps - 1), L = -logit(exp(-t_end)). Per dlam this is
    (sigmoid(lam + d) - sigmoid(lam)) / d, i.e. that over the ELBO's sigmoid(lam)."""

    name = "finite-time"

    def __init__(self, num_steps: int = 1000, t_end: float = 15.0) -> None:
        if num_steps < 2:
            raise ValueError(f"finite-time weighting: num_steps must be >= 2, got {num_steps}")
        a_end = math.exp(-t_end)
        self.num_steps, self.t_end = int(num_steps), float(t_end)
        self.step = 2.0 * math.log((1.0 - a_end) / a_end) / (num_steps - 1)

    def __call__(self, lam: Tensor) -> Tensor:
        return (torch.sigmoid(lam + self.step) - torch.sigmoid(lam)) / (self.step * torch.sigmoid(lam))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "num_steps": self.num_steps, "t_end": self.t_end}


WEIGHTINGS: dict[str, type[Weighting]] = {
    Weighting.name: Weighting,
    InstantaneousWeighting.name: InstantaneousWeighting,
    FiniteTimeWeighting.name: FiniteTimeWeighting,
}


def build_weighting(name: str, **options: Any) -> Weighting:
    """Build a training weighting by name; unknown names raise ValueError listing the valid ones."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid weightings: {', '.join(sorted(WEIGHTINGS))}")
    return WEIGHTINGS[name](**options)


# ----- training objectives ---------------------------------------------------------------------------
OBJECTIVES = ("elbo", "hybrid", "x0-ce")


@dataclass
class Objective:
    """What training minimises per example, from one network call at one noise draw (lam, x_t):

    - ``elbo``:   w(lam) * f(x0, x_t, lam) / g(lam), the importance-sampled (re)weighted continuous-time bound;
    - ``hybrid``: that plus ``ce_weight`` * CE (D3PM's hybrid loss, L_vb + lambda L_ce; D3PM used lambda = 0.001
      on CIFAR-10 and 0.01 on text). Scale: here the CE is added to an estimate of the *whole* integrated bound,
      while D3PM adds lambda L_ce to one sampled per-step term, about L_vb / T; so a given lambda is about T times
      weaker here than in D3PM, and ce_weight = lambda T (T = 1000: 1 for lambda = 0.001) matches D3PM's balance;
    - ``x0-ce``:  CE alone (the discrete-flow-matching objective; not a bound on -log p(x0)),

    with CE = -sum_d log p_model(x0^d | x_t). The CE term has no importance weight: its noise levels are
    distributed as the proposal draws them (logistic in lam; the log-linear schedule's uniform t is the
    standard logistic). Both CE objectives need a prediction with x0 log-probabilities.
    """

    name: str = "elbo"
    ce_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; valid objectives: {', '.join(OBJECTIVES)}")
        if not (math.isfinite(self.ce_weight) and self.ce_weight >= 0):
            raise ValueError(f"objective ce_weight must be a finite number >= 0, got {self.ce_weight}")

    @property
    def uses_cross_entropy(self) -> bool:
        return self.name != "elbo"


def x0_cross_entropy(process: ForwardProcess, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
    """-sum_d log p_model(x0^d | x_t) in nats: (B,)."""
    log_probs = process.x0_log_probs(prediction, xt)
    picked = log_probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
    return -picked.reshape(x0.shape[0], -1).sum(dim=1)


# ----- estimators ---------------------------------------------------------------------------------------
@dataclass
class ElboEstimate:
    """Per-example terms of the negative ELBO in nats, each (B,). ``encoding`` is H(q(x_{t=0} | x0)) for a process
    whose chain starts from a random encoding of the data (jump), None otherwise (``encoding_entropy``)."""

    diffusion: Tensor
    prior: Tensor
    reconstruction: Tensor
    encoding: Tensor | None = None

    @property
    def total(self) -> Tensor:
        total = self.diffusion + self.prior + self.reconstruction
        return total if self.encoding is None else total + self.encoding


@dataclass
class TrainingLoss:
    """loss: scalar to minimise (weighted diffusion term per site, plus reconstruction);
    elbo_diffusion: (B,) the unweighted diffusion term in nats (for logging)."""

    loss: Tensor
    elbo_diffusion: Tensor


@dataclass
class NoiseDraw:
    """One importance draw per example: x_t (B, *sites), lam (B,) and the inverse proposal density (B,); for block
    diffusion (``block_size`` set) one per block: lam and the inverse density (B, N) (``blocks/loss.py``)."""

    xt: Tensor
    lam: Tensor
    inverse_density: Tensor
    block_size: int | None = None

    def __getitem__(self, index: slice) -> "NoiseDraw":
        return NoiseDraw(self.xt[index], self.lam[index], self.inverse_density[index], self.block_size)


def draw_noise(process: ForwardProcess, x0: Tensor, schedule: Schedule, proposal: LogitAlphaProposal,
               generator: torch.Generator | None, stratum: tuple[int, int] = (0, 1), block_size: int | None = None,
               mask_rate_clip: tuple[float, float] | None = None) -> NoiseDraw:
    """Draw lam from the proposal (stratified over the batch, within band ``stratum``: see
    ``LogitAlphaProposal.sample``) and x_t ~ q(. | x0, lam). ``block_size``: one lam per block of a (B, L) batch
    (``blocks.loss.draw_block_noise``). ``mask_rate_clip`` = (low, high): draw only noise levels whose mask rate
    1 - alpha lies in [low, high] (BD3-LM's clipped schedule; the estimate is then the bound's integral over that
    band, a training objective and no longer a bound)."""
    lam_low, lam_high = clipped_lam_range(*logit_alpha_range(schedule), mask_rate_clip)
    if block_size is not None:
        xt, lam, inv_density = draw_block_noise(process, x0, block_size, lam_low, lam_high, proposal, generator,
                                                stratum)
        return NoiseDraw(xt, lam.to(torch.get_default_dtype()), inv_density.to(torch.get_default_dtype()),
                         block_size)
    lam, inv_density = proposal.sample(x0.shape[0], lam_low, lam_high, generator, device=x0.device,
                                       stratum=stratum)
    xt = process.sample_marginal(x0, lam, generator)
    return NoiseDraw(xt, lam.to(torch.get_default_dtype()), inv_density.to(torch.get_default_dtype()))


def diffusion_terms(process: ForwardProcess, denoiser: Denoiser, x0: Tensor, noise: NoiseDraw,
                    weighting: Weighting | None = None, objective: Objective | None = None) -> tuple[Tensor, Tensor]:
    """(training term of the objective, unweighted ELBO diffusion term), both (B,) in nats, for a noise draw
    (one network call). A block draw (``noise.block_size``) calls ``denoiser(x_t, lam, clean=x0)`` and sums the
    per-block terms (``blocks/loss.py``)."""
    if noise.block_size is None:
        prediction = denoiser(noise.xt, noise.lam)
        integrand = process.elbo_integrand(x0, noise.xt, noise.lam, prediction)
    else:
        prediction = cast(BlockModel, denoiser)(noise.xt, noise.lam, clean=x0)
        integrand = block_elbo_integrand(process, x0, noise.xt, noise.lam, prediction, noise.block_size)
    per_draw = integrand * noise.inverse_density.to(integrand.dtype)
    elbo = per_draw if noise.block_size is None else per_draw.sum(1)
    objective = objective or Objective()
    if objective.name == "x0-ce":
        return x0_cross_entropy(process, x0, noise.xt, prediction), elbo
    weights = weighting(noise.lam) if weighting is not None else torch.ones_like(noise.lam)
    term = per_draw * weights.to(per_draw.dtype)
    term = term if noise.block_size is None else term.sum(1)
    if objective.name == "hybrid":
        term = term + objective.ce_weight * x0_cross_entropy(process, x0, noise.xt, prediction)
    return term, elbo


def _reconstruction(process: ForwardProcess, denoiser: Denoiser, x0: Tensor, schedule: Schedule,
                    generator: torch.Generator | None, block_size: int | None = None) -> Tensor:
    lam_low, lam_high = logit_alpha_range(schedule)
    if math.isinf(lam_high):
        return torch.zeros(x0.shape[0], device=x0.device)
    lam = torch.full((x0.shape[0],), lam_high, device=x0.device)
    xt = process.sample_marginal(x0, lam, generator)
    prediction = denoiser(xt, lam) if block_size is None else cast(BlockModel, denoiser)(xt, lam, clean=x0)
    return process.reconstruction_nll(x0, xt, prediction)


def training_loss(process: ForwardProcess, denoiser: Denoiser, x0: Tensor, schedule: Schedule,
                  proposal: LogitAlphaProposal, weighting: Weighting | None = None,
                  generator: torch.Generator | None = None, reconstruction: bool = False,
                  objective: Objective | None = None) -> TrainingLoss:
    """One stochastic estimate of the objective (default: the ELBO, optionally reweighted) on a batch x0
    (B, *sites), per site.

    The t -> 0 reconstruction term (present only when alpha(0) < 1) costs a second network pass; it is
    off by default because it is small: alpha(0) = 1 for every shipped schedule but Blackout's, whose
    1 - alpha(0) = 3.1e-7 (t_end = 15) leaves H(x0 | x_t0) = 6.2e-4 bits/dim for 8-bit data spread uniformly
    over 0..255 (4.8e-5 for 17 levels; benchmarks/reconstruction_term.py). Evaluation always includes it.
    """
    noise = draw_noise(process, x0, schedule, proposal, generator)
    per_example, elbo_diffusion = diffusion_terms(process, denoiser, x0, noise, weighting, objective)
    if reconstruction:
        per_example = per_example + _reconstruction(process, denoiser, x0, schedule, generator)
    sites = x0[0].numel()
    return TrainingLoss(loss=per_example.mean() / sites, elbo_diffusion=elbo_diffusion.detach())


@torch.no_grad()
def estimate_elbo(process: ForwardProcess, denoiser: Denoiser, x0: Tensor, schedule: Schedule,
                  proposal: LogitAlphaProposal | None = None, generator: torch.Generator | None = None,
                  num_samples: int = 1) -> ElboEstimate:
    """Unbiased estimate of the negative ELBO terms per example, averaging ``num_samples`` draws of lam.

    Draw k of S = ``num_samples`` lies in the k-th of S equal-probability bands of the proposal (and is
    stratified over the batch within it), so each example's S draws cover the whole lam range: the same
    unbiased mean with less variance than S independent draws (a fixed seed then gives a fixed set).
    A block-diffusion model (``blocks.block_size_of``) is scored by the block bound: one lam per block."""
    block_size = block_size_of(denoiser)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    proposal = proposal or LogitAlphaProposal()
    diffusion = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    reconstruction = torch.zeros_like(diffusion)
    for k in range(num_samples):
        noise = draw_noise(process, x0, schedule, proposal, generator, stratum=(k, num_samples), block_size=block_size)
        diffusion += diffusion_terms(process, denoiser, x0, noise)[1].double()
        reconstruction += _reconstruction(process, denoiser, x0, schedule, generator, block_size).double()
    lam_low, _ = logit_alpha_range(schedule)
    prior = process.prior_kl(x0, torch.full((x0.shape[0],), lam_low, device=x0.device)).double()
    encoding = process.encoding_entropy(x0)
    return ElboEstimate(diffusion=diffusion / num_samples, prior=prior,
                        reconstruction=reconstruction / num_samples,
                        encoding=None if encoding is None else encoding.double())
