"""Embeddings of the scalar noise level fed to every backbone.

Backbones receive ``noise_level`` of shape ``(B,)`` with values in ``[-1, 1]``
(a clamped, rescaled ``logit(alpha)``).  :class:`SinusoidalEmbedding` turns it
into a fixed Fourier feature vector and :class:`NoiseLevelEmbedding` follows it
with a small MLP, giving the learned conditioning vector used inside blocks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalEmbedding", "NoiseLevelEmbedding", "ClassEmbedding", "add_class_embedding"]


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos features of a scalar at geometrically spaced frequencies.

    For ``half = dim // 2`` frequencies ``f_k = pi * max_freq ** (k / (half - 1))``
    (so ``f`` runs from ``pi * min_freq`` to ``pi * max_freq``, defaults 1 and
    1000), the embedding of ``x`` is ``[sin(f_k x), cos(f_k x)]``.  With inputs in
    ``[-1, 1]`` the lowest frequency is unambiguous over the whole range and the
    highest separates inputs that differ by about ``1e-3``.

    Args:
        dim: output width; must be even and at least 2.
        min_freq: lowest frequency, in multiples of pi.
        max_freq: highest frequency, in multiples of pi.

    Shapes:
        ``x``: ``(B,)`` (any float dtype; computed in float32) -> ``(B, dim)`` float32.
    """

    frequencies: Tensor

    def __init__(self, dim: int, min_freq: float = 1.0, max_freq: float = 1000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2 != 0:
            raise ValueError(f"SinusoidalEmbedding dim must be an even integer >= 2, got {dim}")
        if not (0.0 < min_freq <= max_freq):
            raise ValueError(f"need 0 < min_freq <= max_freq, got {min_freq}, {max_freq}")
        self.dim = dim
        half = dim // 2
        if half == 1:
            exps = torch.zeros(1, dtype=torch.float64)
        else:
            exps = torch.linspace(0.0, 1.0, half, dtype=torch.float64)
        freqs = math.pi * min_freq * (max_freq / min_freq) ** exps
        # Not persistent: derived from constructor args, moves with .to(device).
        self.register_buffer("frequencies", freqs.to(torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``x`` of shape ``(B,)`` into ``(B, dim)`` float32 features."""
        if x.dim() != 1:
            raise ValueError(f"SinusoidalEmbedding expects a 1-D tensor (B,), got shape {tuple(x.shape)}")
        args = x.to(torch.float32)[:, None] * self.frequencies.to(x.device)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NoiseLevelEmbedding(nn.Module):
    """Learned embedding of the noise level: sinusoidal -> Linear -> SiLU -> Linear.

    Args:
        dim: output width (also the width of the hidden layer).
        sinusoidal_dim: width of the fixed Fourier features (default ``dim``,
            rounded up to an even number).

    Shapes:
        ``noise_level``: ``(B,)`` float -> ``(B, dim)`` in the dtype of the
        module's parameters.
    """

    def __init__(self, dim: int, sinusoidal_dim: int | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"NoiseLevelEmbedding dim must be >= 1, got {dim}")
        sdim = dim if sinusoidal_dim is None else sinusoidal_dim
        sdim = max(2, sdim + (sdim % 2))
        self.dim = dim
        self.sinusoidal = SinusoidalEmbedding(sdim)
        self.linear1 = nn.Linear(sdim, dim)
        self.act = nn.SiLU()
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, noise_level: Tensor) -> Tensor:
        """Map ``(B,)`` noise levels to ``(B, dim)`` conditioning vectors."""
        emb = self.sinusoidal(noise_level).to(self.linear1.weight.dtype)
        return self.linear2(self.act(self.linear1(emb)))


def _prepare_inputs(features: Tensor, noise_level: Tensor, in_channels: int, site_ndim: int) -> Tensor:
    """Validate backbone inputs and return ``noise_level`` as a ``(B,)`` tensor.

    Accepts a 0-d ``noise_level`` (broadcast over the batch) or one of shape
    ``(B,)`` / ``(B, 1)``.  Shared by the backbones; not part of the public API.
    """
    expected = 2 + site_ndim
    if features.dim() != expected or features.shape[1] != in_channels:
        raise ValueError(
            f"features must have shape (B, {in_channels}, <{site_ndim} site dims>), got {tuple(features.shape)}"
        )
    batch = features.shape[0]
    if noise_level.dim() == 0:
        noise_level = noise_level.expand(batch)
    elif noise_level.dim() == 2 and noise_level.shape[1] == 1:
        noise_level = noise_level[:, 0]
    if noise_level.shape != (batch,):
        raise ValueError(f"noise_level must have shape ({batch},), got {tuple(noise_level.shape)}")
    return noise_level.to(features.device)


class ClassEmbedding(nn.Module):
    """Learned class embedding with a null class, added to the noise-level embedding (classifier-free guidance,
    Ho & Salimans 2022).

    Rows ``0..num_classes-1`` embed the classes; row ``num_classes`` is the null class ("no label"), which
    ``train.cond_dropout`` trains and which ``labels=None`` selects.

    Shapes:
        ``labels`` ``(B,)`` long in ``0..num_classes`` (or ``None``: the null class for all ``batch`` rows)
        -> ``(B, dim)`` in the dtype of the module's parameters.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"ClassEmbedding needs num_classes >= 1 and dim >= 1, got {num_classes}, {dim}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if labels.shape != (batch,) or labels.is_floating_point():
            raise ValueError(f"labels must be a (B,) = ({batch},) integer tensor, got {tuple(labels.shape)} "
                             f"{labels.dtype}")
        if bool(((labels < 0) | (labels > self.num_classes)).any()):
            raise ValueError(f"labels must lie in 0..{self.num_classes} ({self.num_classes} = the null class)")
        return self.table(labels.to(device=device, dtype=torch.long))


def add_class_embedding(emb: Tensor, table: ClassEmbedding | None, labels: Tensor | None) -> Tensor:
    """``emb + table(labels)`` for a conditional backbone; an unconditional one (``table is None``) returns ``emb``
    and refuses labels. emb: (B, dim) -> (B, dim)."""
    if table is None:
        if labels is not None:
            raise ValueError("this backbone is unconditional (model.num_classes = 0): it takes no class labels")
        return emb
    return emb + table(labels, emb.shape[0], emb.device).to(emb.dtype)
