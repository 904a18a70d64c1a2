"""The block-diffusion bound: the sum over blocks of the masked-diffusion bound of block b given x0 of the blocks
before it, with one noise level drawn per block; and its exact per-block quadrature for time-free models.

Reference: Arriola et al., "Block Diffusion" (BD3-LM), ICLR 2025, eq. (6)-(8): with blocks x^1..x^N of B_s tokens,

    -log p(x0) = sum_b -log p(x^b | x^{<b})
              <= sum_b [ int_{lam_1}^{lam_0} E_{x_t^b ~ q(.|x^b)} alpha sum_{masked d in b}
                             -log p(x^{b,d} | x_t^b, x^{<b}) dlam  +  B_s alpha(1) log K ]

(each bracket: the masked bound of ``losses.py``)

estimated, as BD3-LM trains, with an independent lam per block (B, N) from the importance proposal, stratified over
all B N draws, and one vectorised network call (``blocks.denoiser.BlockNetworkDenoiser``). With N = 1 the draws and
the estimate are exactly those of ``losses.draw_noise`` / ``losses.diffusion_terms`` (tested).

Exact quadrature (``exact_block_bound``): for a model whose p(x0 | x_t) does not depend on lam (the exact oracle of
masking; a network with ``time_conditioning=false``) the expectation over lam and the mask pattern is a finite sum.
A pattern with k of B_s sites masked has probability alpha^(B_s-k) (1-alpha)^k, and with dlam = dalpha / (alpha (1 -
alpha)) its weight is int_{alpha_1}^{alpha_0} alpha^(B_s-k) (1-alpha)^(k-1) dalpha = Beta(B_s-k+1, k) (I_{alpha_0} -
I_{alpha_1}) (regularised incomplete Beta). At B_s = 1 the only term is (1 - alpha_1) (-log p(x^b | x^{<b}, MASK)):
the AR negative log-likelihood of the same conditionals, up to alpha_1 = 1e-4 of the log-linear schedule's prior.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ..processes.base import ForwardProcess, Prediction
from ..schedules import Schedule

__all__ = ["clipped_lam_range", "draw_block_noise", "block_elbo_integrand", "exact_block_bound",
           "mask_pattern_weights"]


def clipped_lam_range(lam_low: float, lam_high: float,
                      mask_rate_clip: tuple[float, float] | None) -> tuple[float, float]:
    """The lam = logit(alpha) band of mask rates 1 - alpha in [low, high] (BD3-LM's clipped schedule, section 5.2),
    within [lam_low, lam_high]; the whole range when ``mask_rate_clip`` is None."""
    if mask_rate_clip is None:
        return lam_low, lam_high
    low, high = float(mask_rate_clip[0]), float(mask_rate_clip[1])
    band_high = math.inf if low <= 0.0 else math.log((1.0 - low) / low)        # alpha = 1 - low
    band_low = -math.inf if high >= 1.0 else math.log((1.0 - high) / high)     # alpha = 1 - high
    new_low, new_high = max(lam_low, band_low), min(lam_high, band_high)
    if not new_low < new_high:
        raise ValueError(f"train.mask_rate_clip {list(mask_rate_clip)} leaves no noise level inside the schedule's "
                         f"range of mask rates")
    return new_low, new_high


def draw_block_noise(process: ForwardProcess, x0: Tensor, block_size: int, lam_low: float, lam_high: float,
                     proposal, generator: torch.Generator | None,
                     stratum: tuple[int, int] = (0, 1)) -> tuple[Tensor, Tensor, Tensor]:
    """One lam per block from ``proposal`` (stratified over all B N draws) and x_t ~ q(. | x0, lam of its block).

    x0 (B, L) long -> (x_t (B, L) long, lam (B, N), 1 / g(lam) (B, N)), lam in float64 before the caller's cast."""
    batch, length = x0.shape
    blocks = length // block_size
    lam, inverse_density = proposal.sample(batch * blocks, lam_low, lam_high, generator, device=x0.device,
                                           stratum=stratum)
    xt = process.sample_marginal(x0.reshape(batch * blocks, block_size), lam, generator).reshape(batch, length)
    return xt, lam.reshape(batch, blocks), inverse_density.reshape(batch, blocks)


def block_rows(process: ForwardProcess, prediction: Prediction, xt: Tensor, block_size: int) -> Prediction:
    """A prediction over (B, L) sites as one over (B N, B_s): each block a row."""
    log_probs = process.x0_log_probs(prediction, xt)
    return Prediction(x0_log_probs=log_probs.reshape(-1, block_size, log_probs.shape[-1]))


def block_elbo_integrand(process: ForwardProcess, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction,
                         block_size: int) -> Tensor:
    """The masked ELBO integrand of every block, (B, N): ``process.elbo_integrand`` with each block a row."""
    batch, length = x0.shape
    rows = block_rows(process, prediction, xt, block_size)
    integrand = process.elbo_integrand(x0.reshape(-1, block_size), xt.reshape(-1, block_size), lam.reshape(-1), rows)
    return integrand.reshape(batch, length // block_size)


def mask_pattern_weights(block_size: int, alpha_low: float, alpha_high: float) -> list[float]:
    """w_k = int_{alpha_low}^{alpha_high} a^(B_s - k) (1 - a)^(k - 1) da for k = 1..B_s masked sites (index k - 1):
    the weight of one pattern with k masked sites in the exact bound of a time-free model (module docstring)."""
    from scipy.special import beta, betainc

    return [float(beta(block_size - k + 1, k) * (betainc(block_size - k + 1, k, alpha_high)
                                                  - betainc(block_size - k + 1, k, alpha_low)))
            for k in range(1, block_size + 1)]


@torch.no_grad()
def exact_block_bound(process: ForwardProcess, model, x0: Tensor, block_size: int, schedule: Schedule) -> Tensor:
    """The block bound of ``model`` (called as model(x_t, lam, clean=x0)) computed exactly, (B,) float64 nats, for a
    model whose predictions do not depend on lam: a sum over the 2^B_s mask patterns of a block (applied to every
    block at once, which the block mask keeps independent) weighted by ``mask_pattern_weights``, plus the prior
    term B_s alpha(1) log K per block. For small blocks (2^B_s network calls); B_s <= 12."""
    if process.name != "masking":
        raise ValueError(f"exact_block_bound is for masking, got {process.name!r}")
    if block_size > 12:
        raise ValueError(f"exact_block_bound enumerates 2^block_size patterns; block_size {block_size} > 12")
    batch, length = x0.shape
    weights = mask_pattern_weights(block_size, schedule.alpha_min, schedule.alpha_max)
    lam = torch.zeros(batch, length // block_size, device=x0.device)           # ignored by a time-free model
    total = torch.zeros(batch, dtype=torch.float64, device=x0.device)
    for pattern in itertools.product((False, True), repeat=block_size):
        k = sum(pattern)
        if k == 0:
            continue
        masked = torch.tensor(pattern, device=x0.device).repeat(length // block_size)[None, :].expand(batch, length)
        xt = torch.where(masked, torch.full_like(x0, process.mask_index), x0)
        log_probs = process.x0_log_probs(model(xt, lam, clean=x0), xt).double()
        nll = -log_probs.gather(-1, x0[..., None])[..., 0]
        total += weights[k - 1] * torch.where(masked, nll, torch.zeros_like(nll)).sum(1)
    return total + schedule.alpha_min * math.log(process.num_states) * length
