"""Core data container, value validation and deterministic splitting.

All data in this library are integer tensors (``torch.long``) of shape
``(N, *site_shape)`` whose entries lie in ``0 .. num_states - 1``. Images are
``(N, H, W)`` (grayscale) or ``(N, C, H, W)`` (channel first); the channel axis
is just another site axis. Data are never one-hot encoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .limits import check_num_states

__all__ = [
    "KINDS",
    "DiscreteDataset",
    "validate_values",
    "validate_labels",
    "split_indices",
    "split_counts",
    "quantize",
    "sha256_of_arrays",
]

#: Allowed values of :attr:`DiscreteDataset.kind`.
KINDS = ("image", "sequence", "tabular")

_SPLITS = ("train", "val", "test")


def _describe(where: str) -> str:
    return f" in {where}" if where else ""


def validate_values(x: Any, num_states: int | None, where: str = "") -> Tensor:
    """Check that ``x`` holds discrete states and return it as a ``torch.long`` tensor.

    Args:
        x: array-like (``numpy.ndarray``, ``torch.Tensor``, nested lists) of shape
            ``(N, *site_shape)`` with ``N >= 1`` and at least one site axis.
        num_states: number of states ``K``; values must lie in ``0 .. K-1``. ``None``
            skips the upper-bound check (only non-negativity is enforced).
        where: description of the source (file name, array key) used in messages.

    Returns:
        A CPU ``torch.long`` tensor with the same shape and values.

    Raises:
        ValueError: for an empty array, fewer than two dimensions, a non-numeric
            dtype, NaN/inf, non-integral floats, negative values or values
            ``>= num_states``. Values are never clipped.
    """
    loc = _describe(where)
    if isinstance(x, Tensor):
        arr = x.detach().cpu().numpy() if x.dtype != torch.bfloat16 else x.detach().cpu().float().numpy()
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise ValueError(f"could not convert data{loc} to an array: {exc}") from exc
    if arr.ndim < 2:
        raise ValueError(
            f"data{loc} must have shape (N, *site_shape) with at least 2 dimensions, "
            f"got shape {tuple(arr.shape)}"
        )
    if arr.size == 0:
        raise ValueError(f"data{loc} is empty (shape {tuple(arr.shape)})")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    kind = arr.dtype.kind
    if kind not in "iuf":
        raise ValueError(
            f"data{loc} has dtype {arr.dtype}; expected integer states (or integral floats)"
        )
    if kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int((~finite).sum())
            raise ValueError(f"data{loc} contains {bad} NaN/inf value(s); states must be integers")
        frac = arr != np.round(arr)
        if frac.any():
            idx = tuple(int(i) for i in np.argwhere(frac)[0])
            raise ValueError(
                f"data{loc} has float dtype {arr.dtype} with non-integral value "
                f"{arr[idx].item()} at index {idx}; states must be integers"
            )
    lo, hi = arr.min(), arr.max()
    rng = f"0..{num_states - 1}" if num_states is not None else "0..(num_states-1)"
    if lo < 0:
        raise ValueError(
            f"data{loc} contains negative values (min found {lo}, max found {hi}); "
            f"allowed range is {rng}"
        )
    if num_states is not None:
        check_num_states(num_states)
        if hi >= num_states:
            raise ValueError(
                f"data{loc} has values out of range (min found {lo}, max found {hi}); "
                f"allowed range is {rng} for num_states={num_states}"
            )
    if (float(hi) >= 2.0**63) if kind == "f" else (int(hi) > np.iinfo(np.int64).max):  # no cast of a huge float
        raise ValueError(f"data{loc} has values too large for int64 (max found {hi})")
    return torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64, copy=False)))


def validate_labels(y: Any, n: int, where: str = "") -> Tensor | None:
    """Return class labels as a 1-D ``torch.long`` tensor of length ``n`` (or ``None``)."""
    if y is None:
        return None
    loc = _describe(where)
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"labels{loc} must have shape ({n},), got {tuple(arr.shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
        raise ValueError(f"labels{loc} must be integers")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"labels{loc} have dtype {arr.dtype}; expected integers")
    if n and arr.min() < 0:
        raise ValueError(f"labels{loc} contain negative values (min found {arr.min()})")
    return torch.from_numpy(np.ascontiguousarray(arr.astype(np.int64)))


@dataclass
class DiscreteDataset:
    """Train/validation/test splits of discrete-state data.

    Attributes:
        train, val, test: ``torch.long`` tensors of shape ``(n, *site_shape)`` with
            values in ``0 .. num_states-1``. ``val``/``test`` may have ``n = 0``.
        num_states: number of states ``K`` per site, or None for counts without a maximum (values 0, 1, 2, ...
            of any size; only a process that needs no K, such as ``jump``, accepts them).
        name: dataset name (registry key or user-given).
        kind: ``"image"``, ``"sequence"`` or ``"tabular"``.
        metadata: JSON-serialisable facts (channels, source path, checksums, split).
        train_labels, val_labels, test_labels: optional 1-D class labels aligned
            with the corresponding split (``None`` when the source has none).
    """

    train: Tensor
    val: Tensor
    test: Tensor
    num_states: int
    name: str
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict)
    train_labels: Tensor | None = None
    val_labels: Tensor | None = None
    test_labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.num_states is not None:      # None: counts 0, 1, 2, ... without a maximum (data.counts)
            if not isinstance(self.num_states, (int, np.integer)) or self.num_states < 1:
                raise ValueError(f"num_states must be a positive integer or None (counts), got {self.num_states!r}")
            self.num_states = int(self.num_states)
            check_num_states(self.num_states, self.name)
        shape = None
        for split in _SPLITS:
            x = getattr(self, split)
            if not isinstance(x, Tensor) or x.dtype != torch.long:
                raise ValueError(f"{self.name}: split '{split}' must be a torch.long tensor")
            if x.ndim < 2:
                raise ValueError(
                    f"{self.name}: split '{split}' must have shape (n, *site_shape), "
                    f"got {tuple(x.shape)}"
                )
            if shape is None:
                shape = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"{self.name}: split '{split}' has site shape {tuple(x.shape[1:])}, "
                    f"expected {shape} (as in 'train')"
                )
            if x.numel():
                lo, hi = int(x.min()), int(x.max())
                if lo < 0 or (self.num_states is not None and hi >= self.num_states):
                    raise ValueError(
                        f"{self.name}: split '{split}' has values in {lo}..{hi}, "
                        f"allowed range is 0..{self.num_states - 1}"
                    )
            y = getattr(self, f"{split}_labels")
            if y is not None and (y.ndim != 1 or y.shape[0] != x.shape[0]):
                raise ValueError(
                    f"{self.name}: {split}_labels has shape {tuple(y.shape)}, "
                    f"expected ({x.shape[0]},)"
                )
        if self.train.shape[0] == 0:
            raise ValueError(f"{self.name}: the training split is empty")

    @property
    def site_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(8, 8)`` or ``(3, 32, 32)``."""
        return tuple(self.train.shape[1:])

    @property
    def num_sites(self) -> int:
        """Number of sites (product of :attr:`site_shape`)."""
        return int(np.prod(self.site_shape))

    def split(self, name: str) -> Tensor:
        """Return the split ``"train"``, ``"val"`` or ``"test"``."""
        if name not in _SPLITS:
            raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(_SPLITS)}")
        return getattr(self, name)

    def labels(self, name: str) -> Tensor | None:
        """Return the labels of split ``name`` (``None`` when unavailable)."""
        self.split(name)
        return getattr(self, f"{name}_labels")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={getattr(self, s).shape[0]}" for s in _SPLITS)
        return (
            f"DiscreteDataset(name={self.name!r}, kind={self.kind!r}, "
            f"site_shape={self.site_shape}, num_states={self.num_states}, {sizes})"
        )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _permutation(n: int, seed: int) -> np.ndarray:
    """Version-independent pseudo-random permutation of ``range(n)``.

    Indices are sorted by a SplitMix64 hash of ``(seed, index)``; the result
    depends only on ``n`` and ``seed`` (not on numpy/torch RNG implementations).
    """
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        h = _splitmix64(np.arange(n, dtype=np.uint64) ^ key)
    return np.argsort(h, kind="stable")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Sizes ``(n_train, n_val, n_test)`` for fractions rounded to the nearest integer."""
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(frac) < 1.0:
            raise ValueError(f"{label} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split of {n} examples leaves no training data")
    return n_train, n_val, n_test


def split_indices(
    n: int, sizes: Sequence[int], seed: int = 0
) -> list[np.ndarray]:
    """Deterministically partition ``range(n)`` into consecutive chunks of a permutation.

    The permutation is a pure function of ``(n, seed)`` (SplitMix64 hash order),
    so splits are identical across platforms and library versions. Chunk ``i``
    has ``sizes[i]`` indices; ``sum(sizes)`` must equal ``n``.
    """
    if sum(sizes) != n or any(s < 0 for s in sizes):
        raise ValueError(f"split sizes {list(sizes)} must be non-negative and sum to {n}")
    perm = _permutation(n, int(seed))
    out, start = [], 0
    for s in sizes:
        out.append(perm[start : start + s])
        start += s
    return out


def quantize(x: Tensor, in_states: int, levels: int) -> Tensor:
    """Map states ``0..in_states-1`` to ``0..levels-1`` by ``x * levels // in_states``.

    E.g. 8-bit pixels (``in_states=256``) with ``levels=16`` give ``x // 16``.
    """
    if not isinstance(levels, (int, np.integer)) or isinstance(levels, bool):
        raise ValueError(f"levels must be an integer, got {levels!r}")
    if not 2 <= levels <= in_states:
        raise ValueError(f"levels must be in 2..{in_states}, got {levels}")
    return torch.div(x * int(levels), in_states, rounding_mode="floor")


def sha256_of_arrays(*arrays: np.ndarray | Tensor) -> str:
    """SHA-256 over shapes, dtypes and bytes of the given arrays (for metadata)."""
    h = hashlib.sha256()
    for a in arrays:
        arr = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
        arr = np.ascontiguousarray(arr)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
