"""Data augmentation that keeps integer levels exact (no interpolation).

"shift": translate each image by a random offset in {-1, 0, 1}^2 with zero fill. Zero is the empty
level (Blackout's prior), and digits stay digits under a one-pixel shift.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Augmentation = Callable[[Tensor, torch.Generator], Tensor]
AUGMENTATIONS = ("none", "shift")


def random_shift(x0: Tensor, generator: torch.Generator) -> Tensor:
    """x0: (B, ..., H, W) long -> same shape, each example shifted by up to one pixel in H and W."""
    b, h, w = x0.shape[0], x0.shape[-2], x0.shape[-1]
    padded = torch.nn.functional.pad(x0, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (b, 2), generator=generator).to(x0.device)
    rows = (torch.arange(h, device=x0.device)[None, :] + offsets[:, :1])        # (B, H)
    cols = (torch.arange(w, device=x0.device)[None, :] + offsets[:, 1:])        # (B, W)
    lead = padded.shape[1:-2]
    view = padded.reshape(b, -1, h + 2, w + 2)
    view = torch.gather(view, 2, rows[:, None, :, None].expand(b, view.shape[1], h, w + 2))
    view = torch.gather(view, 3, cols[:, None, None, :].expand(b, view.shape[1], h, w))
    return view.reshape(b, *lead, h, w)


def build_augmentation(name: str, kind: str) -> Augmentation | None:
    """None for "none"; "shift" needs image data."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; valid augmentations: {', '.join(AUGMENTATIONS)}")
    if name == "none":
        return None
    if kind != "image":
        raise ValueError(f"augmentation {name!r} needs image data, got a {kind!r} dataset; use train.augment=none")
    return random_shift
