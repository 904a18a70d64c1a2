"""Unit tests of the matrix process and the ready-made generators: validation errors, stationary
distributions, the two expm paths against scipy and each other, normalisation, loading from .npy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.linalg import expm

from discrete_diffusion.processes import GENERATORS, MatrixProcess, build_process, spectral_gap
from discrete_diffusion.processes.generators import (
    birth_death_generator,
    ehrenfest_generator,
    gaussian_generator,
    pure_death_generator,
)

SIGMAS = torch.tensor([0.0, 1e-12, 1e-5, 0.01, 0.3, 1.0, 4.0, 9.2, 40.0], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_are_valid_rate_matrices(name):
    q = GENERATORS[name](5)
    size = 6 if name == "absorbing" else 5
    assert q.shape == (size, size) and q.dtype == torch.float64
    off = ~torch.eye(size, dtype=torch.bool)
    assert torch.all(q[off] >= 0) and bool((q[off] > 0).any())
    torch.testing.assert_close(q.sum(1), torch.zeros(size, dtype=torch.float64), rtol=0, atol=1e-14)


def test_generator_details():
    g = gaussian_generator(5, variance=0.3)
    torch.testing.assert_close(g, g.T)                                   # symmetric: uniform stationary
    assert float((-g.diagonal()).max()) < 1.0                            # D3PM normalisation
    assert g[0, 1] > g[0, 2] > g[0, 3] > g[0, 4] > 0
    assert spectral_gap(pure_death_generator(6)) == pytest.approx(1.0)
    assert spectral_gap(ehrenfest_generator(6)) == pytest.approx(1.0)
    assert spectral_gap(GENERATORS["uniform"](4)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        GENERATORS["banded"](4, bandwidth=0)


@pytest.mark.parametrize("rates,expected", [
    (ehrenfest_generator(6), stats.binom.pmf(np.arange(6), 5, 0.5)),
    (birth_death_generator(5, 2.0, 1.0), 2.0 ** np.arange(5) / (2.0 ** np.arange(5)).sum()),
    (gaussian_generator(4), np.full(4, 0.25)),
])
def test_stationary_distribution_is_the_default_prior(rates, expected):
    proc = MatrixProcess(rates=rates)
    torch.testing.assert_close(proc.prior, torch.from_numpy(expected), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(proc.prior @ rates, torch.zeros(rates.shape[0], dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("rates", [gaussian_generator(5), birth_death_generator(5, 3.0, 1.0),
                                   ehrenfest_generator(5), GENERATORS["absorbing"](4), pure_death_generator(5)])
def test_transition_matrix_matches_scipy_and_both_paths_agree(rates):
    prior = torch.full((rates.shape[0],), 1 / rates.shape[0])  # needed by the reducible ones
    auto = MatrixProcess(rates=rates, prior=prior)
    uniformized = MatrixProcess(rates=rates, prior=prior, expm_method="uniformization")
    reference = torch.stack([torch.from_numpy(expm(float(s) * rates.numpy())) for s in SIGMAS])
    for proc in (auto, uniformized):
        p = proc.transition_matrix(SIGMAS)
        torch.testing.assert_close(p, reference, rtol=0, atol=1e-13)
        assert torch.equal(p[0], torch.eye(rates.shape[0], dtype=torch.float64))
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2], dtype=torch.float64), rtol=0, atol=1e-13)
    # both paths agree entrywise in relative terms (scipy is only accurate in absolute terms)
    a, b = auto.transition_matrix(SIGMAS), uniformized.transition_matrix(SIGMAS)
    assert torch.equal(a > 0, b > 0)
    assert float(((a - b).abs() / b.clamp_min(1e-300)).max()) < 1e-10


def test_expm_method_choice():
    assert MatrixProcess(rates=gaussian_generator(4)).expm_method == "eigen"
    assert MatrixProcess(rates=birth_death_generator(4, 2.0, 1.0)).expm_method == "eigen"   # reversible
    assert MatrixProcess(rates=pure_death_generator(4), prior=[1, 0, 0, 0]).expm_method == "uniformization"
    cyclic = torch.tensor([[-1.0, 1.0, 0.0], [0.0, -1.0, 1.0], [1.0, 0.0, -1.0]])       # irreducible, not reversible
    assert MatrixProcess(rates=cyclic).expm_method == "uniformization"
    with pytest.raises(ValueError, match="eigen"):
        MatrixProcess(rates=cyclic, expm_method="eigen")
    with pytest.raises(ValueError, match="expm_method"):
        MatrixProcess(rates=cyclic, expm_method="pade")


def test_small_entries_are_relatively_accurate_at_t_to_0():
    """Banded walk on 0..3: P_t[0, 3] = sigma^3/6 - 6 sigma^4/24 + O(sigma^5) (the 4-step paths pick up one
    diagonal entry, -1 - 2 - 2 - 1). An eigenbasis alone gives this entry with an absolute ~1e-16 error,
    i.e. no correct digit at sigma = 1e-6; the Poisson-sum path keeps it to a relative 1e-10."""
    proc = MatrixProcess(rates=GENERATORS["banded"](4))
    assert proc.expm_method == "eigen"
    for value in (1e-6, 1e-4):
        sigma = torch.tensor([value], dtype=torch.float64)
        p = proc.transition_matrix(sigma)[0]
        series = value**3 / 6 * (1 - 1.5 * value)
        assert abs(float(p[0, 3]) / series - 1) < 1e-10 + 10 * value**2


def test_normalize_sets_the_spectral_gap_to_one():
    raw = GENERATORS["banded"](6)
    proc = MatrixProcess(rates=raw, normalize=True)
    assert spectral_gap(proc.rate_matrix) == pytest.approx(1.0)
    torch.testing.assert_close(proc.rate_matrix * spectral_gap(raw), raw)
    assert proc.config()["rates"] == raw.tolist() and proc.config()["normalize"] is True


@pytest.mark.parametrize("bad,match", [
    ([[-1.0, 1.0, 0.0], [0.5, -1.0, 0.5]], "square"),
    ([[-1.0, 1.0], [float("nan"), 0.0]], r"\[1, 0\].*not finite"),
    ([[0.5, -0.5], [1.0, -1.0]], r"\[0, 1\] = -0.5 is negative"),
    ([[-1.0, 1.0], [1.0, -0.7]], "row 1 .* sums to 0.3"),
    ([[0.0, 0.0], [0.0, 0.0]], "zero"),
])
def test_invalid_rate_matrices_raise_naming_the_entry(bad, match):
    with pytest.raises(ValueError, match=match):
        MatrixProcess(rates=bad)


def test_bad_options_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="not irreducible .* pass prior="):
        MatrixProcess(4, "absorbing")
    with pytest.raises(ValueError, match="prior must sum to 1"):
        MatrixProcess(4, "absorbing", prior=[0.5, 0, 0, 0, 0.4])
    with pytest.raises(ValueError, match="5 non-negative"):
        MatrixProcess(4, "absorbing", prior=[1.0, 0.0])
    with pytest.raises(ValueError, match="num_states must lie in 2..4"):
        MatrixProcess(5, rates=gaussian_generator(4))
    with pytest.raises(ValueError, match="needs rates="):
        build_process("matrix", 4)
    with pytest.raises(ValueError, match="neither a generator name"):
        MatrixProcess(4, "no-such-generator")
    with pytest.raises(ValueError, match="bad options"):
        build_process("matrix", 4, rates="banded", bogus=1)


def test_rates_from_npy_path_and_extra_states(tmp_path):
    path = tmp_path / "q.npy"
    np.save(path, birth_death_generator(5, 1.0, 2.0).numpy())
    proc = MatrixProcess(rates=str(path))
    assert (proc.num_states, proc.num_values) == (5, 5)
    torch.testing.assert_close(proc.rate_matrix, birth_death_generator(5, 1.0, 2.0))
    # fewer data values than states: state 4 is reachable but never data
    partial = MatrixProcess(4, rates=path)
    assert (partial.num_states, partial.num_values, partial.feature_channels) == (4, 5, 5)
    assert partial.log_marginal_matrix(torch.zeros(2)).shape == (2, 4, 5)
    again = build_process("matrix", **{k: v for k, v in partial.config().items() if k != "name"})
    torch.testing.assert_close(again.rate_matrix, partial.rate_matrix, rtol=0, atol=0)


def test_prior_kl_is_infinite_for_a_delta_prior_that_misses_states():
    proc = MatrixProcess(3, "absorbing", prior=[0.0, 0.0, 0.0, 1.0])
    lam1 = torch.full((2,), math.log(1e-4 / (1 - 1e-4)))
    assert torch.all(torch.isinf(proc.prior_kl(torch.zeros(2, 3, dtype=torch.long), lam1)))
    assert torch.all(proc.prior_kl(torch.zeros(2, 3, dtype=torch.long), torch.full((2,), -math.inf)) == 0)
