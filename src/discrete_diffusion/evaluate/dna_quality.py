"""Sample quality of DNA: k-mer spectrum Jensen-Shannon divergence (k = 3..6) and GC content.

References: k-mer spectrum distances as a sample-quality measure for generated DNA, e.g. Avdeyev, Shi, Tan,
Dudnyk, Zhou, "Dirichlet Diffusion Score Model for Biological Sequence Generation", ICML 2023; Lin, "Divergence
measures based on the Shannon entropy", IEEE Trans. Inf. Theory 1991 (Jensen-Shannon divergence).

Bases are indexed as in :mod:`~discrete_diffusion.data.dna`: ``A=0, C=1, G=2, T=3``. For a set ``X`` of
``(N, L)`` windows, its k-mer spectrum ``P_k(X)`` is the normalised count of the ``4 ** k`` k-mers, counted
overlapping inside each window (none across windows) and pooled over windows.

* ``kmer_js_k{k}`` (k = 3, 4, 5, 6), in bits, in ``[0, 1]``:
  ``"samples"`` = ``JS(P_k(samples), P_k(reference))``, the distance of the samples to the held-out set;
  ``"reference"`` = ``JS(P_k(reference), P_k(T))`` where ``T`` is ``N`` windows of the *training* split
  (disjoint from a held-out ``reference``; chosen by a fixed-seed permutation, or all training windows when
  there are fewer than ``N``). That is the score of a perfect sampler that draws real windows of the
  training distribution, at the same sample size: JS of finite spectra is biased upwards when ``N L`` is
  small against ``4 ** k``, so read ``"samples"`` against it, not against 0.
  ``JS(P, Q) = (KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2`` and logs base 2.
* ``gc_content``: the share of bases that are G or C, ``#{C, G} / (N L)``, of the samples and of the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..data.base import DiscreteDataset
from ..data.dna import DNA_ALPHABET
from .ngram import check_token_batch, js_divergence_bits, kmer_spectrum, warn_if_sizes_differ

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.load import LoadedRun

__all__ = ["KMER_SIZES", "is_dna", "gc_content", "dna_quality"]

#: k of the k-mer spectra compared.
KMER_SIZES = (3, 4, 5, 6)
_COMPARISON_SEED = 0


def is_dna(dataset: DiscreteDataset) -> bool:
    """DNA windows: a 1-D sequence dataset over the 4 bases ``ACGT`` (the ``fasta`` and ``ecoli`` loaders,
    recognised by ``metadata["alphabet"] == "ACGT"``, whatever the dataset's name)."""
    return (dataset.kind == "sequence" and dataset.num_states == len(DNA_ALPHABET) and len(dataset.site_shape) == 1
            and dataset.metadata.get("alphabet") == DNA_ALPHABET)


def gc_content(x: Tensor) -> float:
    """Share of G and C among all bases of ``x`` ``(N, L)`` (indices ``C=1``, ``G=2``)."""
    gc = (x == DNA_ALPHABET.index("C")) | (x == DNA_ALPHABET.index("G"))
    return float(gc.double().mean())


def _training_comparison(train: Tensor, n: int) -> Tensor:
    """``min(n, len(train))`` training windows chosen by a fixed-seed permutation."""
    if train.shape[0] <= n:
        return train
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(_COMPARISON_SEED))
    return train[order[:n]]


def dna_quality(run: "LoadedRun", samples: Tensor, reference: Tensor, *, cache_dir: Path,
                progress: bool = False) -> dict[str, dict[str, float]]:
    """DNA metrics (module docstring) of ``samples`` and ``reference``, both ``(N, L)`` base indices.

    ``run`` needs ``dataset`` only; ``cache_dir`` and ``progress`` are accepted for the common signature of
    the quality families (nothing is trained or cached). Returns ``{metric: {"samples": v, "reference": v}}``.

    Raises:
        ValueError: a dataset that is not DNA, samples / reference of the wrong shape, dtype or range, or
            windows shorter than 6 bases.
    """
    del cache_dir, progress
    dataset = run.dataset
    if not is_dna(dataset):
        raise ValueError(f"DNA metrics need a DNA dataset (loaders 'fasta' or 'ecoli'); {dataset.name!r} is not")
    x = check_token_batch(samples, dataset, "samples")
    ref = check_token_batch(reference, dataset, "reference")
    warn_if_sizes_differ(x, ref)
    if x.shape[1] < max(KMER_SIZES):
        raise ValueError(f"DNA metrics need windows of at least {max(KMER_SIZES)} bases, got {x.shape[1]}")
    comparison = _training_comparison(dataset.train.reshape(dataset.train.shape[0], -1), ref.shape[0])
    out: dict[str, dict[str, float]] = {}
    for k in KMER_SIZES:
        p_ref = kmer_spectrum(ref, k, 4)
        out[f"kmer_js_k{k}"] = {"samples": js_divergence_bits(kmer_spectrum(x, k, 4), p_ref),
                                "reference": js_divergence_bits(p_ref, kmer_spectrum(comparison, k, 4))}
    out["gc_content"] = {"samples": gc_content(x), "reference": gc_content(ref)}
    return out
