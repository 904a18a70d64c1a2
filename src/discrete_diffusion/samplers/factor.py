"""Factor-rule parallel decoding for masked diffusion (Fast-dLLM's factor-based strategy).

Reference: Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel
Decoding", 2025 (arXiv:2505.22618), section 3.3 and its Theorem 1: with the eligible masked sites' confidences
sorted c_(1) >= c_(2) >= ..., commit the n most confident sites for the largest n with (n + 1)(1 - c_(n)) < f
(at least one). The left side grows with n, so those n form a prefix of the sorted sites. Their theorem: when
the product of marginals and the joint both put probability above 1/2 on the greedy answer and
(n + 1) epsilon <= 1 with c >= 1 - epsilon, greedy parallel and sequential decoding agree; f plays (n + 1) epsilon.

The loop, the confidences and the blocks are ``ParallelDecodingSampler``'s (samplers/parallel_base.py). A factor
f <= 2 (1 - c_(1)) for every site (f small) commits one site per call: exact with an exact denoiser. Larger f
commits more per call and is approximate; the deviation is measured in docs/samplers.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .confidence import top_k_mask
from .parallel_base import ParallelDecodingSampler


def factor_counts(confidence: Tensor, eligible: Tensor, factor: float) -> Tensor:
    """(b,) long: the largest n with (n + 1)(1 - c_(n)) < factor over each row's eligible confidences sorted in
    decreasing order, at least 1 (0 for a row with nothing eligible)."""
    ordered = torch.sort(torch.where(eligible, confidence, torch.full_like(confidence, -torch.inf)),
                         dim=1, descending=True).values
    n = torch.arange(1, ordered.shape[1] + 1, device=confidence.device, dtype=torch.float64)
    passes = ((n + 1) * (1.0 - ordered) < factor) & torch.isfinite(ordered)
    count = passes.long().cumprod(1).sum(1)          # the prefix that passes (the product grows with n)
    return torch.where(eligible.any(1), count.clamp_min(1), torch.zeros_like(count))


class FactorSampler(ParallelDecodingSampler):
    name = "factor"

    def __init__(self, num_steps: int = 1, factor: float = 1.0, confidence: str = "probability",
                 block_size: int = 0, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 approx_cache: str | None = None, refresh_every: int = 0,
                 refresh_ratio: float | None = None) -> None:
        """``factor``: f > 0 of the rule (n + 1)(1 - c_(n)) < f; larger commits more sites per call.
        ``approx_cache`` / ``refresh_every`` / ``refresh_ratio``: the APPROXIMATE block-wise KV cache
        (samplers/approx_cache.py) or partial-refresh caches (samplers/partial_cache.py)."""
        super().__init__(num_steps, confidence, block_size, temperature, top_p, top_k, approx_cache, refresh_every,
                         refresh_ratio)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or not factor > 0:
            raise ValueError(f"factor: factor must be a finite number > 0, got {factor!r}")
        self.factor = float(factor)

    def choose(self, confidence: Tensor, eligible: Tensor) -> Tensor:
        chosen = top_k_mask(confidence, factor_counts(confidence, eligible, self.factor)) & eligible
        return chosen | self.most_confident(confidence, eligible)

    def rule_tag(self) -> str:
        return f"-f{self.factor:g}"

    def config(self) -> dict[str, Any]:
        return {**super().config(), "factor": self.factor}
