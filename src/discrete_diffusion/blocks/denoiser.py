"""Block diffusion's denoiser: p(x0 of block b | x_t of block b, x0 of the blocks before b) from a sequence
transformer, in one vectorised forward for training and with an exact KV cache for sampling.

Reference: Arriola et al., "Block Diffusion: Interpolating Between Autoregressive and Diffusion Language Models"
(BD3-LM), ICLR 2025: section 3.1 (the model is autoregressive over blocks of B tokens and a masked-diffusion
denoiser within a block), section 3.2 and Fig. 2 (training in one forward over [x_t ; x_0] under the block-diffusion
mask; sampling block by block with the clean blocks' keys and values cached).

The process stays masking; block diffusion is a property of the denoiser and its attention mask (DESIGN.md
section 4). Shapes: L = sequence length, B_s = ``block_size``, N = L / B_s blocks.

- Training / likelihood: ``model(x_t, lam, clean=x0)`` with x_t, x0 (B, L) long and one noise level per block,
  lam (B, N), runs the backbone once on the 2L tokens [x_t ; x0] at positions [0..L-1 ; 0..L-1] under
  ``nn.block_mask.block_diffusion_mask`` and returns the SUBS prediction for x_t's L sites: the sites of block b
  are predicted from x_t of block b and x0 of blocks < b only (the mask is the proof; a test checks it against
  running each block separately).
- The clean copy carries no noise-level input: with ``time_conditioning`` its conditioning is the fixed level of
  alpha = 1 (``CLEAN_LEVEL``), without it there is none; so a finished block's keys and values never change.
- Sampling: ``context_denoiser(context, cache, start)`` is a plain ``Denoiser`` (x_block (B, n), lam (B,)) ->
  Prediction over the n sites of the block at positions start..start+n-1, given the clean context (B, P) at
  positions 0..P-1 (P = start): without a cache it recomputes [context ; x_block] under ``block_causal_mask``,
  with one it attends to the cached keys/values. Any masking sampler runs on it unchanged
  (``samplers/semi_autoregressive.py``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from ..denoiser import NetworkDenoiser, noise_level_input
from ..nn.block_mask import block_causal_mask, block_diffusion_mask, check_block_size
from ..nn.kv_cache import KVCache
from ..processes.base import ForwardProcess, Prediction

__all__ = ["BlockModel", "BlockNetworkDenoiser", "ContextDenoiser", "CLEAN_LEVEL", "block_size_of"]

#: The noise-level input of clean tokens when the network is time-conditioned: logit(alpha) = +inf (alpha = 1).
CLEAN_LEVEL = 1.0


class BlockModel(Protocol):
    """A block-diffusion model as the block bound calls it: x_t (B, L) long, lam (B, N) (one level per block),
    clean = x0 (B, L) long -> the Prediction of every block given the clean blocks before it."""

    def __call__(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None,
                 clean: Tensor | None = None) -> Prediction: ...


def block_size_of(denoiser: object) -> int | None:
    """The block size of a block-diffusion model (``BlockNetworkDenoiser``, ``blocks.oracle.BlockOracle``), looked up
    through wrappers that keep the model as ``.model``, ``.denoiser`` or ``.module`` (conditional, autocast, DDP);
    None for a plain denoiser."""
    seen = 0
    while denoiser is not None and seen < 8:
        size = getattr(denoiser, "block_size", None)
        if size is not None:
            return int(size)
        denoiser = next((getattr(denoiser, a) for a in ("model", "denoiser", "module") if hasattr(denoiser, a)), None)
        seen += 1
    return None


def per_block_levels(lam: Tensor, batch: int, num_blocks: int) -> Tensor:
    """One noise level per block (B, N) from lam (B, N), (B,) or a scalar."""
    lam = torch.as_tensor(lam)
    if lam.dim() == 0:
        lam = lam.expand(batch)
    if lam.dim() == 1:
        lam = lam[:, None].expand(batch, num_blocks)
    if lam.shape != (batch, num_blocks):
        raise ValueError(f"block noise levels must have shape ({batch}, {num_blocks}) (one per block), got "
                         f"{tuple(lam.shape)}")
    return lam


class BlockNetworkDenoiser(NetworkDenoiser):
    """A ``NetworkDenoiser`` over a sequence transformer (``forward_positions``) for block diffusion with blocks of
    ``block_size`` tokens (module docstring). Its parameters are the backbone's: checkpoints load into either class."""

    def __init__(self, backbone: nn.Module, process: ForwardProcess, parameterization: str, block_size: int) -> None:
        super().__init__(backbone, process, parameterization)
        if process.name != "masking":
            raise ValueError(f"model.block_size needs process.name=masking (block diffusion is masked diffusion "
                             f"within a block), got {process.name!r}; see docs/block-diffusion.md for uniform")
        if not hasattr(backbone, "forward_positions") or len(getattr(backbone, "site_shape", ())) != 1:
            raise ValueError("model.block_size needs model.backbone=transformer on sequences (1-D sites)")
        self.length = int(backbone.site_shape[0])
        self.block_size = check_block_size(block_size, self.length)
        self._masks: dict[tuple[str, int], Tensor] = {}

    @property
    def num_blocks(self) -> int:
        return self.length // self.block_size

    def _levels(self, lam: Tensor) -> Tensor | None:
        return noise_level_input(lam) if self.backbone.time_conditioning else None

    def _training_mask(self, device: torch.device) -> Tensor:
        key = (str(device), self.length)
        if key not in self._masks:
            self._masks[key] = block_diffusion_mask(self.length, self.block_size, device)
        return self._masks[key]

    def forward(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None, clean: Tensor | None = None) -> Prediction:
        """x_t (B, L) long, lam (B, N) (one level per block; (B,) = the same for all), clean = x0 (B, L) long ->
        the Prediction of p(x0 | x_t) per block given the clean blocks before it. ``clean=None`` is allowed only
        with a single block (block_size = L), where it is the plain masked-diffusion denoiser."""
        batch = xt.shape[0]
        if clean is None:
            if self.num_blocks != 1:
                raise ValueError(f"a block-diffusion model (model.block_size={self.block_size} < L={self.length}) "
                                 "predicts a block given the clean blocks before it: call it with clean=x0, or sample "
                                 "with semi-autoregressive decoding (ddiff sample does)")
            return super().forward(xt, lam.reshape(batch, -1)[:, 0], labels)
        if xt.shape != (batch, self.length) or clean.shape != xt.shape:
            raise ValueError(f"x_t and clean must both have shape (B, {self.length}), got {tuple(xt.shape)} and "
                             f"{tuple(clean.shape)}")
        lam = per_block_levels(lam, batch, self.num_blocks).to(xt.device)
        if self.num_blocks == 1:          # one block sees no clean token: the plain forward, at half the tokens
            return super().forward(xt, lam[:, 0], labels)
        positions = torch.arange(self.length, device=xt.device)
        levels = self._levels(lam)
        if levels is not None:
            noisy = levels.repeat_interleave(self.block_size, dim=1)
            levels = torch.cat([noisy, torch.full_like(noisy, CLEAN_LEVEL)], dim=1)              # (B, 2L)
        out, _ = self.backbone.forward_positions(torch.cat([xt, clean], dim=1), levels,
                                                 torch.cat([positions, positions]), self._training_mask(xt.device),
                                                 labels, outputs=self.length)      # no head on the clean copy
        return self.process.prediction_from_output(out.float(), xt, lam[:, 0],
                                                   self.parameterization)

    # ----- sampling: context, cache ---------------------------------------------------------------------------
    def encode(self, context: Tensor, labels: Tensor | None = None, past: KVCache | None = None) -> KVCache:
        """The cache after clean tokens ``context`` (B, n) at the positions following ``past`` (0.. when None), in
        one forward: they attend to ``past`` and, block-causally, to each other."""
        start = 0 if past is None else past.length
        positions = torch.arange(start, start + context.shape[1], device=context.device)
        mask = None
        if context.shape[1] > self.block_size or start % self.block_size:
            keys = torch.arange(0, start + context.shape[1], device=context.device)
            mask = block_causal_mask(positions, keys, self.block_size)
        levels = None if not self.backbone.time_conditioning else torch.full(context.shape, CLEAN_LEVEL,
                                                                             device=context.device)
        _, cache = self.backbone.forward_positions(context, levels, positions, mask, labels, past=past, keep=True,
                                                   outputs=0)
        if cache is None:                           # an empty context
            raise ValueError("encode needs at least one context token")
        return cache

    def context_denoiser(self, context: Tensor, cache: KVCache | None = None,
                         labels: Tensor | None = None) -> "ContextDenoiser":
        """The denoiser of the block that follows ``context`` (B, P) (P a multiple of block_size, P + n <= L):
        cached when ``cache`` holds that context's keys and values (``encode``), else recomputed."""
        return ContextDenoiser(self, context, cache, labels)


class ContextDenoiser:
    """A ``Denoiser`` over one block (x_block (B, n) long, lam (B,)) -> Prediction (sites (B, n)), given clean
    ``context`` (B, P) at positions 0..P-1 and, optionally, its ``cache`` (then the context tokens are not re-read).
    ``rows(index)`` restricts it to some batch rows (a sampler's ``cache`` option calls it on changed rows only)."""

    def __init__(self, model: BlockNetworkDenoiser, context: Tensor, cache: KVCache | None,
                 labels: Tensor | None = None) -> None:
        self.model, self.context, self.cache, self.labels = model, context, cache, labels
        if context.shape[1] % model.block_size:
            raise ValueError(f"the context length {context.shape[1]} must be a multiple of the block size "
                             f"{model.block_size}")
        if cache is not None and (cache.length != context.shape[1] or cache.batch != context.shape[0]):
            raise ValueError(f"the cache holds {cache.batch} x {cache.length} tokens but the context is "
                             f"{tuple(context.shape)}")

    def rows(self, index: Tensor) -> "ContextDenoiser":
        cache = None if self.cache is None else KVCache([k[index] for k in self.cache.keys],
                                                        [v[index] for v in self.cache.values], self.cache.positions)
        return ContextDenoiser(self.model, self.context[index], cache,
                               None if self.labels is None else self.labels[index])

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        model, backbone = self.model, self.model.backbone
        batch, n = xt.shape
        start = self.context.shape[1]
        if batch != self.context.shape[0]:
            raise ValueError(f"the block has {batch} rows but the context {self.context.shape[0]}")
        if start + n > model.length:
            raise ValueError(f"context {start} + block {n} tokens exceed the model's length {model.length}")
        lam = per_block_levels(lam, batch, 1)[:, 0].to(xt.device)
        levels = model._levels(lam)
        if levels is not None:
            levels = levels[:, None].expand(batch, n)
        if self.cache is not None:
            positions = torch.arange(start, start + n, device=xt.device)
            out, _ = backbone.forward_positions(xt, levels, positions, None, self.labels, past=self.cache)
        else:
            tokens = torch.cat([self.context.to(xt.device), xt], dim=1)
            positions = torch.arange(start + n, device=xt.device)
            mask = block_causal_mask(positions, positions, model.block_size) if start else None
            if levels is not None:
                levels = torch.cat([torch.full((batch, start), CLEAN_LEVEL, device=xt.device), levels], dim=1)
            out, _ = backbone.forward_positions(tokens, levels, positions, mask, self.labels)
            out = out[:, :, start:]
        return model.process.prediction_from_output(out.float(), xt, lam, model.parameterization)
