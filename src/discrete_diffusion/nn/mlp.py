"""A residual MLP backbone for tiny problems (a handful of sites and states)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, NoiseLevelEmbedding, _prepare_inputs, add_class_embedding

__all__ = ["MLP", "ResidualMLPBlock"]


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual block ``h + fc2(dropout(SiLU(fc1(LayerNorm(h)) + proj(emb))))``.

    Shapes: ``h`` ``(B, hidden)``, ``emb`` ``(B, emb_dim)`` -> ``(B, hidden)``.
    """

    def __init__(self, hidden: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = F.silu(self.fc1(self.norm(h)) + self.emb_proj(emb))
        return h + self.fc2(self.dropout(z))


class MLP(nn.Module):
    """Noise-level-conditioned residual MLP over the flattened sites.

    ``features`` are flattened to ``(B, C_in * prod(site_shape))``, concatenated
    with the noise-level embedding ``(B, hidden)``, projected to ``hidden``,
    passed through ``depth`` residual blocks (LayerNorm + SiLU, each also adding
    a projection of the embedding), then LayerNorm -> SiLU -> Linear (zero
    initialised, so the output is exactly 0 at initialisation) and reshaped.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        site_shape: shape of the site grid, e.g. ``(3,)`` or ``(2, 2)``; ``()``
            for a single site.
        hidden: hidden width (also the width of the noise-level embedding).
        depth: number of residual blocks (``>= 0``).
        dropout: dropout probability inside the residual blocks.
        num_classes: C > 0 adds a class embedding of C + 1 rows (the last the null class) to the noise-level
            embedding; 0 (default) is unconditional, with the same parameters as before.

    Token input ``(B, *site_shape)`` long in ``0..C_in-1`` stands for its one-hot features: the input
    Linear's weight ``W`` (hidden, C_in * S + hidden) is applied as ``sum_s W[:, x_s * S + s]`` (the columns
    the flattened one-hot vector selects, S sites) plus ``W[:, C_in * S:] emb + b``, with the same parameters
    and the same output as the one-hot path, without the (B, C_in * S) input.

    Shapes:
        ``features`` ``(B, C_in, *site_shape)`` float or ``(B, *site_shape)`` long tokens, ``noise_level``
        ``(B,)`` float in ``[-1, 1]`` -> ``(B, C_out, *site_shape)``.
    """

    #: Reads token indices (see ``denoiser.backbone_input``).
    accepts_tokens = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        site_shape: Sequence[int],
        hidden: int = 256,
        depth: int = 3,
        dropout: float = 0.0,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        site_shape = tuple(int(s) for s in site_shape)
        if any(s < 1 for s in site_shape):
            raise ValueError(f"site_shape entries must be positive, got {site_shape}")
        if in_channels < 1 or out_channels < 1 or hidden < 1 or depth < 0:
            raise ValueError(
                f"need in_channels, out_channels, hidden >= 1 and depth >= 0; got "
                f"{in_channels}, {out_channels}, {hidden}, {depth}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.site_shape = site_shape
        n_sites = math.prod(site_shape)
        self.noise_embedding = NoiseLevelEmbedding(hidden)
        self.class_embedding = ClassEmbedding(num_classes, hidden) if num_classes > 0 else None
        self.input_proj = nn.Linear(in_channels * n_sites + hidden, hidden)
        self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden)
        self.output_proj = nn.Linear(hidden, out_channels * n_sites)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def _embed_tokens(self, tokens: Tensor, emb: Tensor) -> Tensor:
        """input_proj(cat(flattened one_hot(tokens), emb)) without the one-hot: (B, S) long, (B, hidden) -> (B, hidden)."""
        sites = tokens.shape[1]
        weight = self.input_proj.weight                                      # (hidden, C_in * S + hidden)
        columns = tokens * sites + torch.arange(sites, device=tokens.device)  # flat index of channel x_s at site s
        picked = F.embedding(columns, weight[:, : self.in_channels * sites].t()).sum(1)   # (B, hidden)
        return picked + F.linear(emb, weight[:, self.in_channels * sites:], self.input_proj.bias)

    def forward(self, features: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, C_in, *site_shape)`` float or ``(B, *site_shape)`` long, ``(B,)`` -> ``(B, C_out, *site_shape)``;
        ``labels`` (B,) long (conditional backbones only; None = the null class)."""
        if not features.is_floating_point():
            if tuple(features.shape[1:]) != self.site_shape:
                raise ValueError(f"expected token input of shape (B, *{self.site_shape}), got {tuple(features.shape)}")
            noise_level = _prepare_inputs(features[:, None], noise_level, 1, len(self.site_shape))
            emb = add_class_embedding(self.noise_embedding(noise_level), self.class_embedding, labels)
            h = self._embed_tokens(features.reshape(features.shape[0], -1), emb)
        else:
            noise_level = _prepare_inputs(features, noise_level, self.in_channels, len(self.site_shape))
            if tuple(features.shape[2:]) != self.site_shape:
                raise ValueError(f"expected site shape {self.site_shape}, got {tuple(features.shape[2:])}")
            emb = add_class_embedding(self.noise_embedding(noise_level), self.class_embedding, labels)
            h = self.input_proj(torch.cat([features.reshape(features.shape[0], -1).to(emb.dtype), emb], dim=1))
        batch = features.shape[0]
        for blk in self.blocks:
            h = blk(h, emb)
        out = self.output_proj(F.silu(self.norm_out(h)))
        return out.reshape(batch, self.out_channels, *self.site_shape)
