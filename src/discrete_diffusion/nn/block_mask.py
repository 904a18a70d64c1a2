"""Attention masks of block diffusion.

Reference: Arriola et al., "Block Diffusion: Interpolating Between Autoregressive and Diffusion Language Models"
(BD3-LM), ICLR 2025, section 3 and Fig. 2 (the vectorised training mask over [x_t ; x_0]).

A sequence of L positions is cut into blocks of ``block_size`` tokens; position p lies in block p // block_size.
The model is autoregressive over blocks and a masked-diffusion denoiser within a block. Masks are boolean,
True = may attend (``torch.nn.functional.scaled_dot_product_attention``'s convention), shape (queries, keys).

- ``block_causal_mask``: clean tokens see clean tokens of their own and earlier blocks (the clean copy during
  training; the context / KV cache during sampling).
- ``block_diffusion_mask``: the training mask over the 2L positions of [x_t ; x_0] (noisy copy first):
  a noisy token of block b sees the noisy tokens of block b and the clean tokens of blocks < b; a clean token of
  block b sees the clean tokens of blocks <= b and no noisy token. The noisy copy's outputs are then exactly those
  of running, for each b separately, [x_0 blocks < b ; x_t block b] under ``block_causal_mask`` (what sampling
  runs), in one forward.

"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_causal_mask", "block_diffusion_mask", "check_block_size"]


def check_block_size(block_size: int, length: int) -> int:
    """``block_size`` as an int dividing ``length`` (ValueError naming both otherwise)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"model.block_size must be a positive integer, got {block_size!r}")
    if length % block_size:
        divisors = ", ".join(str(d) for d in range(1, min(length, 64) + 1) if length % d == 0)
        raise ValueError(f"model.block_size={block_size} must divide the sequence length {length} "
                         f"(divisors up to 64: {divisors})")
    return int(block_size)


def block_causal_mask(query_positions: Tensor, key_positions: Tensor, block_size: int) -> Tensor:
    """(Q, K) bool: key block <= query block (positions (Q,) and (K,) long)."""
    return (key_positions[None, :] // block_size) <= (query_positions[:, None] // block_size)


def block_diffusion_mask(length: int, block_size: int, device: torch.device | str | None = None) -> Tensor:
    """(2L, 2L) bool mask over [x_t ; x_0] (module docstring). ``length`` must be a multiple of ``block_size``."""
    check_block_size(block_size, length)
    block = torch.arange(length, device=device) // block_size
    q, k = block[:, None], block[None, :]
    noisy_noisy = q == k
    noisy_clean = k < q
    clean_noisy = torch.zeros(length, length, dtype=torch.bool, device=device)
    clean_clean = k <= q
    top = torch.cat([noisy_noisy, noisy_clean], dim=1)
    bottom = torch.cat([clean_noisy, clean_clean], dim=1)
    return torch.cat([top, bottom], dim=0)
