"""Heavy-tailed synthetic counts: mixtures of negative binomials.

Reference: Chen & Zhou, "Learning to Jump", ICML 2023, synthetic experiment ``nbinom``: the mixture
0.75 NB(1, 0.9) + 0.25 NB(10, 0.1) (scipy's NB(n, p): failures before the n-th success, mean n (1 - p) / p,
so 0.111 and 90; a mass at 0 and a long right tail past 250).

``negative_binomial_mixture`` draws any such mixture (tests, benchmarks, your own experiments); the registered
dataset ``nbinom-mixture`` is the paper's, 100,000 scalar counts (site shape (1,)), split 80/10/10.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .arrays import dataset_from_arrays
from .base import DiscreteDataset

__all__ = ["PAPER_MIXTURE", "negative_binomial_mixture", "load_nbinom_mixture"]

#: (weight, n, p) of each component of the paper's mixture.
PAPER_MIXTURE: tuple[tuple[float, float, float], ...] = ((0.75, 1.0, 0.9), (0.25, 10.0, 0.1))


def negative_binomial_mixture(num: int, components: Sequence[tuple[float, float, float]] = PAPER_MIXTURE,
                              sites: int = 1, seed: int = 0) -> np.ndarray:
    """``num`` x ``sites`` independent draws of sum_i w_i NB(n_i, p_i) (scipy's parameterisation: mean
    n (1 - p) / p), int64, deterministic for a seed. Raises ValueError for weights that are not positive or an
    n <= 0 or p outside (0, 1]."""
    if num < 1 or sites < 1:
        raise ValueError(f"negative_binomial_mixture: num and sites must be >= 1, got {num} and {sites}")
    weights = np.array([c[0] for c in components], dtype=np.float64)
    if len(components) == 0 or not np.all(weights > 0):
        raise ValueError(f"negative_binomial_mixture: component weights must be > 0, got {list(weights)}")
    for _, n, p in components:
        if not (n > 0 and 0 < p <= 1):
            raise ValueError(f"negative_binomial_mixture: each component needs n > 0 and p in (0, 1], got n={n}, p={p}")
    rng = np.random.default_rng(seed)
    which = rng.choice(len(components), size=(num, sites), p=weights / weights.sum())
    out = np.zeros((num, sites), dtype=np.int64)
    for i, (_, n, p) in enumerate(components):
        mask = which == i
        out[mask] = rng.negative_binomial(n, p, size=int(mask.sum()))
    return out


def load_nbinom_mixture(split_seed: int = 0, num_states: int | None = None, counts: bool = False,
                        size: int = 100_000) -> DiscreteDataset:
    """The paper's mixture as a dataset (registry name ``nbinom-mixture``): ``size`` counts of shape (1,), drawn
    with seed 0 and split 80/10/10 by ``split_seed``. With ``counts`` (config ``data.counts``, the default for
    ``process.name=jump``) the dataset has no num_states; otherwise K = max + 1 as for any array."""
    data = negative_binomial_mixture(size, PAPER_MIXTURE, sites=1, seed=0)
    return dataset_from_arrays(data, num_states=num_states, name="nbinom-mixture", kind="sequence",
                               split_seed=split_seed, counts=counts,
                               metadata={"source": "0.75 NB(1, 0.9) + 0.25 NB(10, 0.1), seed 0 (Chen & Zhou 2023)"})
