"""How close posterior samples are to the clean data they were measured from (``ddiff posterior`` and
benchmarks/posterior_digits.py).

Shapes: ``samples`` (N, S, *sites) long, S posterior samples of each of N observations; ``truth`` (N, *sites) long;
``region`` (N or 1, *sites) bool, the sites scored (for inpainting the hidden ones), None = every site.

- posterior mean: m = (1 / S) sum_s x_s per site (float64); the least-squares estimate of x0 under the samples;
- per-pixel accuracy of the rounded mean: fraction of scored sites with round(m) = x0 (ties to even);
- sample-wise accuracy: fraction of (sample, scored site) pairs with x_s = x0, the expected accuracy of one draw;
- PSNR of an estimate e: 10 log10(peak^2 / MSE), MSE pooled over every scored site of every observation (not a
  mean of per-image PSNRs, which is infinite for one perfect image), peak = K - 1 (16 for 17-level digits).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["posterior_mean", "rounded_accuracy", "sample_accuracy", "psnr", "estimate_scores", "sample_scores"]


def posterior_mean(samples: Tensor) -> Tensor:
    """The mean over the sample axis of ``samples`` (N, S, *sites): (N, *sites) float64."""
    return samples.double().mean(1)


def _region(region: Tensor | None, like: Tensor) -> Tensor:
    if region is None:
        return torch.ones_like(like, dtype=torch.bool)
    region = torch.as_tensor(region).bool().to(like.device)
    out = region.expand_as(like)
    if not bool(out.any()):
        raise ValueError("the scored region holds no site")
    return out


def rounded_accuracy(estimate: Tensor, truth: Tensor, region: Tensor | None = None) -> float:
    """Fraction of the scored sites where round(estimate) (N, *sites) equals truth (N, *sites)."""
    keep = _region(region, truth)
    return float((torch.round(estimate.double()) == truth.double())[keep].double().mean())


def sample_accuracy(samples: Tensor, truth: Tensor, region: Tensor | None = None) -> float:
    """Fraction of (sample, scored site) pairs of ``samples`` (N, S, *sites) equal to truth (N, *sites)."""
    keep = _region(region, truth)
    hits = (samples == truth[:, None]).double().mean(1)              # (N, *sites): per-site hit rate over samples
    return float(hits[keep].mean())


def psnr(estimate: Tensor, truth: Tensor, peak: float, region: Tensor | None = None) -> float:
    """10 log10(peak^2 / MSE) of ``estimate`` (N, *sites) against ``truth``, MSE pooled over the scored sites;
    +inf when the estimate is exact there."""
    keep = _region(region, truth)
    mse = float(((estimate.double() - truth.double())[keep] ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak ** 2 / mse)


def estimate_scores(estimate: Tensor, truth: Tensor, num_states: int, region: Tensor | None = None) -> dict:
    """{accuracy (rounded), psnr} of a point estimate (N, *sites) against truth; peak = K - 1."""
    return {"accuracy": rounded_accuracy(estimate, truth, region),
            "psnr": psnr(estimate, truth, float(num_states - 1), region)}


def sample_scores(samples: Tensor, truth: Tensor, num_states: int, region: Tensor | None = None) -> dict:
    """{accuracy (rounded mean), sample_accuracy, psnr (of the mean)} of posterior samples (N, S, *sites)."""
    scores = estimate_scores(posterior_mean(samples), truth, num_states, region)
    return {"accuracy": scores["accuracy"], "sample_accuracy": sample_accuracy(samples, truth, region),
            "psnr": scores["psnr"]}
