"""Datasets from a folder of PNG images (registry name ``"png-folder"``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .arrays import dataset_from_arrays
from .base import DiscreteDataset, quantize, validate_values

__all__ = ["load_png_folder"]

_GRAY_MODES = ("L", "1")
_MODES = ("auto", "L", "RGB")


class _ModeError(ValueError):
    pass


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "auto":
                if img.mode in _GRAY_MODES:
                    img = img.convert("L")
                elif img.mode != "RGB":
                    raise _ModeError(
                        f"{path}: unsupported image mode {img.mode!r}; expected grayscale 'L' "
                        "or 'RGB' (pass mode='L' or mode='RGB' to convert all images)"
                    )
            elif img.mode != mode:
                img = img.convert(mode)
            arr = np.asarray(img, dtype=np.uint8)
    except _ModeError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3:
        arr = np.transpose(arr, (2, 0, 1))  # HWC -> CHW
    return arr


def load_png_folder(
    path: str | os.PathLike,
    *,
    levels: int | None = None,
    mode: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    name: str = "png-folder",
) -> DiscreteDataset:
    """Load every ``*.png`` file (case-insensitive, not recursive) of a folder.

    Files are read in sorted name order. All images must have the same size and
    colour type: grayscale (mode ``'L'``/``'1'``) gives ``(N, H, W)``, RGB gives
    ``(N, 3, H, W)``. With ``mode='L'`` or ``mode='RGB'`` every image is converted
    to that mode instead (e.g. for palette or RGBA files).

    Pixels have 256 states, or ``levels`` states via ``value * levels // 256``.
    Validation/test sets are split off deterministically (see
    :func:`~discrete_diffusion.data.arrays.dataset_from_arrays`).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no PNG files, an unreadable/corrupt image, a size or colour-type
            mismatch (the message names the offending file).
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"PNG folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"{folder}: no .png files found")
    digest = hashlib.sha256()
    first_shape: tuple[int, ...] | None = None
    images = []
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
        arr = _read_png(f, mode)
        if first_shape is None:
            first_shape = arr.shape
        elif arr.shape != first_shape:
            raise ValueError(
                f"{f}: image has {_describe_shape(arr.shape)} but {files[0].name} has "
                f"{_describe_shape(first_shape)}; all images must have the same size and colour type"
            )
        images.append(arr)
    data = validate_values(np.stack(images), 256, str(folder))
    k = 256
    if levels is not None:
        data = quantize(data, 256, levels)
        k = int(levels)
    channels = 1 if data.ndim == 3 else int(data.shape[1])
    meta = {
        "source": str(folder.resolve()),
        "num_files": len(files),
        "checksum": digest.hexdigest(),
        "channels": channels,
        "height": int(data.shape[-2]),
        "width": int(data.shape[-1]),
        "original_num_states": 256,
    }
    if levels is not None:
        meta["levels"] = k
        meta["quantization"] = "value * levels // 256"
    return dataset_from_arrays(
        data,
        num_states=k,
        name=name,
        kind="image",
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        metadata=meta,
        where=str(folder),
    )


def _describe_shape(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return f"size {shape[1]}x{shape[0]} (WxH), grayscale"
    return f"size {shape[2]}x{shape[1]} (WxH), {shape[0]} channels"
