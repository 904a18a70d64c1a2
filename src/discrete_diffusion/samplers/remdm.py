"""ReMDM: masked-diffusion sampling with remasking.

Reference: Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
Scaling", 2025.

Each step draws x_s from the process's ReMDM posterior (``remasking_step``: ``remasking_bridge`` with x0 ~
p(x0 | x_t) drawn only at the sites that unmask): unmasked sites are remasked with probability sigma_t, masked sites
unmask with the probability that keeps the
marginals q_s(. | x0). sigma_t <= sigma_max(t) = min(1, (1 - alpha_s) / alpha_t) (the process's
``max_remask_probability``). Strategies (the paper's names):
- "cap":     sigma_t = min(eta, sigma_max(t));
- "rescale": sigma_t = eta * sigma_max(t), eta in [0, 1];
  both only while t <= ``t_on`` (default 1: always; t_on < 1 is the paper's "switch": plain MDLM steps first);
- "loop": three phases on the grid t_k = 1 - k / num_steps. For t > t_on plain MDLM steps (sigma = 0) take alpha
  from 0 to ``alpha_on``, linearly in t; for t_off <= t <= t_on alpha stays at alpha_on and every step remasks
  with sigma = min(eta, sigma_max) while unmasking as many sites in expectation (the marginals stay q(alpha_on)):
  the model revises its own tokens; for t < t_off plain MDLM steps take alpha from alpha_on to 1. The paper's
  scripts use eta = 0.02, t_on = 0.55, t_off = 0.05, alpha_on = 0.9 (the defaults here); the alpha path within
  the first and last phases (linear in t) is this library's choice, and neither ``schedule`` nor ``grid`` is used
  by "loop".
- "conf": remasking by confidence. Each unmasked site keeps the probability psi that p(x0 | x_t) gave its value
  when it unmasked; the remasking probability is spread over a sequence's unmasked sites in proportion to
  softmax(-psi) (least confident first): sigma_d = softmax_d(-psi) sigma_max(t), so the sites' sigmas sum to
  sigma_max(t) in each row. Masked sites have sigma = 0 (they unmask at the plain MDLM rate), as in the paper's
  code; a remasked site forgets its psi. ``eta`` is not used.
eta = 0 is the plain bridge (MDLM) sampler in law. Masking only. Remasking corrects a model's mistakes at
inference time; with an exact denoiser it adds per-site (factorisation) error that does not vanish with more
steps for a fixed eta, so it is not expected to reach the table exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import ForwardProcess
from ..schedules import Schedule
from .base import Sampler

STRATEGIES = ("cap", "rescale", "loop", "conf")


class ReMDMSampler(Sampler):
    name = "remdm"
    supported_processes = ("masking",)

    def __init__(self, num_steps: int = 100, final_denoise: bool = True, strategy: str = "cap",
                 eta: float = 0.02, t_on: float | None = None, t_off: float = 0.05, alpha_on: float = 0.9,
                 temperature: float = 1.0, top_p: float = 1.0, cache: bool = False,
                 grid: str | None = None, top_k: int = 0) -> None:
        super().__init__(num_steps, final_denoise, temperature, top_p, cache, grid, top_k)
        if strategy not in STRATEGIES:
            raise ValueError(f"remdm: strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"remdm: eta must lie in [0, 1], got {eta}")
        t_on = (0.55 if strategy == "loop" else 1.0) if t_on is None else float(t_on)
        if strategy == "loop" and not (0.0 <= float(t_off) < t_on <= 1.0 and 0.0 < float(alpha_on) < 1.0):
            raise ValueError(f"remdm loop: need 0 <= t_off < t_on <= 1 and 0 < alpha_on < 1, got t_off={t_off}, "
                             f"t_on={t_on}, alpha_on={alpha_on}")
        if not 0.0 <= t_on <= 1.0:
            raise ValueError(f"remdm: t_on must lie in [0, 1], got {t_on}")
        self.strategy, self.eta = strategy, float(eta)
        self.t_on, self.t_off, self.alpha_on = t_on, float(t_off), float(alpha_on)
        self._lam_on = -math.inf
        self._confidence: Tensor | None = None     # "conf": -psi per site, -inf where masked

    def begin(self, x: Tensor) -> None:
        self._confidence = torch.full(x.shape, -math.inf, dtype=torch.float64, device=x.device)

    def time_grid(self, schedule: Schedule, t_start: float | None = None) -> Tensor:
        """The schedule's grid (from ``t_start``), or for "loop" its three-phase grid (see the module docstring)."""
        if self.strategy != "loop":
            grid = super().time_grid(schedule, t_start)
            self._lam_on = float(torch.logit(schedule.alpha(torch.tensor(self.t_on, dtype=torch.float64))))
            return grid
        if t_start is not None:
            raise ValueError("remdm: strategy 'loop' runs its own three-phase grid from the prior at t = 1 and cannot "
                             f"start from a given state (t = {t_start}); use strategy 'cap', 'rescale' or 'conf'")
        t = torch.linspace(1.0, 0.0, self.num_steps + 1, dtype=torch.float64)
        a_on = self.alpha_on
        alpha = torch.where(t > self.t_on, a_on * (1.0 - t) / (1.0 - self.t_on),
                            torch.where(t >= self.t_off, torch.full_like(t, a_on),
                                        1.0 - (1.0 - a_on) * t / max(self.t_off, 1e-12)))
        lam = torch.logit(alpha.clamp(0.0, 1.0))
        if self.final_denoise:
            lam[-1] = torch.inf
        return lam

    def remask_probability(self, process: ForwardProcess, lam_t: Tensor, lam_s: Tensor) -> Tensor:
        """sigma_t (B,) float64 for the chosen strategy."""
        sigma_max = process.max_remask_probability(lam_t, lam_s)
        if self.strategy in ("cap", "loop"):
            return sigma_max.clamp_max(self.eta)
        return self.eta * sigma_max

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        if not hasattr(process, "remasking_step"):
            raise ValueError(f"sampler 'remdm' needs the masking process, got {process.name!r}")
        prediction = denoiser(xt, lam_t)
        if math.isinf(float(lam_s[0])):
            return process.sample_x0_where(xt, prediction, xt == process.mask_index, generator)
        if self.strategy == "loop":
            remask = bool((lam_t == lam_s).all())                  # the loop phase: alpha held at alpha_on
        else:
            remask = float(lam_t[0]) >= self._lam_on - 1e-9       # t <= t_on ("switch"; always for t_on = 1)
        if self.strategy == "conf":
            return self.confidence_step(process, prediction, xt, lam_t, lam_s, remask, generator)
        sigma = self.remask_probability(process, lam_t, lam_s) if remask else torch.zeros_like(lam_t.double())
        return process.remasking_step(xt, prediction, lam_t, lam_s, sigma, generator)

    def confidence_step(self, process: ForwardProcess, prediction, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
                        remask: bool, generator: torch.Generator | None) -> Tensor:
        """The "conf" strategy: per-site sigma = softmax(-psi) over a row's unmasked sites times sigma_max."""
        if self._confidence is None or self._confidence.shape != xt.shape:
            self.begin(xt)
        scores = self._confidence.reshape(xt.shape[0], -1)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0).reshape(xt.shape)   # rows with none unmasked: 0
        sigma_max = process.max_remask_probability(lam_t, lam_s)
        sigma = weights * sigma_max.reshape((-1,) + (1,) * (xt.dim() - 1)) if remask else torch.zeros_like(weights)
        out = process.remasking_step(xt, prediction, lam_t, lam_s, sigma, generator)
        masked = xt == process.mask_index
        unmasked_now = masked & (out != process.mask_index)
        log_probs = process.x0_log_probs(prediction, xt)
        psi = torch.gather(log_probs, -1, out.clamp_max(process.num_states - 1)[..., None])[..., 0].double().exp()
        self._confidence = torch.where(unmasked_now, -psi, self._confidence)
        self._confidence = self._confidence.masked_fill(~masked & (out == process.mask_index), -math.inf)
        return out

    def config(self) -> dict:
        out = {**super().config(), "strategy": self.strategy, "eta": self.eta, "t_on": self.t_on}
        if self.strategy == "loop":
            out.update(t_off=self.t_off, alpha_on=self.alpha_on)
        return out
