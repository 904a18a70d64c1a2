"""Image grids of discrete-state samples, written as PNG."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from ..data.base import validate_values
from ..runs.atomic_io import atomic_write

__all__ = ["image_grid", "save_image_grid", "levels_to_uint8"]

#: Default minimum tile side in pixels when ``scale`` is not given.
MIN_TILE_PX = 32


def levels_to_uint8(x: np.ndarray, num_states: int) -> np.ndarray:
    """Map integer levels ``0..K-1`` linearly to ``0..255`` (rounded); ``K=1`` maps to 0."""
    if num_states <= 1:
        return np.zeros_like(x, dtype=np.uint8)
    return np.rint(x.astype(np.float64) * (255.0 / (num_states - 1))).astype(np.uint8)


def image_grid(
    images: Tensor | np.ndarray | Any,
    num_states: int,
    nrow: int | None = None,
    scale: int | None = None,
    padding: int = 2,
    pad_value: int = 128,
) -> np.ndarray:
    """Arrange images in a grid and return it as ``uint8`` (``(H, W)`` or ``(H, W, 3)``).

    Args:
        images: ``(B, H, W)`` or ``(B, C, H, W)`` with ``C`` in {1, 3}; integer levels
            in ``0..num_states-1`` (checked, never clipped).
        num_states: number of levels ``K``; level ``v`` becomes ``round(v*255/(K-1))``.
        nrow: number of tiles per row, i.e. grid columns (default ``ceil(sqrt(B))``).
        scale: integer nearest-neighbour upscaling factor per tile (default: the
            smallest factor making tiles at least 32 px on their short side).
        padding: pixels between tiles and around the border (not scaled).
        pad_value: grey value 0..255 of the padding.
    """
    x = validate_values(images, num_states, "images").numpy()
    if x.ndim == 4:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got shape {x.shape}")
        x = x[:, 0] if x.shape[1] == 1 else np.transpose(x, (0, 2, 3, 1))
    elif x.ndim != 3:
        raise ValueError(f"images must have shape (B, H, W) or (B, C, H, W), got {x.shape}")
    b, h, w = x.shape[:3]
    if scale is None:
        scale = max(1, math.ceil(MIN_TILE_PX / max(1, min(h, w))))
    if int(scale) < 1 or padding < 0 or not 0 <= pad_value <= 255:
        raise ValueError(f"need scale >= 1, padding >= 0, pad_value in 0..255; got {scale}, {padding}, {pad_value}")
    scale = int(scale)
    ncol = int(nrow) if nrow is not None else math.ceil(math.sqrt(b))
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = min(ncol, b)
    nrows = math.ceil(b / ncol)
    tiles = levels_to_uint8(x, num_states)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale, w * scale
    out_shape: tuple[int, ...] = (nrows * th + (nrows + 1) * padding, ncol * tw + (ncol + 1) * padding)
    out_shape += tiles.shape[3:]
    grid = np.full(out_shape, pad_value, dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        top = padding + r * (th + padding)
        left = padding + c * (tw + padding)
        grid[top : top + th, left : left + tw] = tiles[i]
    return grid


def save_image_grid(
    images: Tensor | np.ndarray | Any,
    num_states: int,
    path: str | os.PathLike,
    nrow: int | None = None,
    scale: int | None = None,
    padding: int = 2,
    pad_value: int = 128,
) -> Path:
    """Write :func:`image_grid` of ``images`` to ``path`` as a PNG, atomically.

    The PNG is written to a temporary file in the destination directory (created
    ``O_EXCL | O_NOFOLLOW``) and moved into place with ``os.replace``; parent
    directories are created, and the one written into must not be a symbolic
    link (``runs/atomic_io.py``). Empty cells of
    the last row are filled with ``pad_value``.

    Returns:
        The path written, as a :class:`pathlib.Path`.
    """
    grid = image_grid(images, num_states, nrow=nrow, scale=scale, padding=padding, pad_value=pad_value)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    atomic_write(path, lambda f: img.save(f, format="PNG"))  # never through a symbolic link
    return path
