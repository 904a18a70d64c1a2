"""Sample quality of count / categorical arrays: per-site moment errors and the per-site 1-D Wasserstein distance.

Reference: the 1-D Wasserstein-1 distance between two distributions on the line equals the L1 distance of
their CDFs, W1(P, Q) = int |F_P(v) - F_Q(v)| dv (Vallender, "Calculation of the Wasserstein distance between
probability distributions on the line", Theory Probab. Appl. 1974).

Every metric compares a set ``x`` ``(n, *sites)`` with the *target* set ``t`` ``(m, *sites)``, site by site,
treating the states as numbers (counts, intensities):

    mean_abs_error     = 1/D sum_d |mean(x_d) - mean(t_d)|
    var_abs_error      = 1/D sum_d |var(x_d) - var(t_d)|        (population variances, divisor n and m)
    wasserstein1       = 1/D sum_d W1(empirical x_d, empirical t_d)

The target is the training split (at most :data:`MAX_TARGET_ROWS` rows of it, a fixed seeded subset);
``evaluate_quality`` reports each metric for the samples and for held-out real data of the same size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..runs.load import LoadedRun

__all__ = ["MAX_TARGET_ROWS", "count_metrics", "counts_family", "fixed_subset", "wasserstein1_per_site"]

#: At most this many training rows form the target set (keeps the pairwise and sort costs bounded).
MAX_TARGET_ROWS = 5000


def fixed_subset(data: Tensor, n: int, seed: int = 0) -> Tensor:
    """``min(n, len(data))`` rows of ``data`` chosen by a seeded permutation (the same rows every call)."""
    if data.shape[0] <= n:
        return data
    index = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return data[index.sort().values]


def wasserstein1_per_site(x: Tensor, t: Tensor) -> Tensor:
    """W1 between the empirical distributions of ``x[:, d]`` and ``t[:, d]`` for every site d: ``(D,)``.

    ``x`` ``(n, D)``, ``t`` ``(m, D)`` (any n, m >= 1). Computed exactly as the integral of |F_x - F_t| over
    the merged sorted values: W1 = sum_k (v_{k+1} - v_k) |F_x(v_k) - F_t(v_k)|.
    """
    xs, ts = x.double().T.contiguous().sort(dim=1).values, t.double().T.contiguous().sort(dim=1).values
    merged = torch.cat([xs, ts], dim=1).sort(dim=1).values  # (D, n + m)
    points = merged[:, :-1].contiguous()
    fx = torch.searchsorted(xs, points, right=True).double() / xs.shape[1]
    ft = torch.searchsorted(ts, points, right=True).double() / ts.shape[1]
    return ((merged[:, 1:] - points) * (fx - ft).abs()).sum(1)


def count_metrics(x: Tensor, target: Tensor) -> dict[str, float]:
    """``mean_abs_error``, ``var_abs_error`` and ``wasserstein1`` of ``x`` ``(n, *sites)`` against ``target``
    ``(m, *sites)`` (formulas in the module docstring)."""
    if x.shape[1:] != target.shape[1:]:
        raise ValueError(f"site shapes differ: {tuple(x.shape[1:])} and {tuple(target.shape[1:])}")
    if x.shape[0] < 1 or target.shape[0] < 1:
        raise ValueError("count metrics need at least one row in each set")
    a, b = x.reshape(x.shape[0], -1).double(), target.reshape(target.shape[0], -1).double()
    return {
        "mean_abs_error": float((a.mean(0) - b.mean(0)).abs().mean()),
        "var_abs_error": float((a.var(0, unbiased=False) - b.var(0, unbiased=False)).abs().mean()),
        "wasserstein1": float(wasserstein1_per_site(a, b).mean()),
    }


def counts_family(run: "LoadedRun", samples: Tensor, reference: Tensor, *, cache_dir: Path,
                  progress: bool = False) -> dict[str, dict[str, float]]:
    """The counts family: :func:`count_metrics` of ``samples`` and of ``reference`` (held-out real data),
    each against the target set (the training split, at most :data:`MAX_TARGET_ROWS` rows)."""
    del cache_dir, progress  # nothing to cache or to wait for
    target = fixed_subset(run.dataset.train, MAX_TARGET_ROWS)
    of_samples, of_reference = count_metrics(samples, target), count_metrics(reference, target)
    return {name: {"samples": of_samples[name], "reference": of_reference[name]} for name in of_samples}
