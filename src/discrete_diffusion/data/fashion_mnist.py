"""Fashion-MNIST (Zalando Research): 70,000 grayscale 28x28 images, 10 classes.

Where the files are looked for, in order (the first directory holding all four
files, each either plain or ``.gz``, wins):

1. ``data_dir`` if given (then only there; downloads also go there);
2. ``/usr/share/datasets/fashion-mnist/`` -- installed by the Debian/Ubuntu package
   ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``);
3. the user cache ``$DDIFF_DATA_DIR/fashion-mnist`` if ``DDIFF_DATA_DIR`` is set,
   else ``~/.cache/discrete-diffusion/fashion-mnist``.

If none is complete and ``download=True``, the four official ``.gz`` files are
downloaded into the cache directory and checked against the official MD5s.
Every file is also checked against the MD5 of its *decompressed* content (the
Debian package re-compresses the files, so only the decompressed bytes match
upstream).

Split: the official 10,000 ``t10k`` images are the test set. From the 60,000
training images, ``val_size`` (default 5,000) are held out for validation: the
first ``val_size`` indices of :func:`~discrete_diffusion.data.base.split_indices`'
permutation of 0..59,999 with ``split_seed`` (default 0); the rest (55,000) are
the training set, in permutation order.

States: 256 grey levels, or ``levels`` states via ``value * levels // 256``
(e.g. ``levels=16`` gives ``value // 16``); ``fashion-mnist-binary`` thresholds at
``value >= 128``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DiscreteDataset, split_indices
from .idx import parse_idx, read_maybe_gzip

__all__ = [
    "load_fashion_mnist",
    "load_fashion_mnist_binary",
    "fashion_mnist_search_dirs",
    "find_fashion_mnist",
    "download_fashion_mnist",
    "DatasetUnavailableError",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_CLASSES",
    "DEBIAN_PACKAGE",
    "SYSTEM_DIR",
]

log = logging.getLogger(__name__)

#: Debian/Ubuntu package that installs the files into :data:`SYSTEM_DIR`.
DEBIAN_PACKAGE = "dataset-fashion-mnist"
#: Where :data:`DEBIAN_PACKAGE` installs the (gzipped) IDX files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: file stem -> (MD5 of the official .gz file, MD5 of the decompressed IDX file, expected shape)
FASHION_MNIST_FILES: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "train-images-idx3-ubyte": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
    "train-labels-idx1-ubyte": (
        "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9", (60000,)),
    "t10k-images-idx3-ubyte": (
        "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (
        "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965", (10000,)),
}

#: Base URLs tried in order for downloads.
MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class DatasetUnavailableError(FileNotFoundError):
    """The dataset files are not present locally and could not be downloaded."""


def _cache_dir() -> Path:
    root = os.environ.get("DDIFF_DATA_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "discrete-diffusion"
    return base / "fashion-mnist"


def fashion_mnist_search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for the IDX files, in order (see module docstring)."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    return [SYSTEM_DIR, _cache_dir()]


def _locate(directory: Path) -> dict[str, Path] | None:
    found = {}
    for stem in FASHION_MNIST_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            return None
    return found


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """Paths of the four files in the first complete search directory, or ``None``."""
    for d in fashion_mnist_search_dirs(data_dir):
        found = _locate(d)
        if found is not None:
            return found
    return None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https/http URLs
        return resp.read()


def download_fashion_mnist(target_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Download the four official ``.gz`` files into ``target_dir`` (default: cache dir).

    Each file is verified against its official MD5 before being atomically moved
    into place. Raises :class:`DatasetUnavailableError` if a file cannot be fetched
    from any mirror or fails verification.
    """
    target = Path(target_dir).expanduser() if target_dir is not None else _cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, (gz_md5, _, _) in FASHION_MNIST_FILES.items():
        dest = target / f"{stem}.gz"
        errors = []
        for base in MIRRORS:
            url = base + f"{stem}.gz"
            try:
                data = _fetch(url)
            except Exception as exc:  # network errors of any kind -> try next mirror
                errors.append(f"{url}: {exc}")
                continue
            got = _md5(data)
            if got != gz_md5:
                errors.append(f"{url}: MD5 mismatch (expected {gz_md5}, got {got})")
                continue
            fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{stem}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            log.info("downloaded %s -> %s", url, dest)
            break
        else:
            raise DatasetUnavailableError(
                f"could not download {stem}.gz:\n  " + "\n  ".join(errors) + "\n" + _install_hint()
            )
        out[stem] = dest
    return out


def _install_hint() -> str:
    names = ", ".join(f"{s}[.gz]" for s in FASHION_MNIST_FILES)
    return (
        "Fashion-MNIST files not available. Either install the Debian/Ubuntu package "
        f"'{DEBIAN_PACKAGE}' (sudo apt-get install {DEBIAN_PACKAGE}; files go to {SYSTEM_DIR}), "
        f"or put the four files ({names}) into {_cache_dir()} (or a directory passed as "
        "data_dir=..., or $DDIFF_DATA_DIR/fashion-mnist), or allow download=True with "
        "network access."
    )


def _read_verified(path: Path, stem: str, verify: bool) -> np.ndarray:
    _, raw_md5, shape = FASHION_MNIST_FILES[stem]
    data = read_maybe_gzip(path)
    if verify:
        got = _md5(data)
        if got != raw_md5:
            raise ValueError(
                f"{path}: checksum mismatch for {stem} (MD5 of decompressed content "
                f"{got}, expected {raw_md5}); the file is corrupt or not Fashion-MNIST. "
                "Delete it to re-download, or pass verify=False."
            )
    arr = parse_idx(data, where=str(path))
    if arr.shape != shape or arr.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 array of shape {shape}, got {arr.dtype} {arr.shape}")
    return arr


def _load(
    binary: bool,
    levels: int | None,
    val_size: int,
    split_seed: int,
    data_dir: str | os.PathLike | None,
    download: bool,
    verify: bool,
) -> DiscreteDataset:
    files = find_fashion_mnist(data_dir)
    if files is None:
        if not download:
            searched = ", ".join(str(d) for d in fashion_mnist_search_dirs(data_dir))
            raise DatasetUnavailableError(f"searched: {searched}. " + _install_hint())
        target = fashion_mnist_search_dirs(data_dir)[-1]
        files = download_fashion_mnist(target)
    arrays = {stem: _read_verified(p, stem, verify) for stem, p in files.items()}
    x_train_all = arrays["train-images-idx3-ubyte"]
    y_train_all = arrays["train-labels-idx1-ubyte"]
    n = x_train_all.shape[0]
    if not 0 <= int(val_size) < n:
        raise ValueError(f"val_size must be in 0..{n - 1}, got {val_size}")
    val_idx, train_idx = split_indices(n, [int(val_size), n - int(val_size)], split_seed)

    if binary:
        if levels is not None:
            raise ValueError("fashion-mnist-binary does not accept 'levels'")
        k = 2
    elif levels is None:
        k = 256
    else:
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 256:
            raise ValueError(f"levels must be an integer in 2..256, got {levels!r}")
        k = int(levels)

    def convert(x: np.ndarray) -> torch.Tensor:
        if binary:
            x = (x >= 128).astype(np.uint8)
        elif k != 256:
            x = ((x.astype(np.uint16) * k) // 256).astype(np.uint8)
        return torch.from_numpy(x.astype(np.int64))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    meta: dict[str, Any] = {
        "source": str(next(iter(files.values())).parent.resolve()),
        "files": {stem: {"path": str(p), "md5_decompressed": FASHION_MNIST_FILES[stem][1]}
                  for stem, p in files.items()},
        "verified": bool(verify),
        "channels": 1,
        "height": 28,
        "width": 28,
        "num_classes": 10,
        "class_names": list(FASHION_MNIST_CLASSES),
        "original_num_states": 256,
        "split": {"split_seed": int(split_seed), "val_size": int(val_size),
                  "test": "official t10k files"},
    }
    if binary:
        meta["threshold"] = 128
    if levels is not None:
        meta["levels"] = k
        meta["quantization"] = "value * levels // 256"
    return DiscreteDataset(
        train=convert(x_train_all[train_idx]),
        val=convert(x_train_all[val_idx]),
        test=convert(arrays["t10k-images-idx3-ubyte"]),
        num_states=k,
        name="fashion-mnist-binary" if binary else "fashion-mnist",
        kind="image",
        metadata=meta,
        train_labels=labels(y_train_all[train_idx]),
        val_labels=labels(y_train_all[val_idx]),
        test_labels=labels(arrays["t10k-labels-idx1-ubyte"]),
    )


def load_fashion_mnist(
    levels: int | None = None,
    val_size: int = 5000,
    split_seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> DiscreteDataset:
    """Fashion-MNIST as 28x28 images with 256 states, or ``levels`` states.

    Returns 55,000 train / 5,000 val / 10,000 test images with class labels.
    ``levels`` (2..256) quantises pixels by ``value * levels // 256``. See the module
    docstring for where files are searched and how the split is made.

    Raises:
        DatasetUnavailableError: files absent and not downloadable (message says how
            to install them).
        ValueError: corrupt/truncated files or checksum mismatch (names the file).
    """
    return _load(False, levels, val_size, split_seed, data_dir, download, verify)


def load_fashion_mnist_binary(
    val_size: int = 5000,
    split_seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> DiscreteDataset:
    """Fashion-MNIST thresholded at ``value >= 128`` to {0, 1} (``num_states=2``)."""
    return _load(True, None, val_size, split_seed, data_dir, download, verify)
