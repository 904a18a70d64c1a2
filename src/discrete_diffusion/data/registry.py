"""Name -> loader registry for datasets."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .arrays import load_array_file
from .base import DiscreteDataset
from .count_synthetic import load_nbinom_mixture
from .digits import load_digits_binary, load_digits_dataset
from .dna import load_ecoli, load_fasta
from .fashion_mnist import load_fashion_mnist, load_fashion_mnist_binary
from .kjv import load_kjv
from .png_folder import load_png_folder
from .randhie import load_randhie
from .text_formats import load_text

__all__ = ["DATASETS", "load_dataset", "register_dataset", "dataset_options"]

#: Registered dataset loaders. Each is called with keyword options only.
DATASETS: dict[str, Callable[..., DiscreteDataset]] = {
    "digits": load_digits_dataset,
    "digits-binary": load_digits_binary,
    "fashion-mnist": load_fashion_mnist,
    "fashion-mnist-binary": load_fashion_mnist_binary,
    "array": load_array_file,
    "png-folder": load_png_folder,
    "text": load_text,
    "kjv": load_kjv,
    "fasta": load_fasta,
    "ecoli": load_ecoli,
    "nbinom-mixture": load_nbinom_mixture,
    "randhie": load_randhie,
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str, loader: Callable[..., DiscreteDataset], overwrite: bool = False) -> None:
    """Add ``loader`` to :data:`DATASETS` under ``name`` (lower-case, ``-`` separated)."""
    key = _normalise(name)
    if key in DATASETS and not overwrite:
        raise ValueError(f"dataset {key!r} is already registered (pass overwrite=True)")
    DATASETS[key] = loader


def dataset_options(name: str) -> list[str]:
    """Names of the options accepted by dataset ``name``."""
    return list(inspect.signature(_get(name)).parameters)


def _get(name: str) -> Callable[..., DiscreteDataset]:
    key = _normalise(name) if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[key]


def load_dataset(name: str, **options: Any) -> DiscreteDataset:
    """Load a registered dataset by name (``_`` and ``-`` are interchangeable).

    Examples: ``load_dataset("digits")``, ``load_dataset("fashion-mnist", levels=16)``,
    ``load_dataset("array", path="x.npz", num_states=4)``,
    ``load_dataset("png-folder", path="imgs/", levels=8)``.

    Raises:
        ValueError: unknown name (lists valid names) or unknown/missing options
            (lists the accepted ones), plus any loader error.
    """
    loader = _get(name)
    sig = inspect.signature(loader)
    try:
        sig.bind(**options)
    except TypeError as exc:
        raise ValueError(
            f"bad options for dataset {name!r}: {exc}; accepted options: "
            f"{', '.join(sig.parameters)}"
        ) from None
    return loader(**options)
