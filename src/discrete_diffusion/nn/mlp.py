"""A residual MLP backbone for tiny problems (a handful of sites and states).

References:
- Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), ICCV 2023: adaLN-Zero conditioning
  (shift / scale after each LayerNorm and a gate on each residual branch, regressed from the conditioning vector,
  all zero-initialised so every block starts as the identity).
- Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (MDLM), NeurIPS 2024: the masking
  posterior does not depend on the noise level, so its denoiser needs no noise input.

Noise conditionings (``noise_conditioning``):

- ``"adaln-zero"`` (default): ``h = W_in x``; each block ``h + gate * fc2(SiLU(fc1(LN(h) (1 + scale) + shift)))``
  with (shift, scale, gate) = Linear(SiLU(c)), c the noise-level (+ class) embedding; the output layer
  ``Linear(SiLU(LN(h) (1 + scale) + shift))``.
- ``noise_input=False``: no noise-level embedding at all; c is the class embedding of a conditional model (the
  same adaLN-zero blocks) or, unconditional, there is no c and the blocks are plain pre-norm residual blocks.
- ``"additive"``: the architecture of runs written before ``model.noise_conditioning`` existed: the embedding is
  concatenated to the input and added inside every block *ahead of* the pre-norm LayerNorms. It fits only the
  product of the site marginals on a correlated table (issue 19 item 13): the unnormalised embedding grows
  during training (norm ~2 at initialisation, ~200 after 15000 steps) and the LayerNorms divide the x_t-dependent
  part of the hidden state, and its gradient, away. Kept so that those runs load and resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, NoiseLevelEmbedding, _prepare_inputs, add_class_embedding

__all__ = ["MLP", "ResidualMLPBlock", "AdaLNZeroMLPBlock", "MLP_NOISE_CONDITIONINGS"]

#: ``MLP(noise_conditioning=...)`` values; see the module docstring.
MLP_NOISE_CONDITIONINGS = ("adaln-zero", "additive")


class ResidualMLPBlock(nn.Module):
    """The ``"additive"`` (legacy) block: pre-norm residual ``h + fc2(dropout(SiLU(fc1(LayerNorm(h)) + proj(emb))))``.

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


class AdaLNZeroMLPBlock(nn.Module):
    """Residual block ``h + gate * fc2(dropout(SiLU(fc1(LN(h) (1 + scale) + shift))))``, (shift, scale, gate) =
    ``modulation(SiLU(c))`` zero-initialised (the block is the identity at initialisation); without a
    conditioning vector (``cond_dim = 0``) a plain pre-norm block ``h + fc2(dropout(SiLU(fc1(LN(h)))))`` with an
    affine LayerNorm.

    Shapes: ``h`` ``(B, hidden)``, ``c`` ``(B, cond_dim)`` or None -> ``(B, hidden)``.
    """

    def __init__(self, hidden: int, cond_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=cond_dim == 0)
        self.fc1 = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.modulation = nn.Linear(cond_dim, 3 * hidden) if cond_dim else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:
        if self.modulation is None:
            return h + self.fc2(self.dropout(F.silu(self.fc1(self.norm(h)))))
        shift, scale, gate = self.modulation(F.silu(c)).chunk(3, dim=-1)
        z = F.silu(self.fc1(self.norm(h) * (1 + scale) + shift))
        return h + gate * self.fc2(self.dropout(z))


class MLP(nn.Module):
    """Noise-level-conditioned residual MLP over the flattened sites; see the module docstring for the three
    conditionings.

    ``features`` are flattened to ``(B, C_in * prod(site_shape))`` and projected to ``hidden`` (``"additive"``:
    concatenated with the noise-level embedding first), passed through ``depth`` residual blocks, then LayerNorm
    (modulated under adaLN-zero) -> SiLU -> Linear (zero initialised, so the output is exactly 0 at
    initialisation) and reshaped.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        site_shape: shape of the site grid, e.g. ``(3,)`` or ``(2, 2)``; ``()`` for a single site.
        hidden: hidden width (also the width of the noise-level embedding).
        depth: number of residual blocks (``>= 0``).
        dropout: dropout probability inside the residual blocks.
        num_classes: C > 0 adds a class embedding of C + 1 rows (the last the null class) to the noise-level
            embedding; 0 (default) is unconditional.
        noise_conditioning: ``"adaln-zero"`` (default) or ``"additive"`` (runs written before the option).
        noise_input: False drops the noise level (the output does not depend on it): for processes whose exact
            posterior does not depend on it (masking). Only with ``"adaln-zero"``.

    Token input ``(B, *site_shape)`` long in ``0..C_in-1`` stands for its one-hot features: the input Linear's
    weight ``W`` is applied as ``sum_s W[:, x_s * S + s]`` (the columns the flattened one-hot vector selects, S
    sites; ``"additive"`` adds ``W[:, C_in * S:] emb``) plus the bias, with the same parameters and the same
    output as the one-hot path, without the (B, C_in * S) input.

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
        noise_conditioning: str = "adaln-zero",
        noise_input: bool = True,
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
        if noise_conditioning not in MLP_NOISE_CONDITIONINGS:
            raise ValueError(f"noise_conditioning must be one of {', '.join(MLP_NOISE_CONDITIONINGS)}, "
                             f"got {noise_conditioning!r}")
        if noise_conditioning == "additive" and not noise_input:
            raise ValueError("noise_conditioning 'additive' always reads the noise level (noise_input=True)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.site_shape = site_shape
        self.noise_conditioning = noise_conditioning
        n_sites = math.prod(site_shape)
        self.noise_embedding = NoiseLevelEmbedding(hidden) if noise_input else None
        self.class_embedding = ClassEmbedding(num_classes, hidden) if num_classes > 0 else None
        self.additive = noise_conditioning == "additive"
        if self.additive:
            self.input_proj = nn.Linear(in_channels * n_sites + hidden, hidden)
            self.blocks = nn.ModuleList(ResidualMLPBlock(hidden, hidden, dropout) for _ in range(depth))
            self.norm_out = nn.LayerNorm(hidden)
            self.final_modulation = None
        else:
            cond_dim = hidden if noise_input or num_classes > 0 else 0
            self.input_proj = nn.Linear(in_channels * n_sites, hidden)
            self.blocks = nn.ModuleList(AdaLNZeroMLPBlock(hidden, cond_dim, dropout) for _ in range(depth))
            self.norm_out = nn.LayerNorm(hidden, elementwise_affine=cond_dim == 0)
            self.final_modulation = nn.Linear(cond_dim, 2 * hidden) if cond_dim else None
        self.output_proj = nn.Linear(hidden, out_channels * n_sites)
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def _embed_tokens(self, tokens: Tensor, emb: Tensor | None) -> Tensor:
        """input_proj(flattened one_hot(tokens) [, emb]) without the one-hot: (B, S) long -> (B, hidden)."""
        sites = tokens.shape[1]
        weight = self.input_proj.weight                                      # (hidden, C_in * S [+ hidden])
        columns = tokens * sites + torch.arange(sites, device=tokens.device)  # flat index of channel x_s at site s
        picked = F.embedding(columns, weight[:, : self.in_channels * sites].t()).sum(1)   # (B, hidden)
        if emb is None:
            return picked + self.input_proj.bias
        return picked + F.linear(emb, weight[:, self.in_channels * sites:], self.input_proj.bias)

    def _conditioning(self, noise_level: Tensor, labels: Tensor | None, batch: int,
                      device: torch.device) -> Tensor | None:
        """The conditioning vector (B, hidden): noise-level embedding plus class embedding; None without either."""
        if self.noise_embedding is not None:
            return add_class_embedding(self.noise_embedding(noise_level), self.class_embedding, labels)
        if self.class_embedding is None:
            if labels is not None:
                raise ValueError("this backbone is unconditional (model.num_classes = 0): it takes no class labels")
            return None
        return self.class_embedding(labels, batch, device).to(self.input_proj.weight.dtype)

    def forward(self, features: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, C_in, *site_shape)`` float or ``(B, *site_shape)`` long, ``(B,)`` -> ``(B, C_out, *site_shape)``;
        ``labels`` (B,) long (conditional backbones only; None = the null class)."""
        batch = features.shape[0]
        if not features.is_floating_point():
            if tuple(features.shape[1:]) != self.site_shape:
                raise ValueError(f"expected token input of shape (B, *{self.site_shape}), got {tuple(features.shape)}")
            noise_level = _prepare_inputs(features[:, None], noise_level, 1, len(self.site_shape))
            c = self._conditioning(noise_level, labels, batch, features.device)
            h = self._embed_tokens(features.reshape(batch, -1), c if self.additive else None)
        else:
            noise_level = _prepare_inputs(features, noise_level, self.in_channels, len(self.site_shape))
            if tuple(features.shape[2:]) != self.site_shape:
                raise ValueError(f"expected site shape {self.site_shape}, got {tuple(features.shape[2:])}")
            c = self._conditioning(noise_level, labels, batch, features.device)
            flat = features.reshape(batch, -1).to(self.input_proj.weight.dtype)
            h = self.input_proj(torch.cat([flat, c.to(flat.dtype)], dim=1) if self.additive else flat)
        for blk in self.blocks:
            h = blk(h, c)
        h = self.norm_out(h)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(F.silu(c)).chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        out = self.output_proj(F.silu(h))
        return out.reshape(batch, self.out_channels, *self.site_shape)
