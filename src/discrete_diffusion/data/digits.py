"""The UCI optical-recognition handwritten digits (scikit-learn ``load_digits``).

1,797 grayscale images of 8x8 pixels with intensities 0..16 (17 states), labels
0..9. The data ship with scikit-learn, so no download is needed.

Fixed split (``split_seed=0``): the 1,797 indices are permuted with
:func:`~discrete_diffusion.data.base.split_indices` (a platform- and
version-independent SplitMix64 hash order); the first 297 of the permutation
form the test set, the next 150 the validation set and the remaining 1,350 the
training set. Within each split the examples keep the permutation order.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import DiscreteDataset, sha256_of_arrays, split_indices, validate_values

__all__ = ["load_digits_dataset", "load_digits_binary", "DIGITS_SPLIT_SIZES"]

#: (test, val, train) sizes of the fixed digits split.
DIGITS_SPLIT_SIZES = (297, 150, 1350)

_DIGITS_STATES = 17
_BINARY_THRESHOLD = 8


def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def _build(binary: bool, split_seed: int) -> DiscreteDataset:
    images, target = _load_raw()
    x = validate_values(images, _DIGITS_STATES, "sklearn load_digits() images")
    n = x.shape[0]
    n_test, n_val, _ = DIGITS_SPLIT_SIZES
    sizes = [n_test, n_val, n - n_test - n_val]
    test_idx, val_idx, train_idx = (torch.from_numpy(i) for i in split_indices(n, sizes, split_seed))
    if binary:
        x = (x >= _BINARY_THRESHOLD).long()
    y = torch.from_numpy(target.astype(np.int64))
    meta = {
        "source": "sklearn.datasets.load_digits",
        "channels": 1,
        "height": 8,
        "width": 8,
        "num_classes": 10,
        "original_num_states": _DIGITS_STATES,
        "checksum": sha256_of_arrays(images.astype(np.uint8), target.astype(np.int64)),
        "split": {
            "split_seed": int(split_seed),
            "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "method": "first 297 of split_indices permutation -> test, next 150 -> val, rest -> train",
        },
    }
    if binary:
        meta["threshold"] = _BINARY_THRESHOLD
    return DiscreteDataset(
        train=x[train_idx],
        val=x[val_idx],
        test=x[test_idx],
        num_states=2 if binary else _DIGITS_STATES,
        name="digits-binary" if binary else "digits",
        kind="image",
        metadata=meta,
        train_labels=y[train_idx],
        val_labels=y[val_idx],
        test_labels=y[test_idx],
    )


def load_digits_dataset(split_seed: int = 0) -> DiscreteDataset:
    """8x8 digits with 17 intensity states (registry name ``"digits"``).

    Split: 1,350 train / 150 val / 297 test (see module docstring); change
    ``split_seed`` only if you deliberately want a different split.
    """
    return _build(binary=False, split_seed=split_seed)


def load_digits_binary(split_seed: int = 0) -> DiscreteDataset:
    """Digits thresholded at intensity ``>= 8`` to {0, 1} (registry name ``"digits-binary"``).

    Same images, labels and split as :func:`load_digits_dataset`.
    """
    return _build(binary=True, split_seed=split_seed)
