"""Block diffusion (BD3-LM, Arriola et al., ICLR 2025): autoregressive over blocks, masked diffusion within a block.

A property of the denoiser and its attention mask, not a new process (the process stays masking):

- ``denoiser.py``: ``BlockNetworkDenoiser`` (the vectorised [x_t ; x_0] training forward, the context denoiser of one
  block with or without the KV cache) and ``block_size_of``;
- ``loss.py``: the block bound (one noise level per block), its exact quadrature, BD3-LM's clipped mask rates;
- ``oracle.py``: ``BlockOracle``, the exact block denoiser of a small table, for exactness tests.

The attention masks are ``nn/block_mask.py``, the cache ``nn/kv_cache.py``, the decoding loop
``samplers/semi_autoregressive.py`` (docs/block-diffusion.md).
"""

from .denoiser import CLEAN_LEVEL, BlockNetworkDenoiser, ContextDenoiser, block_size_of
from .loss import block_elbo_integrand, clipped_lam_range, draw_block_noise, exact_block_bound, mask_pattern_weights
from .oracle import BlockOracle

__all__ = ["BlockNetworkDenoiser", "BlockOracle", "CLEAN_LEVEL", "ContextDenoiser", "block_elbo_integrand",
           "block_size_of", "clipped_lam_range", "draw_block_noise", "exact_block_bound", "mask_pattern_weights"]
