"""Tests for discrete_diffusion.report.grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from discrete_diffusion.report.grids import image_grid, save_image_grid


def test_grayscale_grid_size_and_pixels(tmp_path: Path) -> None:
    # 5 images of 8x8 with levels 0..16; default scale 4 -> 32 px tiles, 3 columns
    images = torch.zeros(5, 8, 8, dtype=torch.long)
    images[0] = 16
    images[1, 0, 0] = 8
    out = save_image_grid(images, 17, tmp_path / "sub" / "grid.png")
    assert out == tmp_path / "sub" / "grid.png" and out.is_file()
    with Image.open(out) as img:
        assert img.mode == "L"
        assert img.size == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2)  # (width, height)
        a = np.asarray(img)
    assert (a[2:34, 2:34] == 255).all()  # tile 0: level 16 -> 255
    assert (a[2:6, 36:40] == 128).all()  # tile 1 top-left pixel: 8/16*255 = 127.5 -> 128
    assert a[6, 36] == 0 and a[2, 40] == 0  # nearest-neighbour block is exactly 4 px
    assert (a[0:2, :] == 128).all() and (a[:, 34:36] == 128).all()  # padding
    assert not list(out.parent.glob(".*tmp"))  # no temp files left behind


def test_rgb_grid_and_options(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 2, 2), dtype=np.int64)
    x[0, 0] = 1  # red image
    x[1, 2] = 1  # blue image
    path = save_image_grid(x, 2, tmp_path / "rgb.png", nrow=1, scale=3)
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (6 + 4, 2 * 6 + 6)
        a = np.asarray(img)
    assert tuple(a[2, 2]) == (255, 0, 0) and tuple(a[7, 7]) == (255, 0, 0)
    assert tuple(a[10, 2]) == (0, 0, 255)
    single = image_grid(x[:, :1], 2, scale=1, padding=1)
    assert single.shape == (4, 7) and single[1, 1] == 255


def test_grid_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max found 5"):
        save_image_grid(torch.full((1, 4, 4), 5), 4, tmp_path / "x.png")
    with pytest.raises(ValueError, match="channels"):
        image_grid(torch.zeros(1, 2, 4, 4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="shape"):
        image_grid(torch.zeros(1, 1, 1, 4, 4, dtype=torch.long), 2)
    assert not (tmp_path / "x.png").exists()
