"""Datasets from a folder of PNG images (registry name ``"png-folder"``)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .arrays import dataset_from_arrays
from .base import DiscreteDataset, quantize, validate_values
from .limits import DEFAULT_MAX_BYTES, check_max_bytes, check_raw, check_states

__all__ = ["load_png_folder"]

_GRAY_MODES = ("L", "1")
_MODES = ("auto", "L", "RGB")


class _ModeError(ValueError):
    pass


def _open(path: Path, raw: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(raw))
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def _out_channels(path: Path, img: Image.Image, mode: str) -> int:
    """Channels of the decoded image (1 or 3), from its header; mode errors before any decoding."""
    if mode == "auto":
        if img.mode in _GRAY_MODES:
            return 1
        if img.mode == "RGB":
            return 3
        raise _ModeError(
            f"{path}: unsupported image mode {img.mode!r}; expected grayscale 'L' "
            "or 'RGB' (pass mode='L' or mode='RGB' to convert all images)"
        )
    return 1 if mode == "L" else 3


def _decode(path: Path, raw: bytes, mode: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if mode == "auto":
                if img.mode in _GRAY_MODES:
                    img = img.convert("L")
            elif img.mode != mode:
                img = img.convert(mode)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises OSError, SyntaxError, DecompressionBombError, ...
        raise ValueError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3:
        arr = np.transpose(arr, (2, 0, 1))  # HWC -> CHW
    return arr


def _read_folder(folder: Path, mode: str, max_bytes: int, used_states: int = 0) -> tuple[np.ndarray, str, int]:
    """Decode every PNG of ``folder``: ``(N, H, W)`` or ``(N, 3, H, W)`` uint8, the folder's SHA-256 (names and
    bytes in sorted order) and the number of files. ``used_states`` counts states loaded from other folders
    against the same ``max_bytes`` budget."""
    if not folder.is_dir():
        raise FileNotFoundError(f"PNG folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"{folder}: no .png files found")
    digest = hashlib.sha256()
    # Pass 1: file bytes and headers only. The decoded size (at most 4 bytes per pixel inside PIL, and 8
    # bytes per state once loaded) is checked against max_bytes before a single image is decoded.
    raws: list[bytes] = []
    first: tuple[tuple[int, int], int] | None = None
    file_bytes = pixels = 0
    states = used_states
    for f in files:
        file_bytes += f.stat().st_size
        check_raw(file_bytes, max_bytes, f"{folder}: the PNG files up to {f.name}")
        raw = f.read_bytes()
        digest.update(f.name.encode() + b"\0" + raw)
        with _open(f, raw) as img:
            size, channels = img.size, _out_channels(f, img, mode)
        if first is None:
            first = (size, channels)
        elif (size, channels) != first:
            raise ValueError(
                f"{f}: image has {_describe_size(size, channels)} but {files[0].name} has "
                f"{_describe_size(*first)}; all images must have the same size and colour type"
            )
        pixels += size[0] * size[1]
        states += size[0] * size[1] * channels
        check_raw(4 * pixels, max_bytes, f"{folder}: the decoded pixels of the images up to {f.name} "
                                         f"({size[0]}x{size[1]} each)")
        check_states(states, max_bytes, f"{folder}: the images up to {f.name} ({size[0]}x{size[1]} each)")
        raws.append(raw)
    images = []
    for f, raw in zip(files, raws):
        arr = _decode(f, raw, mode)
        if images and arr.shape != images[0].shape:  # the decoder disagrees with the header
            raise ValueError(f"{f}: decoded image has shape {arr.shape}, expected {images[0].shape}")
        images.append(arr)
    del raws
    return np.stack(images), digest.hexdigest(), len(files)


def _class_folders(folder: Path) -> list[Path] | None:
    """The class subfolders of ``folder`` (sorted by name) when it holds no PNG itself but subfolders with PNGs;
    None when it holds PNGs directly (an unlabelled folder)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"PNG folder not found: {folder}")
    if any(p.is_file() and p.suffix.lower() == ".png" for p in folder.iterdir()):
        return None
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    return subs or None


def _read_labelled(folder: Path, mode: str, max_bytes: int, used_states: int = 0,
                   classes: list[str] | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None, str, int, list[str] | None]:
    """``_read_folder`` of a folder of PNGs, or of a folder of class subfolders (one class per subfolder, labels in
    sorted name order, or in the order of ``classes`` when given): (images, labels or None, SHA-256, number of
    files, class names or None)."""
    subs = _class_folders(folder)
    if subs is None:
        if classes is not None:
            raise ValueError(f"{folder}: the training folder has class subfolders, so this one must have them too")
        arr, digest, n = _read_folder(folder, mode, max_bytes, used_states)
        return arr, None, digest, n, None
    names = [p.name for p in subs]
    if classes is not None and any(name not in classes for name in names):
        unknown = [name for name in names if name not in classes]
        raise ValueError(f"{folder}: class subfolder(s) {', '.join(unknown)} not among the training classes "
                         f"{', '.join(classes)}")
    order = classes if classes is not None else names
    images, labels, digest, total = [], [], hashlib.sha256(), 0
    for sub in subs:
        arr, sub_digest, n = _read_folder(sub, mode, max_bytes, used_states)
        if images and arr.shape[1:] != images[0].shape[1:]:
            raise ValueError(f"{sub}: images have shape {arr.shape[1:]} but {subs[0].name}'s have "
                             f"{images[0].shape[1:]}; all images must have the same size and colour type")
        used_states += arr.size
        images.append(arr)
        labels.append(np.full(arr.shape[0], order.index(sub.name), dtype=np.int64))
        digest.update(sub.name.encode() + b"\0" + sub_digest.encode())
        total += n
    return np.concatenate(images), np.concatenate(labels), digest.hexdigest(), total, order


def load_png_folder(
    path: str | os.PathLike,
    *,
    levels: int | None = None,
    mode: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    name: str = "png-folder",
    val_path: str | os.PathLike | None = None,
    test_path: str | os.PathLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DiscreteDataset:
    """Load every ``*.png`` file (case-insensitive, not recursive) of a folder, or of its class subfolders.

    A folder that holds no PNG itself but subfolders of PNGs is labelled: one class per subfolder, class c the
    c-th name in sorted order (``metadata["classes"]``); ``val_path`` / ``test_path`` then need class subfolders
    too (names among the training classes).

    Files are read in sorted name order. All images must have the same size and
    colour type: grayscale (mode ``'L'``/``'1'``) gives ``(N, H, W)``, RGB gives
    ``(N, 3, H, W)``. With ``mode='L'`` or ``mode='RGB'`` every image is converted
    to that mode instead (e.g. for palette or RGBA files).

    Pixels have 256 states, or ``levels`` states via ``value * levels // 256``.
    Validation/test sets are split off deterministically (see
    :func:`~discrete_diffusion.data.arrays.dataset_from_arrays`), unless ``val_path`` /
    ``test_path`` (config ``data.val_path`` / ``data.test_path``) name folders of PNGs
    that are that split (same size and colour type as the training images).

    Before any image is decoded, the PNG headers of all files are read and the decoded
    size is checked against ``max_bytes`` (config ``data.max_bytes``; at most 4 bytes per
    pixel while decoding and 8 bytes per loaded state; see
    :mod:`~discrete_diffusion.data.limits`). ``metadata["files"]`` maps ``path`` /
    ``val_path`` / ``test_path`` to the folder and its SHA-256 (file names and bytes).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no PNG files, an unreadable/corrupt image, a size or colour-type
            mismatch (the message names the offending file), images over ``max_bytes``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
    max_bytes = check_max_bytes(max_bytes)
    folder = Path(path).expanduser()
    stacked, train_labels, checksum, num_files, classes = _read_labelled(folder, mode, max_bytes)
    files = {"path": {"file": str(folder.resolve()), "sha256": checksum}}
    extra: dict[str, np.ndarray] = {}
    extra_labels: dict[str, np.ndarray | None] = {}
    used = stacked.size
    for option, split, other in (("val_path", "val", val_path), ("test_path", "test", test_path)):
        if other is not None:
            q = Path(other).expanduser()
            if classes is None:
                arr, other_sum, _n = _read_folder(q, mode, max_bytes, used)
                extra_labels[split] = None
            else:
                arr, extra_labels[split], other_sum, _n, _c = _read_labelled(q, mode, max_bytes, used, classes)
            used += arr.size
            extra[split] = arr
            files[option] = {"file": str(q.resolve()), "sha256": other_sum}
    parts = {split: validate_values(arr, 256, str(folder if split == "train" else files[f"{split}_path"]["file"]))
             for split, arr in (("train", stacked), *extra.items())}
    k = 256
    if levels is not None:
        parts = {split: quantize(x, 256, levels) for split, x in parts.items()}
        k = int(levels)
    data = parts["train"]
    channels = 1 if data.ndim == 3 else int(data.shape[1])
    meta = {
        "source": str(folder.resolve()),
        "num_files": num_files,
        "checksum": checksum,
        "files": files,
        "channels": channels,
        "height": int(data.shape[-2]),
        "width": int(data.shape[-1]),
        "original_num_states": 256,
    }
    if levels is not None:
        meta["levels"] = k
        meta["quantization"] = "value * levels // 256"
    if classes is not None:
        meta["classes"] = classes
    return dataset_from_arrays(
        data,
        parts.get("val"),
        parts.get("test"),
        num_states=k,
        name=name,
        kind="image",
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        metadata=meta,
        where=str(folder),
        train_labels=train_labels,
        val_labels=extra_labels.get("val"),
        test_labels=extra_labels.get("test"),
    )


def _describe_size(size: tuple[int, int], channels: int) -> str:
    colour = "grayscale" if channels == 1 else f"{channels} channels"
    return f"size {size[0]}x{size[1]} (WxH), {colour}"
