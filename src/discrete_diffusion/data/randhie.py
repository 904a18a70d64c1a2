"""A real, heavy-tailed count data set that installs offline: the RAND Health Insurance Experiment's visits.

Source: Manning et al., RAND Health Insurance Experiment; distributed (public domain) inside statsmodels as
``statsmodels/datasets/randhie/randhie.csv`` (Cameron & Trivedi, "Regression Analysis of Count Data", 1998).
Column ``mdvis``: the number of outpatient visits to a medical doctor in a year, for 20,190 person-years; values
0..77, mean 2.86, 31 % zeros, a long right tail.

Only the CSV file is read, found with ``importlib.util.find_spec`` without importing statsmodels (so neither pandas
nor patsy is needed): ``pip install --no-deps statsmodels`` is enough (the optional extra ``counts`` installs it
with its dependencies). Registry name ``randhie``: shape (N, 1), split 80/10/10 by ``split_seed``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import numpy as np

from .arrays import dataset_from_arrays, read_bounded
from .base import DiscreteDataset

__all__ = ["RANDHIE_COLUMN", "randhie_csv", "load_randhie"]

#: The count column used.
RANDHIE_COLUMN = "mdvis"
#: The CSV is 1.1 MB; refuse anything far larger before reading it.
_MAX_BYTES = 16 << 20


def randhie_csv() -> Path:
    """The path of statsmodels' randhie.csv; ValueError saying how to install it when statsmodels is absent."""
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset 'randhie' reads the RAND HIE counts shipped inside statsmodels, which is not "
                         "installed: pip install --no-deps statsmodels (or pip install discrete-diffusion[counts])")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "randhie" / "randhie.csv"
    if not path.is_file():
        raise ValueError(f"dataset 'randhie': {path} is missing from the installed statsmodels")
    return path


def load_randhie(split_seed: int = 0, num_states: int | None = None, counts: bool = False) -> DiscreteDataset:
    """The ``mdvis`` counts (N, 1) as a dataset; with ``counts`` (config ``data.counts``, the default for
    ``process.name=jump``) it has no num_states, otherwise K = max + 1 = 78."""
    path = randhie_csv()
    text = read_bounded(path, _MAX_BYTES, "randhie CSV").decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or RANDHIE_COLUMN not in reader.fieldnames:
        raise ValueError(f"{path}: no column {RANDHIE_COLUMN!r} (found {reader.fieldnames})")
    try:
        values = np.array([float(row[RANDHIE_COLUMN]) for row in reader], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: column {RANDHIE_COLUMN!r} holds a non-number ({err})") from None
    return dataset_from_arrays(values[:, None], num_states=num_states, name="randhie", kind="sequence",
                               split_seed=split_seed, counts=counts, where=str(path),
                               metadata={"source": str(path), "column": RANDHIE_COLUMN})
