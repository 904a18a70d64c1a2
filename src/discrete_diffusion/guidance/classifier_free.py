"""Classifier-free guidance for every forward process: one plain denoiser, so every sampler works unchanged.

References: Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; Schiff et al., "Simple Guidance
Mechanisms for Discrete Diffusion Models" (D-CFG), ICLR 2025; Nisonoff et al., "Unlocking Guidance for Discrete
State-Space Diffusion and Flow Models" (predictor-free guidance on CTMC rates), ICLR 2025; Rojas et al.,
"Theory-Informed Improvements to Classifier-Free Guidance for Discrete Diffusion Models", 2025 (the unnormalised
geometric mean of rates over-unmasks; normalise it).

A conditional model gives p(x0 | x_t, c) and, with the null class, p(x0 | x_t). With the scale gamma (0:
unconditional, 1: conditional, > 1: sharper) the guided prediction is, per site d (DESIGN.md section 3):

- x0 space (every process's ``x0_log_probs``):
      log p_gamma(x0^d | x_t, c) = normalise_k( gamma log p(x0^d = k | x_t, c) + (1 - gamma) log p(x0^d = k | x_t) ).
  For masking this IS the normalised rate form of Rojas et al.: the rates out of MASK are alpha p(y | x_t), one
  common factor alpha, so the per-site normalised geometric mean of the rates is alpha p_gamma(y) and the total
  unmasking rate alpha is unchanged at every gamma.
- rate space for Blackout's mean (``mean_missing``): the only reverse move is the birth x -> x + 1, at a rate
  proportional to E[x0 - x_t | x_t]; the guided mean m_c^gamma m_u^(1 - gamma) gives exactly the rate-space
  geometric mean R_c^gamma R_u^(1 - gamma) of Nisonoff et al. At gamma outside {0, 1} it is non-negative but can
  exceed N - x_t (3.75x at gamma 2, 876x at gamma 4 on the oracle), with no bound until the next jump: exact
  simulation refuses it (``thinning_refusal``), the mean bridge clamps it at N - x_t (TV 0.056 to the guided
  chain's law at gamma 4, 256 steps, against 0.008 at gamma 1), and tau-leaping, euler and theta-trapezoidal run it
  as given (theta-trapezoidal, 256 steps: at the Monte-Carlo floor at gamma 2 and 4;
  benchmarks/blackout_guidance_exactness.py, docs/guidance.md).
- uniform and matrix processes use the x0-space form; docs/guidance.md states how its rates differ from the
  rate-space geometric mean (``geometric_mean_rates``, kept here as the reference) for gamma outside {0, 1}.

At gamma in {0, 1} every form is exactly the unconditional / conditional model (tested to 1e-10 on the oracle).
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

from ..denoiser import ConditionalDenoiser, ConditionalModel, check_labels
from ..processes.base import ForwardProcess, Prediction, expand_to_sites

#: A guidance scale: one number, or a schedule lam (B,) float64 -> gamma (B,) (e.g. ``GuidanceInterval``).
GammaLike = Union[float, Callable[[Tensor], Tensor]]


def _tilt(cond: Tensor, uncond: Tensor, gamma: Tensor) -> Tensor:
    """gamma * cond + (1 - gamma) * uncond on log values (float64), -inf where the geometric mean is 0: where the
    conditional is -inf (gamma != 0) or the unconditional is -inf (gamma != 1; for gamma > 1 this extrapolates
    past a value the unconditional model excludes, which the exact model never puts conditional mass on)."""
    impossible = (torch.isneginf(cond) & (gamma != 0)) | (torch.isneginf(uncond) & (gamma != 1))
    mixed = gamma * cond.masked_fill(torch.isneginf(cond), 0.0) + (1 - gamma) * uncond.masked_fill(
        torch.isneginf(uncond), 0.0)
    return mixed.masked_fill(impossible, -torch.inf)


def guide_x0_log_probs(cond: Tensor, uncond: Tensor, gamma: Tensor) -> Tensor:
    """The normalised geometric mean per site: cond, uncond (B, *sites, K) log p(x0^d | x_t[, c]), gamma (B,) ->
    (B, *sites, K) float64, normalise_k(gamma cond + (1 - gamma) uncond). A site where the two have disjoint
    supports keeps the conditional row."""
    c, u = cond.double(), uncond.double()
    g = gamma.double().reshape(gamma.shape + (1,) * (c.dim() - 1))
    out = torch.log_softmax(_tilt(c, u, g), dim=-1)
    return torch.where(torch.isnan(out).any(-1, keepdim=True), c, out)


def guide_mean(cond: Tensor, uncond: Tensor, gamma: Tensor) -> Tensor:
    """Blackout's guided mean m_c^gamma m_u^(1 - gamma): cond, uncond (B, *sites) >= 0, gamma (B,) -> (B, *sites)
    float64 (0 where the geometric mean is 0)."""
    g = expand_to_sites(gamma.double(), cond)
    return torch.exp(_tilt(torch.log(cond.double().clamp_min(0)), torch.log(uncond.double().clamp_min(0)), g))


def guide_prediction(cond: Prediction, uncond: Prediction, gamma: Tensor) -> Prediction:
    """The guided Prediction: x0 log-probs in x0 space (``guide_x0_log_probs``) and, where both carry one, the mean
    in rate space (``guide_mean``). gamma (B,)."""
    log_probs = mean = None
    if cond.x0_log_probs is not None and uncond.x0_log_probs is not None:
        log_probs = guide_x0_log_probs(cond.x0_log_probs, uncond.x0_log_probs, gamma).to(cond.x0_log_probs.dtype)
    if cond.mean_missing is not None and uncond.mean_missing is not None:
        mean = guide_mean(cond.mean_missing, uncond.mean_missing, gamma).to(cond.mean_missing.dtype)
    if log_probs is None and mean is None:
        raise ValueError("guidance needs two predictions of the same parameterisation (x0 log-probs or a mean)")
    return Prediction(x0_log_probs=log_probs, mean_missing=mean)


def geometric_mean_rates(process: ForwardProcess, xt: Tensor, cond: Prediction, uncond: Prediction, lam: Tensor,
                         gamma: Tensor, normalise: bool = False) -> Tensor:
    """Predictor-free guidance on rates (Nisonoff et al. 2025): Rhat_c^gamma Rhat_u^(1 - gamma) per site and move,
    (B, *sites, M) float64. With ``normalise`` each site's rates are rescaled to the unguided total
    sum_y Rhat_u(x -> y) (Rojas et al.'s normalised form for masking, where it equals the x0-space form)."""
    rc, ru = process.reverse_rates(xt, cond, lam), process.reverse_rates(xt, uncond, lam)
    g = gamma.double().reshape(gamma.shape + (1,) * (rc.dim() - 1))
    out = torch.exp(_tilt(torch.log(rc), torch.log(ru), g))
    if normalise:
        total = out.sum(-1, keepdim=True)
        out = torch.where(total > 0, out * ru.sum(-1, keepdim=True) / total.clamp_min(1e-300), out)
    return out


class GuidanceInterval:
    """A guidance schedule over the noise level: gamma inside lam_min <= lam <= lam_max and 1 (plain conditional)
    outside, as in guidance limited to an interval of noise levels (Kynkaanniemi et al., 2024). lam = logit(alpha):
    low lam is high noise. Called on lam (B,) -> gamma (B,) float64."""

    def __init__(self, gamma: float, lam_min: float = -torch.inf, lam_max: float = torch.inf) -> None:
        if not lam_min <= lam_max:
            raise ValueError(f"GuidanceInterval needs lam_min <= lam_max, got {lam_min} > {lam_max}")
        self.gamma, self.lam_min, self.lam_max = float(gamma), float(lam_min), float(lam_max)

    def __call__(self, lam: Tensor) -> Tensor:
        lam = lam.double()
        inside = (lam >= self.lam_min) & (lam <= self.lam_max)
        return torch.where(inside, torch.full_like(lam, self.gamma), torch.ones_like(lam))


class ClassifierFreeDenoiser:
    """A plain denoiser (x_t, lam) -> Prediction guided towards ``labels`` with scale ``gamma`` (a number >= 0 or a
    schedule lam -> gamma). ``model`` is a conditional model (x_t, lam, labels) -> Prediction whose label
    ``num_classes`` is the null class (train with ``train.cond_dropout`` > 0 so that it means p(x0 | x_t)).

    ``labels``: one class (int) or (B,) per row (see ``ConditionalDenoiser``). Each call evaluates the conditional
    and the null class in one batch of 2B rows, or only one of them where gamma is 0 or 1 for every row."""

    def __init__(self, model: ConditionalModel, labels: Tensor | int, gamma: GammaLike,
                 num_classes: int | None = None) -> None:
        num_classes = int(getattr(model, "num_classes", 0) if num_classes is None else num_classes)
        labels = check_labels(labels, num_classes, allow_null=False)
        if not callable(gamma) and not (isinstance(gamma, (int, float)) and gamma >= 0 and gamma < float("inf")):
            raise ValueError(f"the guidance scale must be a finite number >= 0 (0 = unconditional, 1 = conditional), "
                             f"got {gamma!r}")
        self.model, self.num_classes, self.gamma = model, num_classes, gamma
        self.conditional = ConditionalDenoiser(model, labels, num_classes)
        self.unconditional = ConditionalDenoiser(model, num_classes, num_classes)

    def scale(self, lam: Tensor) -> Tensor:
        """gamma per row, (B,) float64."""
        if callable(self.gamma):
            return self.gamma(lam).double().to(lam.device)
        return torch.full(lam.shape, float(self.gamma), dtype=torch.float64, device=lam.device)

    def exact_scales(self) -> bool:
        """True when every gamma this guidance can use is 0 or 1 (then it is a plain model); a schedule other than a
        ``GuidanceInterval`` is not known and counts as False."""
        if isinstance(self.gamma, GuidanceInterval):
            return self.gamma.gamma in (0.0, 1.0)
        return not callable(self.gamma) and float(self.gamma) in (0.0, 1.0)

    def thinning_refusal(self, process: ForwardProcess) -> str | None:
        """Why exact simulation (thinning) cannot run this guidance on ``process``, or None. Blackout's guided mean
        m_c^gamma m_u^(1 - gamma) can exceed N - x_t at gamma outside {0, 1} (the process's rate bound), without any
        bound that holds until the next jump (m_u can approach 0); the x0-space forms of the other processes keep
        every bound."""
        if getattr(process, "name", None) != "blackout" or self.exact_scales():
            return None
        return ("exact simulation cannot run Blackout's classifier-free guidance at gamma outside {0, 1}: the guided "
                "mean m_c^gamma m_u^(1-gamma) exceeds the thinning bound N - x_t; use tau-leaping, euler or "
                "theta-trapezoidal")

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        gamma = self.scale(lam)
        if bool((gamma == 1).all()):
            return self.conditional(xt, lam)
        if bool((gamma == 0).all()):
            return self.unconditional(xt, lam)
        batch = xt.shape[0]
        labels = self.conditional.labels
        labels = labels.expand(batch) if labels.dim() == 0 else labels
        if labels.shape[0] != batch:
            self.conditional(xt, lam)            # raises the row-count message
        both = torch.cat([labels.to(xt.device), torch.full_like(labels.to(xt.device), self.num_classes)])
        pred = self.model(torch.cat([xt, xt]), torch.cat([lam, lam]), both)
        half = [Prediction(*(None if v is None else v[part] for v in (pred.x0_log_probs, pred.mean_missing)))
                for part in (slice(0, batch), slice(batch, 2 * batch))]
        return guide_prediction(half[0], half[1], gamma)
