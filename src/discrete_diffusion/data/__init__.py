"""Discrete-state datasets: integer tensors ``(N, *site_shape)`` with values in ``0..K-1``.

Use :func:`load_dataset` with a registered name (see :data:`DATASETS`), or build a
:class:`DiscreteDataset` from arrays with :func:`dataset_from_arrays`.
"""

from .arrays import dataset_from_arrays, load_array_file
from .base import (
    KINDS,
    DiscreteDataset,
    quantize,
    split_counts,
    split_indices,
    validate_labels,
    validate_values,
)
from .count_synthetic import PAPER_MIXTURE, load_nbinom_mixture, negative_binomial_mixture
from .digits import load_digits_binary, load_digits_dataset
from .dna import decode_dna, encode_dna, load_ecoli, load_fasta, read_fasta
from .fashion_mnist import (
    DEBIAN_PACKAGE,
    DatasetUnavailableError,
    load_fashion_mnist,
    load_fashion_mnist_binary,
)
from .idx import parse_idx, read_idx
from .kjv import load_kjv
from .normalize import TEXT8_VOCAB, normalize_text
from .png_folder import load_png_folder
from .randhie import load_randhie
from .registry import DATASETS, dataset_options, load_dataset, register_dataset
from .text import decode_text, encode_text, load_text_file
from .text_formats import EOS, load_text

__all__ = [
    "KINDS",
    "PAPER_MIXTURE",
    "load_nbinom_mixture",
    "negative_binomial_mixture",
    "DATASETS",
    "DEBIAN_PACKAGE",
    "DatasetUnavailableError",
    "DiscreteDataset",
    "dataset_from_arrays",
    "dataset_options",
    "decode_dna",
    "decode_text",
    "encode_dna",
    "encode_text",
    "load_array_file",
    "load_dataset",
    "load_digits_binary",
    "load_digits_dataset",
    "load_ecoli",
    "load_fasta",
    "load_fashion_mnist",
    "load_fashion_mnist_binary",
    "load_kjv",
    "load_png_folder",
    "load_randhie",
    "load_text_file",
    "load_text",
    "EOS",
    "TEXT8_VOCAB",
    "normalize_text",
    "parse_idx",
    "quantize",
    "read_fasta",
    "read_idx",
    "register_dataset",
    "split_counts",
    "split_indices",
    "validate_labels",
    "validate_values",
]
