"""Absolute position embeddings added to the transformer's input embedding (issue 19 item 14).

References:
- Vaswani et al., "Attention Is All You Need", 2017: fixed sinusoidal and learned absolute positions.
- Su et al., "RoFormer", 2021: rotary positions, which the transformer keeps in its attention.

Rotary attention sees only relative offsets, and only through q.k: a row whose sites all hold the same token
(every site masked) gives every site the same query, key and value, so attention returns the same vector at
every site and the network predicts the same distribution everywhere (on a 4-site table whose marginals differ:
one average marginal at all sites). An absolute embedding p_l added at the input, h_l = W x_l + b + p_l, makes
the sites distinct from the first layer on.

Kinds:

- ``"sinusoidal"``: fixed ``p_{l, 2i} = g sin(l / 10000^(2i/dim))``, ``p_{l, 2i+1} = g cos(...)`` with the gain
  ``g = sqrt(2 / (3 C_in))``, which gives p the per-entry RMS of the one-hot token embedding at initialisation
  (PyTorch's Linear draws U(-1/sqrt(C_in), 1/sqrt(C_in)), RMS 1/sqrt(3 C_in); sin/cos have RMS 1/sqrt(2)), so
  neither swamps the other ahead of the first LayerNorm, whatever the vocabulary size. A non-persistent
  buffer: no parameters, nothing in the state dict.
- ``"learned"``: a parameter ``(L, dim)`` initialised to zero: the network starts as the rotary-only one and
  learns the positions it needs (a random start of std 0.02 without rotary trained badly here: DESIGN.md).

Shapes: ``h`` ``(B, L, dim)`` (and optionally ``positions`` ``(L,)`` long) -> ``(B, L, dim)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["AbsolutePositionEmbedding", "POSITION_KINDS", "sinusoidal_table"]

#: Kinds of absolute position embedding ("none" is the transformer without one).
POSITION_KINDS = ("sinusoidal", "learned")


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """``(length, dim)`` float32: entry (l, 2i) = sin(l / base^(2i/dim)), (l, 2i+1) = cos(...) (odd dim: the last
    column is a sine)."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table.to(torch.float32)


class AbsolutePositionEmbedding(nn.Module):
    """``h + p[:L]`` for ``L <= max_len`` positions; see the module docstring for the kinds.

    Args:
        kind: "sinusoidal" or "learned".
        max_len: number of positions of the table.
        dim: model width.
        in_channels: C_in of the input embedding it is added to (sets the sinusoidal gain).
    """

    table: Tensor

    def __init__(self, kind: str, max_len: int, dim: int, in_channels: int) -> None:
        super().__init__()
        if kind not in POSITION_KINDS:
            raise ValueError(f"position embedding must be one of {', '.join(POSITION_KINDS)}, got {kind!r}")
        self.kind = kind
        if kind == "sinusoidal":
            gain = math.sqrt(2.0 / (3.0 * in_channels))
            self.register_buffer("table", gain * sinusoidal_table(max_len, dim), persistent=False)
        else:
            self.table = nn.Parameter(torch.zeros(max_len, dim))

    def forward(self, h: Tensor, positions: Tensor | None = None) -> Tensor:
        """``h + p[:L]``, or ``h + p[positions]`` for given positions (L,) long (block diffusion's
        ``forward_positions``)."""
        if positions is not None:
            if positions.numel() and int(positions.max()) >= self.table.shape[0]:
                raise ValueError(f"position {int(positions.max())} exceeds the position table size "
                                 f"{self.table.shape[0]}")
            return h + self.table[positions.to(self.table.device)].to(h.dtype)
        length = h.shape[-2]
        if length > self.table.shape[0]:
            raise ValueError(f"sequence length {length} exceeds the position table size {self.table.shape[0]}")
        return h + self.table[:length].to(h.dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, max_len={self.table.shape[0]}, dim={self.table.shape[1]}"
