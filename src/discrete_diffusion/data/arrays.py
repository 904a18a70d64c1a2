"""Datasets from in-memory arrays and user ``.npy`` / ``.npz`` files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import (
    KINDS,
    DiscreteDataset,
    split_counts,
    split_indices,
    validate_labels,
    validate_values,
)
from .limits import DEFAULT_MAX_BYTES, MAX_NUM_STATES, check_max_bytes, check_num_states, check_raw, check_states
from .npy_reader import NpzReader, parse_npy

__all__ = ["dataset_from_arrays", "load_array_file", "infer_kind", "file_sha256", "read_bounded"]

_NPZ_KEYS = ("train", "val", "test", "train_labels", "val_labels", "test_labels")


def infer_kind(site_shape: tuple[int, ...]) -> str:
    """Default ``kind`` for a site shape: 1 site axis -> ``"sequence"``, 2 or 3 -> ``"image"``.

    Other shapes default to ``"tabular"``. Pass ``kind`` explicitly to override.
    """
    if len(site_shape) == 1:
        return "sequence"
    if len(site_shape) == 2 or (len(site_shape) == 3 and site_shape[0] in (1, 3)):
        return "image"
    return "tabular"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_from_arrays(
    train: Any,
    val: Any = None,
    test: Any = None,
    *,
    num_states: int | None = None,
    name: str = "array",
    kind: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    train_labels: Any = None,
    val_labels: Any = None,
    test_labels: Any = None,
    metadata: dict[str, Any] | None = None,
    where: str = "",
    counts: bool = False,
) -> DiscreteDataset:
    """Build a :class:`DiscreteDataset` from integer arrays of shape ``(N, *site_shape)``.

    Missing splits are carved out of ``train`` deterministically (see
    :func:`~discrete_diffusion.data.base.split_indices`): with neither ``val`` nor
    ``test`` given, ``round(N*test_fraction)`` test and ``round(N*val_fraction)``
    validation examples are taken; with only one of them missing, only that one is
    split off (using its fraction). Labels, when given, follow their examples.

    Args:
        num_states: number of states. ``None`` infers ``max(data) + 1`` (at least 2).
            If given, data values ``>= num_states`` raise ``ValueError``.
        kind: ``"image"``, ``"sequence"`` or ``"tabular"``; ``None`` uses :func:`infer_kind`.
        where: source description used in error messages (e.g. the file name).
        counts: with ``num_states`` None, keep the data as counts without a maximum (the dataset's
            ``num_states`` is None and no limit on the values applies beyond int64) instead of inferring
            ``max + 1`` (config ``data.counts``; true by default for ``process.name=jump``).
    """
    check_num_states(num_states)
    src = f"{where} " if where else ""
    parts: dict[str, Tensor | None] = {}
    for split, arr in (("train", train), ("val", val), ("test", test)):
        parts[split] = None if arr is None else validate_values(arr, num_states, f"{src}'{split}'")
    labels: dict[str, Tensor | None] = {}
    for split, y in (("train", train_labels), ("val", val_labels), ("test", test_labels)):
        x = parts[split]
        if y is not None and x is None:
            raise ValueError(f"{src}'{split}_labels' given without '{split}' data")
        labels[split] = validate_labels(y, x.shape[0], f"{src}'{split}_labels'") if x is not None else None

    assert parts["train"] is not None
    needed = max(int(x.max()) for x in parts.values() if x is not None) + 1
    if num_states is None and needed > MAX_NUM_STATES and not counts:
        raise ValueError(f"data{' in ' + where if where else ''} has values up to {needed - 1}, so num_states would "
                         f"be {needed}, over the limit of {MAX_NUM_STATES} states; for counts without a maximum use "
                         "process.name=jump (or data.counts=true with it)")
    k = (None if counts else max(2, needed)) if num_states is None else int(num_states)

    x_tr, y_tr = parts["train"], labels["train"]
    n = x_tr.shape[0]
    split_info: dict[str, Any] = {"split_seed": int(split_seed)}
    carve: dict[str, int] = {}
    if parts["val"] is None and parts["test"] is None:
        _, n_val, n_test = split_counts(n, val_fraction, test_fraction)
        carve = {"test": n_test, "val": n_val}
        split_info.update(val_fraction=float(val_fraction), test_fraction=float(test_fraction))
    elif parts["val"] is None:
        _, n_val, _ = split_counts(n, val_fraction, 0.0)
        carve = {"val": n_val}
        split_info.update(val_fraction=float(val_fraction))
    elif parts["test"] is None:
        _, _, n_test = split_counts(n, 0.0, test_fraction)
        carve = {"test": n_test}
        split_info.update(test_fraction=float(test_fraction))
    if carve:
        sizes = list(carve.values()) + [n - sum(carve.values())]
        chunks = split_indices(n, sizes, split_seed)
        for split, idx in zip(carve, chunks):
            idx_t = _as_index(idx)
            parts[split] = x_tr[idx_t]
            labels[split] = y_tr[idx_t] if y_tr is not None else None
        idx_t = _as_index(chunks[-1])
        parts["train"] = x_tr[idx_t]
        labels["train"] = y_tr[idx_t] if y_tr is not None else None
        split_info["carved_from_train"] = list(carve)
    site_shape = tuple(x_tr.shape[1:])
    kind = infer_kind(site_shape) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    meta = dict(metadata or {})
    meta.setdefault("split", split_info)
    if kind == "image":
        meta.setdefault("channels", site_shape[0] if len(site_shape) == 3 else 1)
    empty = x_tr[:0]
    return DiscreteDataset(
        train=parts["train"],
        val=parts["val"] if parts["val"] is not None else empty,
        test=parts["test"] if parts["test"] is not None else empty,
        num_states=k,
        name=name,
        kind=kind,
        metadata=meta,
        train_labels=labels["train"],
        val_labels=labels["val"],
        test_labels=labels["test"],
    )


def _as_index(idx: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))


def read_bounded(path: Path, max_bytes: int, what: str = "data file") -> bytearray:
    """The bytes of ``path``, refused (before reading) when the file is over ``max_bytes``.

    A ``bytearray``, so arrays viewing it are writable.
    """
    size = path.stat().st_size
    check_raw(size, max_bytes, f"{path}: the {what}")
    buf = bytearray(size)
    with open(path, "rb") as f:
        got = f.readinto(buf)
    if got != size:
        raise ValueError(f"{path}: the {what} changed while it was read ({got} of {size} bytes)")
    return buf


def _npz_arrays(reader: NpzReader, key: str | None, path: Path) -> dict[str, np.ndarray]:
    keys = reader.keys
    if not keys:
        raise ValueError(f"{path}: the .npz archive contains no arrays")
    if key is not None:
        if key not in keys:
            raise ValueError(f"{path}: key {key!r} not found; available keys: {', '.join(keys)}")
        return {"train": reader.read(key)}
    if "train" in keys:
        unknown = [k for k in keys if k not in _NPZ_KEYS]
        if unknown:
            raise ValueError(
                f"{path}: unrecognised key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(_NPZ_KEYS)}"
            )
        return {k: reader.read(k) for k in keys}
    if len(keys) == 1:
        return {"train": reader.read(keys[0])}
    if sorted(keys) == ["x", "y"]:           # data and class labels, split like a single array
        return {"train": reader.read("x"), "train_labels": reader.read("y")}
    raise ValueError(
        f"{path}: .npz with several arrays must contain a 'train' key (optionally "
        f"'val', 'test', '*_labels'), keys 'x' and 'y' (data and labels), or pass key=...; "
        f"found keys: {', '.join(keys)}"
    )


def _read_arrays(p: Path, key: str | None, max_bytes: int, split: str = "train") -> tuple[dict[str, np.ndarray], str]:
    """Arrays of one ``.npy`` / ``.npz`` file and the SHA-256 of exactly the bytes parsed.

    For ``split="train"`` an ``.npz`` may hold every split (see :func:`load_array_file`); for a separate
    ``val`` / ``test`` file it holds one array, or the array under that split's name (with its labels).
    """
    if not p.is_file():
        raise FileNotFoundError(f"array file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{p}: expected a .npy or .npz file, got suffix {p.suffix!r}")
    raw = read_bounded(p, max_bytes, "array file")
    digest = hashlib.sha256(raw).hexdigest()
    if suffix == ".npy":
        return {split: parse_npy(raw, max_bytes, str(p))}, digest
    reader = NpzReader(raw, max_bytes, str(p))
    if split == "train":
        return _npz_arrays(reader, key, p), digest
    if split in reader.keys:
        labels = f"{split}_labels"
        out = {split: reader.read(split)}
        if labels in reader.keys:
            out[labels] = reader.read(labels)
        return out, digest
    if len(reader.keys) == 1:
        return {split: reader.read(reader.keys[0])}, digest
    raise ValueError(f"{p}: a separate {split} file must hold one array or a {split!r} key; found keys: "
                     f"{', '.join(reader.keys) or 'none'}")


def load_array_file(
    path: str | os.PathLike,
    *,
    num_states: int | None = None,
    kind: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    key: str | None = None,
    name: str = "array",
    val_path: str | os.PathLike | None = None,
    test_path: str | os.PathLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    counts: bool = False,
) -> DiscreteDataset:
    """Load integer data from a ``.npy`` or ``.npz`` file (registry name ``"array"``).

    * ``.npy``: one array of shape ``(N, *site_shape)``; val/test are split off.
    * ``.npz``: either keys ``train`` (+ optional ``val``, ``test``, ``train_labels``,
      ``val_labels``, ``test_labels``), exactly ``x`` and ``y`` (data and class labels), a single
      array under any key, or the array named by ``key``. Missing splits are carved from ``train``
      deterministically (with their labels).
    * ``val_path`` / ``test_path`` (config ``data.val_path`` / ``data.test_path``): a separate
      ``.npy`` (or ``.npz`` with one array, or with a ``val`` / ``test`` key and optional labels)
      that is the validation / test split; it is then not carved from ``train``.

    Sizes are checked against ``max_bytes`` (config ``data.max_bytes``, see
    :mod:`~discrete_diffusion.data.limits`) from the headers before anything large is allocated.
    Pickled (object) arrays are refused. Errors name the file and the array.
    ``metadata["files"]`` maps ``path`` / ``val_path`` / ``test_path`` to the file and its SHA-256.
    See :func:`dataset_from_arrays` for ``num_states``, ``counts``, ``kind`` and the split options.
    """
    max_bytes = check_max_bytes(max_bytes)
    check_num_states(num_states)
    p = Path(path).expanduser()
    arrays, digest = _read_arrays(p, key, max_bytes)
    files = {"path": {"file": str(p.resolve()), "sha256": digest}}
    for option, split, extra in (("val_path", "val", val_path), ("test_path", "test", test_path)):
        if extra is None:
            continue
        if split in arrays:
            raise ValueError(f"{p} already holds a {split!r} array; data.{option} would give the {split} split twice")
        q = Path(extra).expanduser()
        more, more_digest = _read_arrays(q, None, max_bytes, split)
        arrays.update(more)
        files[option] = {"file": str(q.resolve()), "sha256": more_digest}
    check_states(sum(a.size for a in arrays.values()), max_bytes, f"{p}: all splits together")
    meta = {
        "source": str(p.resolve()),
        "sha256": digest,
        "keys": sorted(arrays),
        "files": files,
    }
    return dataset_from_arrays(
        arrays["train"],
        arrays.get("val"),
        arrays.get("test"),
        num_states=num_states,
        name=name,
        kind=kind,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        train_labels=arrays.get("train_labels"),
        val_labels=arrays.get("val_labels"),
        test_labels=arrays.get("test_labels"),
        metadata=meta,
        where=str(p),
        counts=counts,
    )
