"""DDPD-style planned denoising for the masking process.

Reference: Liu, Nie, Nagar, Cheng, Zhang, Wang, Jaakkola, Gómez-Bombarelli, "Think While You Generate:
Discrete Diffusion with Planned Denoising", 2024.

A planner gives, per site, the probability that the site is still noise; each step picks which sites to
denoise by sampling from the planner (Gumbel top-k on its log-probabilities, i.e. sampling without
replacement in proportion to it) and fills only those sites with draws from the denoiser p(x0^d | x_t).
The number of sites per step follows the schedule (round(S (1 - alpha_s)) stay noisy, as in the "maskgit"
sampler), so num_steps >= S denoises one site per step. For masking the planner is trivial: exactly the
masked sites are noise (planner = 1[x_t = MASK]); a learned planner can be passed as
``planner(xt, lam) -> (B, *sites) probabilities`` (sites it gives probability 0 are not picked before the
last step, which denoises every site still masked; picked unmasked sites are copied by the SUBS denoiser). With the trivial
planner and one site per step this is ancestral sampling in a random order, exact with an exact
denoiser. Rows with nothing left to denoise skip the network. Masking only.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from .base import Sampler
from .confidence import top_k_mask, unmask_counts

Planner = Callable[[Tensor, Tensor], Tensor]


class PlannedDenoisingSampler(Sampler):
    name = "ddpd"
    supported_processes = ("masking",)

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, planner: Planner | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, cache: bool = False) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache)
        self.planner = planner

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        mask = getattr(process, "mask_index", None)
        if mask is None:
            raise ValueError(f"sampler 'ddpd' needs the masking process, got {process.name!r}")
        k = unmask_counts(xt, mask, lam_s)
        rows = (k > 0).nonzero()[:, 0]
        if rows.numel() == 0:
            return xt
        x = xt[rows]
        if math.isinf(float(lam_s[0])):            # alpha_s = 1: whatever is still masked is denoised now
            out = xt.clone()
            out[rows] = process.sample_x0(x, denoiser(x, lam_t[rows]), generator)
            return out
        if self.planner is None:
            noisy = (x == mask).double()
        else:
            noisy = self.planner(x, lam_t[rows]).double().clamp(0.0, 1.0)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        scores = torch.where(noisy > 0, torch.log(noisy) + gumbel, torch.full_like(gumbel, -torch.inf))
        chosen = top_k_mask(scores, k[rows]) & (noisy > 0)
        x0 = process.sample_x0(x, denoiser(x, lam_t[rows]), generator)
        out = xt.clone()
        out[rows] = torch.where(chosen, x0, x)
        return out
