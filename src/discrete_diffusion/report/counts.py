"""The count panel of ``ddiff report`` for count runs (``process.name=jump`` or ``data.counts=true``): histograms
of the samples and of the training data on log-log axes, so that a heavy tail (values in the thousands beside a
mass at 0) is visible at every scale.

Counts are binned on a log grid (edges 0, 1, 2, 3, 4, 6, 8, 12, 16, 24, ...: each power of two and 1.5 times
it) and each bin's share is divided by its width, an estimate of p(x) per unit count; bin [lo, hi) is plotted at
x = lo + 1 ("count + 1", so that 0 has a place on a log axis). Empty bins are left out (a log axis has no 0).

Untrusted input: config.yaml is parsed by ``config.load_config`` (every key and value validated), the samples
file is read with its size bounded before reading (``MAX_COUNT_SAMPLE_BYTES``), and the data through the run's
own loader with its ``data.max_bytes`` budget, as ``ddiff evaluate`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import load_config
from ..data.arrays import read_bounded
from ..data.npy_reader import parse_npy
from .plots import Series

__all__ = ["MAX_COUNT_SAMPLE_BYTES", "is_count_run", "log_bin_edges", "count_histogram", "count_series"]

#: Largest samples file read whole for the histogram.
MAX_COUNT_SAMPLE_BYTES = 64 << 20


def is_count_run(run_dir: Path) -> bool:
    """Whether the run models counts without a maximum: its config.yaml names process jump or data.counts true
    (False when config.yaml does not parse)."""
    try:
        config = load_config(run_dir / "config.yaml")
    except (ValueError, OSError):
        return False
    return config.process.name == "jump" or bool(config.data.counts)


def log_bin_edges(top: int) -> np.ndarray:
    """Edges 0, 1, 2, 3, 4, 6, 8, 12, 16, ... up to the first edge above ``top`` (int64)."""
    edges, power = [0, 1, 2, 3], 2
    while edges[-1] <= top:
        power *= 2
        edges += [power, power + power // 2]
    edges = np.array(sorted(set(edges)), dtype=np.int64)
    return edges[: int(np.searchsorted(edges, top, side="right")) + 1]


def count_histogram(values: np.ndarray, edges: np.ndarray) -> list[tuple[float, float]]:
    """[(lo + 1, share of values in [lo, hi) / (hi - lo))] for the non-empty bins of ``edges``."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return []
    counts, _ = np.histogram(flat, bins=edges)
    widths = np.diff(edges)
    return [(float(lo + 1), float(c) / flat.size / float(w)) for lo, c, w in zip(edges[:-1], counts, widths) if c > 0]


def count_series(run_dir: Path, samples: Path, follow: bool = False) -> tuple[Series, str]:
    """The count panel's series, {"samples": ..., "data (train split)": ...}, and a one-line summary; ValueError
    (one line) when the samples or the data cannot be read, or the samples are not non-negative integers."""
    from ..builders import build_dataset

    if samples.is_symlink() and not follow:
        raise ValueError(f"{samples} is a symlink; the report reads only regular files in the run directory")
    x = parse_npy(read_bounded(samples, MAX_COUNT_SAMPLE_BYTES, "samples file"), MAX_COUNT_SAMPLE_BYTES, str(samples))
    if x.dtype.kind not in "iu" or x.size == 0 or int(x.min()) < 0:
        raise ValueError(f"{samples}: count samples must be non-negative integers, got dtype {x.dtype}")
    data = build_dataset(load_config(run_dir / "config.yaml")).train.numpy()
    top = int(max(int(x.max()), int(data.max()) if data.size else 0))
    edges = log_bin_edges(top)
    series = {"samples": count_histogram(x, edges), "data (train split)": count_histogram(data, edges)}
    summary = (f"{x.size} sample values (max {int(x.max())}, mean {float(x.mean()):.4g}) vs {data.size} training "
               f"values (max {int(data.max())}, mean {float(data.mean()):.4g})")
    return series, summary
