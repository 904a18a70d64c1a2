"""The key/value cache of a transformer's clean context (block diffusion's exact KV cache).

Reference: Arriola et al., "Block Diffusion" (BD3-LM), ICLR 2025, section 3.2 (sampling with a KV cache).

Each layer keeps the keys (rotated at their positions) and values of the clean context tokens it has seen,
(B, heads, P, head_dim); a query attends to [cache ; its own tokens]. The cache belongs with the backbone
(``SequenceTransformer.forward_positions``); block diffusion's decoding (``samplers/semi_autoregressive.py``)
decides what enters it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """keys[i], values[i]: layer i's (B, heads, P, head_dim) for the P cached tokens at ``positions`` (P,) long."""

    keys: list[Tensor]
    values: list[Tensor]
    positions: Tensor

    @property
    def length(self) -> int:
        return int(self.positions.shape[0])

    @property
    def batch(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    def extended(self, keys: list[Tensor], values: list[Tensor], positions: Tensor) -> "KVCache":
        """A new cache holding this one's tokens followed by the given ones (same layers, rows and heads)."""
        if len(keys) != len(self.keys):
            raise ValueError(f"the cache has {len(self.keys)} layers, got keys of {len(keys)}")
        return KVCache([torch.cat([a, b], dim=2) for a, b in zip(self.keys, keys)],
                       [torch.cat([a, b], dim=2) for a, b in zip(self.values, values)],
                       torch.cat([self.positions, positions.to(self.positions.device)]))
