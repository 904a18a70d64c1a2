"""Confidence-threshold parallel decoding for masked diffusion (Fast-dLLM's threshold rule).

Reference: Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel
Decoding", 2025 (arXiv:2505.22618), section 3.3: at each call commit every masked site whose confidence is at least
tau, and the most confident one when none is (so every call commits at least one site).

The loop, the confidences and the blocks are ``ParallelDecodingSampler``'s (samplers/parallel_base.py).
tau = 1 commits, beside the most confident site, only sites whose value is certain (confidence 1 means a point
mass for all three confidences), which is exact with an exact denoiser (ancestral sampling in a confidence order)
at about one call per uncertain site. Smaller tau commits several sites per call, each drawn from its own
marginal: approximate, with the deviation measured against the exact table in docs/samplers.md.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .parallel_base import ParallelDecodingSampler


class ThresholdSampler(ParallelDecodingSampler):
    name = "threshold"

    def __init__(self, num_steps: int = 1, tau: float = 0.9, confidence: str = "probability", block_size: int = 0,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 approx_cache: str | None = None, refresh_every: int = 0,
                 refresh_ratio: float | None = None) -> None:
        """``tau``: the confidence a masked site needs to be committed beside the most confident one, in (0, 1]
        (confidences lie in [0, 1]; tau = 1 is the exact one-uncertain-site-per-call limit). ``approx_cache``
        ("prefix" | "dual", needs ``block_size``) and ``refresh_every``: the APPROXIMATE block-wise KV cache of
        samplers/approx_cache.py; ("partial" | "vverify") with ``refresh_ratio`` and ``refresh_every``: the APPROXIMATE
        partial-refresh cache of samplers/partial_cache.py (default: none)."""
        super().__init__(num_steps, confidence, block_size, temperature, top_p, top_k, approx_cache, refresh_every,
                         refresh_ratio)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or not 0 < tau <= 1:
            raise ValueError(f"threshold: tau must be a number in (0, 1], got {tau!r}")
        self.tau = float(tau)

    def choose(self, confidence: Tensor, eligible: Tensor) -> Tensor:
        return (eligible & (confidence >= self.tau)) | self.most_confident(confidence, eligible)

    def rule_tag(self) -> str:
        return f"-tau{self.tau:g}"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "tau": self.tau}
