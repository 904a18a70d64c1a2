"""Confidence-ordered (MaskGIT-style) unmasking for the masking process.

Reference: Chang, Zhang, Jiang, Liu, Freeman, "MaskGIT: Masked Generative Image Transformer", CVPR 2022;
the same top-k rule is used by LLaDA (Nie et al., 2025) as "low-confidence remasking".

Each step draws a candidate x0 at every masked site from p(x0 | x_t) and unmasks the k most confident
sites (confidence = the candidate's log-probability, plus ``noise`` times Gumbel noise when noise > 0).
k is set by the schedule: each row keeps round(S (1 - alpha_s)) masked sites after the step (S sites,
1 - alpha_s the masked fraction at s), so the number of unmaskings per step follows the expected
schedule deterministically; the last step to alpha = 1 unmasks everything. Greedy in confidence, so it
does not sample the model's distribution (it sharpens it); masking only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler


def unmask_counts(xt: Tensor, mask_index: int, lam_s: Tensor) -> Tensor:
    """How many masked sites each row unmasks in a step to lam_s: (B,) long, so that round(S (1 - alpha_s))
    sites stay masked (S sites per row; 1 - alpha_s is the masked fraction at s; all go when alpha_s = 1)."""
    batch = xt.shape[0]
    sites = xt[0].numel()
    n_masked = (xt == mask_index).reshape(batch, -1).sum(1)
    keep_masked = torch.round(sites * torch.sigmoid(-lam_s.double())).long()
    return (n_masked - keep_masked).clamp_min(0)


def top_k_mask(scores: Tensor, k: Tensor) -> Tensor:
    """Boolean (B, *sites): the k[b] highest scores of each row (ties broken by position)."""
    batch = scores.shape[0]
    flat = scores.reshape(batch, -1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(flat.shape[1], device=scores.device).expand(batch, -1))
    return (rank < k[:, None]).reshape(scores.shape)


class ConfidenceSampler(Sampler):
    name = "maskgit"
    supported_processes = ("masking",)

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, noise: float = 0.0,
                 temperature: float = 1.0, top_p: float = 1.0, cache: bool = False,
                 grid: str | None = None, top_k: int = 0) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache, grid, top_k)
        if float(noise) < 0:
            raise ValueError(f"maskgit: noise must be >= 0, got {noise}")
        self.noise = float(noise)

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        mask = getattr(process, "mask_index", None)
        if mask is None:
            raise ValueError(f"sampler 'maskgit' needs the masking process, got {process.name!r}")
        prediction = denoiser(xt, lam_t)
        masked = xt == mask
        candidates = process.sample_x0_where(xt, prediction, masked, generator)     # drawn at masked sites only
        log_probs = process.x0_log_probs(prediction, xt)
        confidence = torch.gather(log_probs, -1, candidates[..., None])[..., 0].double()
        if self.noise > 0:
            u = torch.rand(confidence.shape, generator=generator, dtype=torch.float64, device=xt.device)
            confidence = confidence - self.noise * torch.log(-torch.log(u.clamp_min(1e-300)))
        confidence = torch.where(masked, confidence, torch.full_like(confidence, -torch.inf))
        chosen = top_k_mask(confidence, unmask_counts(xt, mask, lam_s)) & masked
        return torch.where(chosen, candidates, xt)

    def config(self) -> dict:
        return {**super().config(), "noise": self.noise}
