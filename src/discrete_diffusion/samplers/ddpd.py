"""DDPD-style planned denoising for masking and uniform noise.

Reference: Liu, Nie, Nagar, Cheng, Zhang, Wang, Jaakkola, Gómez-Bombarelli, "Think While You Generate:
Discrete Diffusion with Planned Denoising", 2024.

A planner gives, per site, the probability that the site is still noise; the sampler denoises only sites the
planner picks, filling them with draws from the denoiser given that the site is noise.

- Masking: the planner is trivial (exactly the masked sites are noise). Each step picks which sites to
  denoise by sampling from the planner (Gumbel top-k on its log-probabilities, i.e. without replacement in
  proportion to it); the number per step follows the schedule (round(S (1 - alpha_s)) stay noisy, as in
  "maskgit"). On the log-linear grid (1 - alpha linear in t) num_steps >= S denoises at most one site per step:
  ancestral sampling in a random order, exact with an exact denoiser. Other grids need more steps for that: the
  cosine grid about (pi/2) S (its 1 - alpha moves up to pi/2 times faster: at num_steps = S some steps denoise two
  sites), the linear and blackout grids far more (4 or 5 sites in a step at 2 S). A learned planner can be passed
  as ``planner(xt, lam) -> (B, *sites) probabilities`` (sites it gives probability 0 are not picked before the
  last step, which denoises every site still masked).
- Uniform: noise is not visible, so the planner matters. By default it is derived from the denoiser
  (``UniformProcess.noise_probability``: pi_d = P(site d is noise | x_t), exact when the denoiser is); a trained
  planner (``planner.NoisePlanner``, ``ddiff train-planner``) may replace it, with
  p(x0 | x_t, noise) = (p(x0 | x_t) - (1 - pi) 1[x0 = x_t])_+ / pi. A noisy site
  is clean by s with probability (alpha_s - alpha_t)/(1 - alpha_t), so site d is denoised in the step with
  probability pi_d (alpha_s - alpha_t)/(1 - alpha_t), independently per site, to a draw from
  p(x0^d | x_t, noise). This is DDPD's mask-and-replace reverse process: it has the uniform process's
  marginals and converges to the data as steps grow, with an exact denoiser.
- Uniform with a ``masked_denoiser`` (a masking-process denoiser of the same data, MASK = K): DDPD's pairing.
  Uniform noise says nothing about x0, so given which sites are noise, p(x0^d | x_t, noise) is a masked-diffusion
  posterior with the noisy sites masked. Each step draws z_d ~ Bernoulli(pi_d) (z_d = 1 at the sites chosen to
  denoise), masks the sites with z_d = 1, calls the masked denoiser at logit(fraction unmasked), and draws the
  chosen sites from it. The uniform denoiser is then not called when a planner is given. Drawing z site by site
  ignores the correlations of the noise pattern, so this is not exact with exact networks.

Network calls are counted for the denoiser, the masked denoiser and a planner that is given (``network_calls``).

Rows with nothing left to denoise skip the network (masking).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess, expand_to_sites, sample_categorical
from ..processes.masking import unmask_probability
from .base import Sampler, _CountingDenoiser, transform_x0_log_probs
from .confidence import top_k_mask, unmask_counts

Planner = Callable[[Tensor, Tensor], Tensor]


class PlannedDenoisingSampler(Sampler):
    name = "ddpd"
    supported_processes = ("masking", "uniform")

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, planner: Planner | None = None,
                 masked_denoiser: Denoiser | None = None, temperature: float = 1.0, top_p: float = 1.0,
                 cache: bool = False, grid: str | None = None, top_k: int = 0) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache, grid, top_k)
        self.planner = planner
        self.masked_denoiser = masked_denoiser
        self._count_extra_networks()

    def _count_extra_networks(self) -> None:
        """(Re)start counting the calls of a given planner and masked denoiser."""
        self._planner = None if self.planner is None else _CountingDenoiser(self.planner)
        self._masked = None if self.masked_denoiser is None else _CountingDenoiser(self.masked_denoiser)
        self._extra = [c for c in (self._planner, self._masked) if c is not None]

    def wrap_denoiser(self, process: ForwardProcess, denoiser: Denoiser, batch: int) -> Denoiser:
        if self.masked_denoiser is not None and process.name != "uniform":
            raise ValueError(f"ddpd: masked_denoiser applies to uniform noise, got process {process.name!r}")
        self._count_extra_networks()
        return super().wrap_denoiser(process, denoiser, batch)

    def _record_cost(self) -> None:
        super()._record_cost()
        self.network_calls += sum(c.calls for c in self._extra)
        self.network_evaluations += sum(c.rows for c in self._extra)
        self.nfe = self.network_evaluations / self._batch

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        if process.name == "uniform":
            return self.uniform_step(process, denoiser, xt, lam_t, lam_s, generator)
        mask = getattr(process, "mask_index", None)
        if mask is None:
            raise ValueError(f"sampler 'ddpd' needs the masking or the uniform process, got {process.name!r}")
        k = unmask_counts(xt, mask, lam_s)
        rows = (k > 0).nonzero()[:, 0]
        if rows.numel() == 0:
            return xt
        x = xt[rows]
        if math.isinf(float(lam_s[0])):            # alpha_s = 1: whatever is still masked is denoised now
            out = xt.clone()
            out[rows] = process.sample_x0_where(x, denoiser(x, lam_t[rows]), x == mask, generator)
            return out
        if self.planner is None:
            noisy = (x == mask).double()
        else:
            noisy = self._planner(x, lam_t[rows]).double().clamp(0.0, 1.0)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        scores = torch.where(noisy > 0, torch.log(noisy) + gumbel, torch.full_like(gumbel, -torch.inf))
        chosen = top_k_mask(scores, k[rows]) & (noisy > 0)
        out = xt.clone()
        out[rows] = process.sample_x0_where(x, denoiser(x, lam_t[rows]), chosen, generator)
        return out

    def uniform_step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
                     generator: torch.Generator | None) -> Tensor:
        prediction = denoiser(xt, lam_t) if self.planner is None or self.masked_denoiser is None else None
        if self.planner is None:
            noisy = process.noise_probability(xt, prediction, lam_t)
        else:
            noisy = self._planner(xt, lam_t).double().clamp(0.0, 1.0)
        denoise = noisy * expand_to_sites(unmask_probability(lam_t, lam_s), xt)
        u = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
        chosen = u < denoise
        if not bool(chosen.any()):
            return xt
        if self.masked_denoiser is not None:
            log_post = self.masked_log_probs(process, xt, noisy, chosen, generator)
        elif self.planner is None:
            log_post = process.noisy_x0_log_probs(xt, prediction, lam_t, chosen)
        else:   # p(x0 | x_t, noise) = (p - (1 - pi) 1[x0 = x_t])_+ / pi, renormalised
            probs = process.x0_log_probs(prediction, xt)[chosen].double().exp()
            clean = torch.zeros_like(probs).scatter(-1, xt[chosen][:, None], (1.0 - noisy[chosen])[:, None])
            log_post = torch.log((probs - clean).clamp_min(0.0))
        drawable = torch.isfinite(log_post).any(-1)              # a planner may call a certain site noise
        out = xt.clone()
        values = out[chosen]
        values[drawable] = sample_categorical(log_post[drawable], generator)
        out[chosen] = values
        return out

    def masked_log_probs(self, process: ForwardProcess, xt: Tensor, noisy: Tensor, chosen: Tensor,
                         generator: torch.Generator | None) -> Tensor:
        """log p(x0 | x_t with the sites drawn as noise masked) at the chosen sites: (n, K) float64. The noise
        pattern is z_d ~ Bernoulli(pi_d), forced to 1 where a site is chosen; MASK is the value K."""
        z = (torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device) < noisy) | chosen
        masked_input = torch.where(z, torch.full_like(xt, process.num_states), xt)
        unmasked = 1.0 - z.reshape(z.shape[0], -1).double().mean(1)
        lam = torch.logit(unmasked).clamp(-30.0, 30.0)
        log_probs = self._masked(masked_input, lam).x0_log_probs[chosen]
        return transform_x0_log_probs(log_probs, self.temperature, self.top_p, self.top_k)
