"""Gated PixelCNN: an autoregressive likelihood baseline for single-channel discrete images.

Reference: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu, "Conditional Image Generation
with PixelCNN Decoders", NeurIPS 2016 (gated activations, separate vertical and horizontal stacks so that
the receptive field has no blind spot).

The image is factorised in raster order, p(x) = prod_i p(x_i | x_<i), and each factor is a K-way
categorical over the pixel's value, so the NLL is exact: the sum of the per-pixel cross-entropies.

Causality is kept by construction rather than by masking weights:

- the vertical stack at (i, j) sees only rows < i (first layer: a (2, 3) kernel over rows i-2..i-1;
  later layers: a (2, 3) kernel over the vertical features of rows i-1..i);
- the horizontal stack at (i, j) sees rows < i through the vertical stack, and on row i only the
  columns < j (first layer: a (1, 1) kernel on column j-1; later layers: a (1, 2) kernel over the
  horizontal features of columns j-1..j).

Each layer grows the field by one row and one column, so ``num_layers >= max(H, W) - 1`` covers the whole
past of an H x W image (the logits at pixel i must not change when any pixel >= i changes; a gradient
check of that property is cheap and worth keeping as a test).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GatedPixelCNN"]


def _gate(h: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) for h = [a, b] split on the channel axis: (B, 2C, H, W) -> (B, C, H, W)."""
    a, b = h.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer with a vertical and a horizontal stack (both (B, C, H, W) in, same out)."""

    def __init__(self, channels: int, dropout: float, first: bool) -> None:
        super().__init__()
        self.first = first
        c = channels
        # First layer: vertical kernel over rows i-2..i-1, horizontal over column j-1 only.
        self.v_conv = nn.Conv2d(c, 2 * c, kernel_size=(2, 3))
        self.h_conv = nn.Conv2d(c, 2 * c, kernel_size=(1, 1) if first else (1, 2))
        self.v_to_h = nn.Conv2d(2 * c, 2 * c, kernel_size=1)
        self.h_out = nn.Conv2d(c, c, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        height, width = v.shape[-2:]
        if self.first:
            # rows r - 2 .. r - 1: pad two rows on top, none at the bottom, and drop the last output row.
            v_pre = self.v_conv(F.pad(v, (1, 1, 2, 0)))[..., :height, :]
            # column c - 1: pad one column on the left and drop the last output column.
            h_pre = self.h_conv(F.pad(h, (1, 0, 0, 0)))[..., :, :width]
        else:
            v_pre = self.v_conv(F.pad(v, (1, 1, 1, 0)))          # rows r - 1 .. r of v (already strictly above)
            h_pre = self.h_conv(F.pad(h, (1, 0, 0, 0)))          # columns c - 1 .. c of h (already causal)
        v_new = self.dropout(_gate(v_pre))
        h_gated = self.dropout(_gate(h_pre + self.v_to_h(v_pre)))
        h_new = self.h_out(h_gated)
        if not self.first:
            v_new = v_new + v
            h_new = h_new + h
        return v_new, h_new


class GatedPixelCNN(nn.Module):
    """Autoregressive model of (B, H, W) long images with values in 0..num_states-1.

    Args:
        num_states: K, the number of values per pixel.
        channels: feature channels of both stacks.
        num_layers: gated layers; use at least max(H, W) - 1 for a full receptive field.
        dropout: dropout on the gated activations (the digits training set is tiny).
        head_channels: hidden channels of the 1x1 output head.
    """

    def __init__(self, num_states: int, channels: int = 80, num_layers: int = 8, dropout: float = 0.2,
                 head_channels: int = 256) -> None:
        super().__init__()
        if num_states < 2:
            raise ValueError(f"GatedPixelCNN: num_states must be >= 2, got {num_states}")
        if num_layers < 1:
            raise ValueError(f"GatedPixelCNN: num_layers must be >= 1, got {num_layers}")
        self.num_states = num_states
        self.embed = nn.Embedding(num_states, channels)
        self.layers = nn.ModuleList(GatedLayer(channels, dropout, first=(i == 0)) for i in range(num_layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, head_channels, 1), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Conv2d(head_channels, num_states, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of p(x_i | x_<i) for every pixel: x (B, H, W) long -> (B, K, H, W) float."""
        if x.dim() != 3:
            raise ValueError(f"GatedPixelCNN expects images of shape (B, H, W), got {tuple(x.shape)}")
        e = self.embed(x).permute(0, 3, 1, 2)                      # (B, C, H, W)
        v, h = e, e
        for layer in self.layers:
            v, h = layer(v, h)
        return self.head(h)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats per image: x (B, H, W) long -> (B,) float."""
        logits = self.forward(x)
        nll = F.cross_entropy(logits, x, reduction="none")         # (B, H, W)
        return -nll.flatten(1).sum(1)

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """-log2 p(x) / (H W) per image: (B,) float."""
        return -self.log_likelihood(x) / (x[0].numel() * math.log(2.0))

    @torch.no_grad()
    def sample(self, num: int, height: int, width: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor:
        """Ancestral samples in raster order (H * W network calls): (num, H, W) long."""
        x = torch.zeros(num, height, width, dtype=torch.long, device=device)
        for i in range(height):
            for j in range(width):
                probs = torch.softmax(self.forward(x)[:, :, i, j].double(), dim=-1)
                x[:, i, j] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        return x
