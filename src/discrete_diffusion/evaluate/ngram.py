"""N-gram statistics of token sequences, shared by the text and DNA sample-quality metrics.

References: distinct-n, Li, Galley, Brockett, Gao, Dolan, "A Diversity-Promoting Objective Function for Neural
Conversation Models", NAACL 2016; memorisation as verbatim n-gram overlap with the training text, Carlini et
al., "Quantifying Memorization Across Neural Language Models", ICLR 2023 (here with n = 8 tokens); k-mer
spectra and their Jensen-Shannon divergence, e.g. Avdeyev et al., "Dirichlet Diffusion Score Model for
Biological Sequence Generation", ICML 2023.

Conventions: sequences are ``(N, L)`` long tensors with values in ``0..K-1``. An n-gram is a run of ``n``
consecutive tokens *inside one sequence* (``L - n + 1`` per sequence; none cross from one sequence into the
next), except for :func:`training_ngram_set`, which reads the training windows as one running text (the
loaders cut the text or genome into consecutive windows, so their concatenation is the real text).

N-grams are coded as one ``uint64`` each: exactly (base-``K`` digits) when ``K ** n <= 2 ** 64``, so distinct
n-grams have distinct codes; otherwise by a SplitMix64 hash chain, where two different n-grams share a code
with probability about ``2 ** -64`` per pair (for a set of ``S`` training 8-grams and ``M`` sample 8-grams the
expected number of false matches is ``M * S / 2 ** 64``, below ``1e-5`` for ``M, S <= 2 ** 25``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from ..data.base import DiscreteDataset

__all__ = [
    "MAX_TRAIN_NGRAM_POSITIONS",
    "check_token_batch",
    "warn_if_sizes_differ",
    "ngram_codes",
    "distinct_n",
    "unigram_entropy_bits",
    "training_ngram_set",
    "ngram_overlap",
    "kmer_spectrum",
    "js_divergence_bits",
]

#: At most this many training positions (2 ** 25) are hashed into the memorisation set: the set is a sorted
#: ``uint64`` array of at most 256 MiB (8 bytes per distinct n-gram), built in chunks of 2 ** 22 positions so
#: that the peak stays below about 3 times that. A longer training split is read up to this many positions
#: (with a warning: the share found is then a lower bound).
MAX_TRAIN_NGRAM_POSITIONS = 1 << 25
_CHUNK = 1 << 22
_U64 = np.uint64


def check_token_batch(x: object, dataset: DiscreteDataset, what: str) -> Tensor:
    """Validate ``x`` as a batch of sequences like ``dataset``'s and return it as a CPU ``(N, L)`` long tensor.

    Raises:
        ValueError: not a tensor, not an integer dtype, a shape other than ``(N, *dataset.site_shape)`` with
            ``N >= 1``, or a value outside ``0..num_states-1`` (e.g. a mask index left by a sampler).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{what} must be a torch tensor of token indices, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer token indices, got dtype {x.dtype}")
    site_shape = tuple(dataset.site_shape)
    if x.dim() != 1 + len(site_shape) or tuple(x.shape[1:]) != site_shape or x.shape[0] < 1:
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, site_shape))}) with N >= 1 like the "
                         f"data of {dataset.name!r}, got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.long).reshape(x.shape[0], -1)
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= dataset.num_states:
        raise ValueError(f"{what} has values in {lo}..{hi}; allowed are 0..{dataset.num_states - 1} "
                         f"(num_states={dataset.num_states}; a mask index is not a token)")
    return x


def warn_if_sizes_differ(samples: Tensor, reference: Tensor) -> None:
    """Warn when ``samples`` and ``reference`` hold different numbers of sequences: distinct-n and k-mer
    divergences depend on the sample size, so their reference values are comparable only at equal ``N``."""
    if samples.shape[0] != reference.shape[0]:
        warnings.warn(f"{samples.shape[0]} samples against {reference.shape[0]} reference sequences: size-dependent "
                      f"metrics (distinct-n, k-mer JS) compare fairly only at equal sizes", RuntimeWarning,
                      stacklevel=3)


def _exact(num_states: int, n: int) -> bool:
    return n * math.log2(max(num_states, 2)) <= 64


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _codes_1d(tokens: np.ndarray, n: int, num_states: int) -> np.ndarray:
    """Codes of the ``len - n + 1`` n-grams of one running array ``tokens`` (along the last axis)."""
    width = tokens.shape[-1] - n + 1
    if width <= 0:
        return np.zeros(tokens.shape[:-1] + (0,), dtype=_U64)
    t = tokens.astype(_U64, copy=False)
    code = np.zeros(tokens.shape[:-1] + (width,), dtype=_U64)
    exact = _exact(num_states, n)
    with np.errstate(over="ignore"):
        for j in range(n):
            if exact:
                code = code * _U64(num_states) + t[..., j:j + width]
            else:
                code = _splitmix64(code ^ t[..., j:j + width])
    return code


def ngram_codes(x: Tensor, n: int, num_states: int) -> np.ndarray:
    """The n-grams of each row of ``x`` ``(N, L)`` as codes: ``(N, max(L - n + 1, 0))`` uint64."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return _codes_1d(x.numpy(), n, num_states)


def distinct_n(x: Tensor, n: int, num_states: int) -> float:
    """Share of distinct n-grams among all n-grams of ``x`` ``(N, L)``, pooled over the rows.

    ``distinct_n = |{n-grams}| / (N (L - n + 1))`` in ``(0, 1]``; NaN when ``L < n`` (no n-gram).
    """
    codes = ngram_codes(x, n, num_states).ravel()
    if codes.size == 0:
        return float("nan")
    return float(np.unique(codes).size / codes.size)


def unigram_entropy_bits(x: Tensor, num_states: int) -> float:
    """Entropy of the pooled token histogram of ``x``: ``H = -sum_k p_k log2 p_k``, ``p_k = count_k / x.numel()``."""
    counts = torch.bincount(x.reshape(-1), minlength=num_states).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def training_ngram_set(train: Tensor, n: int, num_states: int,
                       max_positions: int = MAX_TRAIN_NGRAM_POSITIONS) -> np.ndarray:
    """Sorted unique codes of the n-grams of the training windows read as one running text ``(N * L,)``.

    Only the first ``max_positions`` n-gram positions are used (see :data:`MAX_TRAIN_NGRAM_POSITIONS`; a
    warning says when the split is longer). Returns a sorted ``uint64`` array.
    """
    flat = train.reshape(-1).numpy()
    total = max(flat.size - n + 1, 0)
    if total > max_positions:
        warnings.warn(f"memorisation: the training split has {total} {n}-gram positions; only the first "
                      f"{max_positions} are hashed (memory bound), so the share found is a lower bound",
                      RuntimeWarning, stacklevel=2)
        total = max_positions
    found = np.zeros(0, dtype=_U64)
    for start in range(0, total, _CHUNK):
        stop = min(start + _CHUNK, total)
        chunk = _codes_1d(flat[start:stop + n - 1], n, num_states)
        found = np.union1d(found, chunk)
    return found


def ngram_overlap(x: Tensor, train_set: np.ndarray, n: int, num_states: int) -> float:
    """Share of the n-grams of ``x`` ``(N, L)`` (with multiplicity) whose code is in ``train_set`` (sorted).

    NaN when ``L < n``.
    """
    codes = ngram_codes(x, n, num_states).ravel()
    if codes.size == 0:
        return float("nan")
    if train_set.size == 0:
        return 0.0
    pos = np.minimum(np.searchsorted(train_set, codes), train_set.size - 1)
    return float((train_set[pos] == codes).mean())


def kmer_spectrum(x: Tensor, k: int, num_states: int) -> Tensor:
    """Normalised k-mer counts of ``x`` ``(N, L)``: ``(num_states ** k,)`` float64 summing to 1.

    The k-mer ``(b_1, ..., b_k)`` has index ``sum_j b_j num_states ** (k - j)``; k-mers are counted
    overlapping, inside each row, pooled over rows. Raises ``ValueError`` when ``L < k`` or the table would
    exceed 2 ** 24 entries.
    """
    if num_states ** k > 1 << 24:
        raise ValueError(f"a {k}-mer table over {num_states} states has {num_states ** k} entries; at most 2**24")
    if x.shape[1] < k:
        raise ValueError(f"sequences of length {x.shape[1]} have no {k}-mers")
    codes = torch.from_numpy(ngram_codes(x, k, num_states).astype(np.int64).ravel())
    counts = torch.bincount(codes, minlength=num_states ** k).double()
    return counts / counts.sum()


def js_divergence_bits(p: Tensor, q: Tensor) -> float:
    """Jensen-Shannon divergence of two distributions in bits, with ``0 log 0 = 0``:

    ``JS(P, Q) = H(M) - (H(P) + H(Q)) / 2``, ``M = (P + Q) / 2``; 0 iff ``P = Q`` and 1 iff their supports
    are disjoint.
    """
    if p.shape != q.shape:
        raise ValueError(f"distributions of different shapes {tuple(p.shape)} and {tuple(q.shape)}")
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)

    def kl(a: Tensor) -> Tensor:
        keep = a > 0
        return (a[keep] * torch.log2(a[keep] / m[keep])).sum()

    return float(max(0.5 * (kl(p) + kl(q)), 0.0))
