"""A bidirectional transformer backbone for sequences, conditioned on the noise level by adaLN-Zero.

References:
- Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), ICCV 2023: adaLN-Zero blocks
  (per-block shift/scale/gate regressed from the conditioning vector, the gates zero-initialised so
  each block starts as the identity) and a final adaLN layer.
- Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021: rotary positions.
  (Learned absolute positions at std 0.02 trained badly here; rotary trained at once; DESIGN.md.)
- Vaswani et al., "Attention Is All You Need", 2017.

Layout, for features ``(B, C_in, L)`` or token indices ``(B, L)`` long in ``0..C_in-1``::

    h = Linear(C_in -> dim)(features.transpose)              (B, L, dim)
      = W[:, tokens].T + b   for tokens, features = one_hot(tokens)  (an embedding lookup; no one-hot tensor)
    h = h + p[:L]            absolute positions (nn/positions.py; position_embedding="none": rotary only)
    c = NoiseLevelEmbedding(dim)(noise_level)                (B, dim)
    depth x  h = h + gate1(c) * Attn(LN(h) * (1 + scale1(c)) + shift1(c))      rotary q/k, SDPA
             h = h + gate2(c) * MLP (LN(h) * (1 + scale2(c)) + shift2(c))
    out = Linear(dim -> C_out)(LN(h) * (1 + scale(c)) + shift(c))            (B, C_out, L)

The block modulations are zero-initialised (DiT), so every block is the identity at initialisation; the
output Linear is zero-initialised, so the backbone outputs exactly 0 at initialisation. The final
layer's modulation keeps PyTorch's default initialisation (DiT zeroes it too): the output is still 0,
and the noise level reaches the output from the first optimisation step instead of the second.

Site shapes with more than one axis (e.g. ``(H, W)`` or ``(C, H, W)``) are flattened into ``L`` in
row-major (raster) order, so rotary positions are 1-D raster positions; the output is reshaped back.

Token input: a process whose features are one-hot (masking, uniform, matrix) gives the backbone x_t itself
(``denoiser.backbone_input``). The lookup reads the columns of ``input_proj.weight`` (an ``nn.Embedding(C_in, dim)``
weight is that matrix transposed) and adds its bias, so the parameters, their names and shapes are those of the
one-hot path: checkpoints (and optimizer states) written before the token path existed load unchanged, and the
two inputs give the same output for the same weights. At a GPT-2-sized vocabulary this drops the
(B, K + 1, L) float input and the copy the Linear keeps for its backward.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, NoiseLevelEmbedding, _prepare_inputs, add_class_embedding
from .kv_cache import KVCache
from .positions import AbsolutePositionEmbedding

__all__ = [
    "PreNormBlock",
    "RotaryEmbedding",
    "SelfAttention",
    "FeedForward",
    "AdaLNZeroBlock",
    "BlockParts",
    "SequenceTransformer",
    "embed_tokens",
]


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for ``max_len`` positions and an even ``head_dim``.

    Position ``p`` rotates the pair ``(x_i, x_{i + head_dim/2})`` by the angle ``p * base^(-2i/head_dim)``
    ("rotate-half" layout). Shapes: ``(B, heads, L, head_dim)`` -> same, for ``L <= max_len``.
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dimension >= 2, got {head_dim}")
        self.head_dim, self.max_len = head_dim, max_len
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)                   # (max_len, head_dim)
        self.register_buffer("cos", angles.cos().to(torch.float32), persistent=False)
        self.register_buffer("sin", angles.sin().to(torch.float32), persistent=False)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Rotate ``x`` (B, heads, L, head_dim) at positions 0..L-1, or at ``positions`` (L,) long (< max_len), or
        at per-row positions (B, L) long."""
        length = x.shape[-2]
        if positions is None:
            if length > self.max_len:
                raise ValueError(f"sequence length {length} exceeds the rotary table size {self.max_len}")
            cos, sin = self.cos[:length].to(x.dtype), self.sin[:length].to(x.dtype)
        else:
            if positions.numel() and int(positions.max()) >= self.max_len:
                raise ValueError(f"position {int(positions.max())} exceeds the rotary table size {self.max_len}")
            cos, sin = self.cos[positions].to(x.dtype), self.sin[positions].to(x.dtype)
            if positions.dim() == 2:                        # (B, L, head_dim) -> (B, 1, L, head_dim)
                cos, sin = cos[:, None], sin[:, None]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary q/k and ``scaled_dot_product_attention``.

    ``causal=True`` lets position ``i`` attend to positions ``<= i`` only (for autoregressive models).
    Shapes: ``(B, L, dim)`` -> ``(B, L, dim)``.
    """

    def __init__(self, dim: int, heads: int, max_len: int, dropout: float = 0.0, causal: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.causal, self.dropout = heads, causal, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rotary = RotaryEmbedding(dim // heads, max_len)

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x)[0]

    def attend(self, x: Tensor, mask: Tensor | None = None, positions: Tensor | None = None,
               past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Attention of ``x`` (B, S, dim) at ``positions`` (S,) long (default 0..S-1) over the keys
        [past ; x], under ``mask`` (S, P + S) bool (True = attend; None = all, or causal for a causal layer).
        ``past``: cached (keys, values), each (B, heads, P, head_dim), keys already rotated. Returns the output
        (B, S, dim) and the rotated keys and values of ``x``, each (B, heads, S, head_dim) (what a cache keeps)."""
        out, _, k, v = self.attend_parts(x, mask, positions, past)
        return out, k, v

    def attend_parts(self, x: Tensor, mask: Tensor | None = None, positions: Tensor | None = None,
                     past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``attend`` that also returns the rotated queries (B, heads, S, head_dim): (output, q, k, v)."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2))
        causal = self.causal and mask is None and past is None
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, length, dim)), q, k, v


class FeedForward(nn.Module):
    """``Linear(dim -> hidden) -> GELU(tanh) -> dropout -> Linear(hidden -> dim)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x), approximate="tanh")))


def _per_position(t: Tensor) -> Tensor:
    """A conditioning tensor (B, dim) as (B, 1, dim); a per-position one (B, S, dim) as it is."""
    return t[:, None, :] if t.dim() == 2 else t


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + _per_position(scale)) + _per_position(shift)


class BlockParts(NamedTuple):
    """An ``AdaLNZeroBlock``'s output and intermediates for B rows, S positions: ``out`` (B, S, dim); ``queries``,
    ``keys`` (rotated) and ``values`` (B, heads, S, head_dim); ``attn_out`` y and ``mlp_out`` m (B, S, dim), the
    residual branches before their gates; ``mid`` (B, S, dim), the residual stream between them (the MLP's input
    before its LayerNorm): out = mid + gate2 m, mid = h + gate1 y."""

    out: Tensor
    queries: Tensor
    keys: Tensor
    values: Tensor
    attn_out: Tensor
    mid: Tensor
    mlp_out: Tensor


class AdaLNZeroBlock(nn.Module):
    """DiT block: adaLN-modulated attention and MLP, each gated; the modulation Linear starts at zero.

    Shapes: ``h`` ``(B, L, dim)``, ``c`` ``(B, dim)`` -> ``(B, L, dim)``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, max_len: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, max_len, dropout=dropout, causal=False)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, int(round(dim * mlp_ratio)), dropout)
        self.dropout = nn.Dropout(dropout)
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return self.forward_kv(h, c)[0]

    def forward_kv(self, h: Tensor, c: Tensor, mask: Tensor | None = None, positions: Tensor | None = None,
                   past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The block with an attention mask, positions and cached keys/values (``SelfAttention.attend``); ``c``
        (B, dim) or per position (B, S, dim). Returns h (B, S, dim) and this layer's keys and values of h."""
        parts = self.forward_parts(h, c, mask, positions, past)
        return parts.out, parts.keys, parts.values

    def forward_parts(self, h: Tensor, c: Tensor, mask: Tensor | None = None, positions: Tensor | None = None,
                      past: tuple[Tensor, Tensor] | None = None) -> BlockParts:
        """``forward_kv`` with the block's intermediate tensors (``BlockParts``; what the partial-refresh cache
        keeps, nn/partial_refresh.py)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c)).chunk(6, dim=-1)
        y, q, k, v = self.attn.attend_parts(_modulate(self.norm1(h), shift1, scale1), mask, positions, past)
        mid = h + _per_position(gate1) * self.dropout(y)
        m = self.mlp(_modulate(self.norm2(mid), shift2, scale2))
        return BlockParts(mid + _per_position(gate2) * self.dropout(m), q, k, v, y, mid, m)


class PreNormBlock(nn.Module):
    """Unconditioned pre-LayerNorm block (GPT-2 style), optionally causal.

    Shapes: ``(B, L, dim)`` -> ``(B, L, dim)``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, max_len: int, dropout: float,
                 causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, max_len, dropout=dropout, causal=causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(round(dim * mlp_ratio)), dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.dropout(self.attn(self.norm1(h)))
        return h + self.dropout(self.mlp(self.norm2(h)))


def embed_tokens(linear: nn.Linear, tokens: Tensor) -> Tensor:
    """``linear(one_hot(tokens, in_features))`` as a lookup: ``(...)`` long -> ``(..., out_features)``.

    Row v of ``linear.weight.T`` (column v of the weight) is what the one-hot vector of v selects; under autocast
    the result takes the autocast dtype, as the Linear's output would."""
    h = F.embedding(tokens, linear.weight.t())
    if linear.bias is not None:
        h = h + linear.bias
    if torch.is_autocast_enabled(h.device.type):
        h = h.to(torch.get_autocast_dtype(h.device.type))
    return h


class SequenceTransformer(nn.Module):
    """Bidirectional transformer backbone (registry name ``"transformer"``); see the module docstring.

    Args:
        in_channels: ``C_in`` (e.g. ``K + 1`` one-hot channels for the masking process).
        out_channels: ``C_out``.
        seq_len: number of positions ``L``, or a site shape (flattened to ``L = prod(shape)`` in
            raster order).
        dim: model width; ``dim / heads`` must be even (rotary).
        depth: number of blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        dropout: dropout in attention, MLP and on the residual branches.
        num_classes: C > 0 adds a class embedding (C + 1 rows, the last the null class) to the noise-level
            embedding; 0 (default) is unconditional.
        position_embedding: "sinusoidal" (default), "learned" or "none": an absolute position embedding added
            to the input embedding (nn/positions.py); "none" is rotary only, the architecture of runs written
            before the option, which cannot tell apart sites that hold the same token (all masked).
        time_conditioning: False drops the noise-level input (no ``noise_embedding``; the conditioning vector is
            0, plus the class embedding): the network then predicts p(x0 | x_t) from x_t alone (MDLM, BD3-LM).

    Shapes:
        ``features`` ``(B, C_in, *site_shape)`` float, or token indices ``(B, *site_shape)`` long in
        ``0..C_in-1`` (read as their one-hot features, without building them), ``noise_level`` ``(B,)`` float
        in ``[-1, 1]`` -> ``(B, C_out, *site_shape)``. ``site_shape`` is ``(seq_len,)`` or the shape passed
        as ``seq_len``.
    """

    #: Reads token indices (see ``denoiser.backbone_input``).
    accepts_tokens = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        seq_len: int | Sequence[int],
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        num_classes: int = 0,
        position_embedding: str = "sinusoidal",
        time_conditioning: bool = True,
    ) -> None:
        super().__init__()
        site_shape = (int(seq_len),) if isinstance(seq_len, numbers.Integral) else tuple(int(s) for s in seq_len)
        if not site_shape or any(s < 1 for s in site_shape):
            raise ValueError(f"seq_len must be a positive integer or site shape, got {seq_len!r}")
        if in_channels < 1 or out_channels < 1 or dim < 1 or depth < 0 or heads < 1 or mlp_ratio <= 0:
            raise ValueError(
                f"need in_channels, out_channels, dim, heads >= 1, depth >= 0 and mlp_ratio > 0; got "
                f"{in_channels}, {out_channels}, {dim}, {heads}, {depth}, {mlp_ratio}"
            )
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must be divisible by heads {heads} with an even head dimension")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.site_shape = site_shape
        self.seq_len = math.prod(site_shape)
        self.input_proj = nn.Linear(in_channels, dim)
        self.positions = (None if position_embedding == "none"
                          else AbsolutePositionEmbedding(position_embedding, self.seq_len, dim, in_channels))
        self.dim = dim
        self.time_conditioning = bool(time_conditioning)
        self.noise_embedding = NoiseLevelEmbedding(dim) if self.time_conditioning else None
        self.class_embedding = ClassEmbedding(num_classes, dim) if num_classes > 0 else None
        self.blocks = nn.ModuleList(
            AdaLNZeroBlock(dim, heads, mlp_ratio, self.seq_len, dropout) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(dim, 2 * dim)
        self.output_proj = nn.Linear(dim, out_channels)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, features: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, C_in, *site_shape)`` float or ``(B, *site_shape)`` long tokens, ``(B,)`` ->
        ``(B, C_out, *site_shape)``; ``labels`` (B,) long (conditional backbones only; None = the null class)."""
        tokens = not features.is_floating_point()
        if tokens:
            if tuple(features.shape[1:]) != self.site_shape:
                raise ValueError(f"token input must have shape (B, {', '.join(map(str, self.site_shape))}), "
                                 f"got {tuple(features.shape)}")
            noise_level = _prepare_inputs(features[:, None], noise_level, 1, len(self.site_shape))
        else:
            noise_level = _prepare_inputs(features, noise_level, self.in_channels, len(self.site_shape))
            if tuple(features.shape[2:]) != self.site_shape:
                raise ValueError(
                    f"features must have shape (B, {self.in_channels}, {', '.join(map(str, self.site_shape))}), "
                    f"got {tuple(features.shape)}"
                )
        batch = features.shape[0]
        c = self._conditioning(noise_level, labels, batch, features.device)
        if tokens:
            h = embed_tokens(self.input_proj, features.reshape(batch, self.seq_len))
        else:
            h = self.input_proj(features.reshape(batch, self.in_channels, self.seq_len).transpose(1, 2).to(c.dtype))
        if self.positions is not None:
            h = self.positions(h)
        for block in self.blocks:
            h = block(h, c)
        out = self.head(h, c)                                                 # (B, L, C_out)
        return out.transpose(1, 2).reshape(batch, self.out_channels, *self.site_shape)

    def head(self, h: Tensor, c: Tensor) -> Tensor:
        """The final adaLN layer and output projection: h (B, L, dim), c (B, dim) or (B, L, dim) -> (B, L, C_out)."""
        shift, scale = self.final_modulation(F.silu(c)).chunk(2, dim=-1)
        return self.output_proj(_modulate(self.norm_out(h), shift, scale))

    # ----- conditioning, masks, positions and the KV cache (block diffusion) ------------------------------------
    def _conditioning(self, noise_level: Tensor | None, labels: Tensor | None, batch: int,
                      device: torch.device) -> Tensor:
        """The adaLN conditioning vector: (B, dim) for a (B,) noise level, (B, S, dim) for a per-position (B, S)
        one; without time conditioning (or for ``noise_level=None``) zeros (B, dim). Plus the class embedding."""
        if not self.time_conditioning or noise_level is None:
            weight = self.final_modulation.weight
            c = torch.zeros(batch, self.dim, dtype=weight.dtype, device=device)
        elif noise_level.dim() == 2:
            b, s = noise_level.shape
            c = self.noise_embedding(noise_level.reshape(-1)).reshape(b, s, -1)
        else:
            c = self.noise_embedding(noise_level)
        if self.class_embedding is None:
            return add_class_embedding(c, None, labels)
        table = add_class_embedding(torch.zeros_like(c if c.dim() == 2 else c[:, 0]), self.class_embedding, labels)
        return c + _per_position(table) if c.dim() == 3 else c + table

    def forward_positions(self, tokens: Tensor, noise_level: Tensor | None, positions: Tensor,
                          mask: Tensor | None = None, labels: Tensor | None = None, past: "KVCache | None" = None,
                          keep: bool = False, outputs: int | None = None) -> tuple[Tensor, "KVCache | None"]:
        """The network on token indices at given positions, under an attention mask, after cached tokens.

        Shapes: ``tokens`` (B, S) long in 0..C_in-1 (a 1-D site shape), ``noise_level`` (B,) or per position
        (B, S) float in [-1, 1] (ignored without time conditioning; None = zeros), ``positions`` (S,) long
        (rotary positions, < seq_len), ``mask`` (S, P + S) bool (True = attend; None = every key) over the keys
        [past ; tokens], ``past`` the cache of P earlier tokens. Returns the output (B, C_out, S) (with ``outputs``
        = n, only the first n positions': (B, C_out, n)) and, with ``keep``, ``past`` extended by these S tokens'
        keys and values (else None)."""
        if tokens.dim() != 2 or tokens.is_floating_point() or len(self.site_shape) != 1:
            raise ValueError(f"forward_positions takes (B, S) token indices of a sequence backbone, got "
                             f"{tuple(tokens.shape)} {tokens.dtype} (site shape {self.site_shape})")
        if positions.shape != (tokens.shape[1],):
            raise ValueError(f"positions must have shape ({tokens.shape[1]},), got {tuple(positions.shape)}")
        batch = tokens.shape[0]
        c = self._conditioning(noise_level, labels, batch, tokens.device)
        h = embed_tokens(self.input_proj, tokens)
        if self.positions is not None:
            h = self.positions(h, positions)
        mask = None if mask is None else mask.to(h.device)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            layer_past = None if past is None else (past.keys[i], past.values[i])
            h, k, v = block.forward_kv(h, c, mask, positions, layer_past)
            keys.append(k)
            values.append(v)
        if outputs is not None:
            h = h[:, :outputs]
            c = c[:, :outputs] if c.dim() == 3 else c
        out = self.head(h, c).transpose(1, 2)                               # (B, C_out, S)
        if not keep:
            return out, None
        fresh = KVCache(keys, values, positions)
        return out, (fresh if past is None else past.extended(keys, values, positions))
