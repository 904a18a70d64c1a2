"""Oracle tests of the masking, uniform and matrix processes (DESIGN.md sections 6a and 6b).

With the exact denoiser of a random table (K = 3..4, D = 2):
(a) E[-ELBO] = H(table) + KL(q_1 || prior^D), the second term computed exactly by enumeration (it is
    below 1e-5 nats here with alpha(1) = 1e-4); checked within 4 standard errors with 40k samples.
    Calibration: over 16-20 seeds per process the z-scores averaged -0.1..+0.3 with sd 0.8-1.0 (no bias);
    the fixed seed here gives z from -2.4 to +0.6; the wrong-table control gives z = +8.1;
(b) the bridge sampler at 64 steps reaches the table in total variation (TV) up to the Monte-Carlo floor
    (mean TV of 20k exact samples) plus EXCESS_TOL; a corrupted bridge does not; for masking, the exact
    simulator matches the table too.
Measured excess TV at 64 steps over six seeds: masking <= 0.004, uniform <= 0.003, gaussian <= 0.003,
banded <= 0.005, birth-death <= 0.005 (floor ~0.010). Corrupted bridges measured 0.056 (P_t in place of
P_{s->t}) and 0.038 (masking, unmask probability squared) above the floor.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from discrete_diffusion.losses import estimate_elbo
from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.processes import ForwardProcess, MaskingProcess, MatrixProcess, UniformProcess
from discrete_diffusion.processes import masking as masking_module
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

D, N_ELBO, N_SAMPLES = 2, 40_000, 20_000
EXCESS_TOL = 0.010
CASES: dict[str, Callable[[], ForwardProcess]] = {
    "masking": lambda: MaskingProcess(4),
    "uniform": lambda: UniformProcess(4),
    "uniform-K3": lambda: UniformProcess(3),
    "gaussian": lambda: MatrixProcess(4, "gaussian", normalize=True),
    "banded": lambda: MatrixProcess(4, "banded", normalize=True),
    "birth-death": lambda: MatrixProcess(4, "birth-death", rates_options={"birth": 2.0, "death": 1.0},
                                         normalize=True),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _table(num_states: int, seed: int) -> torch.Tensor:
    probs = torch.rand(num_states**D, generator=_gen(seed), dtype=torch.float64) + 0.05
    return probs / probs.sum()


def _prior_gap(proc: ForwardProcess, probs: torch.Tensor, alpha1: float) -> float:
    """KL(q_1 || prior^D) by enumeration: q_1 = table pushed through q_1(y | x0) at every site."""
    lam = torch.tensor([math.log(alpha1 / (1 - alpha1))])
    transition = proc.log_marginal_matrix(lam)[0].exp()                       # (K, M)
    prior = proc.prior_log_probs(lam)[0].exp()                                 # (M,)
    xs, ys = all_configurations(proc.num_states, D), all_configurations(proc.num_values, D)
    q1 = probs @ transition[xs[:, None, :], ys[None, :, :]].prod(-1)
    p1 = prior[ys].prod(-1)
    return float(torch.where(q1 > 0, q1 * (q1.log() - p1.log()), torch.zeros_like(q1)).sum())


def _elbo(proc: ForwardProcess, probs: torch.Tensor, seed: int, denoiser=None) -> tuple[float, float, float]:
    """(mean of -ELBO, H + prior gap, standard error) over N_ELBO data draws."""
    schedule = build_schedule("log-linear")
    oracle = OracleDenoiser(proc, probs, D)
    x0 = oracle.sample(N_ELBO, _gen(seed))
    total = estimate_elbo(proc, denoiser or oracle, x0, schedule, generator=_gen(seed + 1)).total
    expected = oracle.entropy() + _prior_gap(proc, probs, schedule.alpha_min)
    return float(total.mean()), expected, float(total.std()) / math.sqrt(N_ELBO)


@pytest.mark.parametrize("case", sorted(CASES))
def test_oracle_elbo_equals_entropy(case):
    proc = CASES[case]()
    probs = _table(proc.num_states, seed=len(case))
    mean, expected, se = _elbo(proc, probs, seed=7)
    assert abs(mean - expected) <= 4 * se, (mean, expected, se)
    assert se < 0.05 * expected


def test_oracle_elbo_negative_control():
    """The oracle of another table raises the bound by many standard errors, so the test above can fail."""
    proc = MatrixProcess(4, "gaussian", normalize=True)
    wrong = OracleDenoiser(proc, _table(4, seed=99), D)
    mean, expected, se = _elbo(proc, _table(4, seed=8), seed=7, denoiser=wrong)
    assert mean - expected > 4 * se, (mean, expected, se)


def test_masking_prior_gap_is_small_and_prior_kl_exact():
    proc = MaskingProcess(4)
    alpha1 = build_schedule("log-linear").alpha_min
    assert 0 < _prior_gap(proc, _table(4, seed=3), alpha1) <= D * alpha1 * math.log(4)
    x0 = torch.zeros(3, D, dtype=torch.long)
    lam = torch.full((3,), math.log(alpha1 / (1 - alpha1)))
    torch.testing.assert_close(proc.prior_kl(x0, lam).double(),
                               torch.full((3,), D * alpha1 * math.log(4), dtype=torch.float64))


# ----- samplers (6b) ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def floor() -> float:
    probs = _table(4, seed=1)
    oracle = OracleDenoiser(MaskingProcess(4), probs, D)
    return sum(total_variation(empirical_distribution(oracle.sample(N_SAMPLES, _gen(100 + i)), 4), probs)
               for i in range(8)) / 8


def _sample_tv(proc: ForwardProcess, sampler_name: str = "bridge", num_steps: int = 64, seed: int = 1,
               shared: bool = True, **options) -> float:
    probs = _table(proc.num_states, seed=1)
    oracle = OracleDenoiser(proc, probs, D)
    sampler = build_sampler(sampler_name, num_steps=num_steps, **options)
    x = sampler.sample(proc, SharedLevelOracle(oracle, D) if shared else oracle, build_schedule("log-linear"),
                       (N_SAMPLES, D), generator=_gen(seed))
    assert x.shape == (N_SAMPLES, D) and int(x.min()) >= 0 and int(x.max()) < proc.num_states
    return total_variation(empirical_distribution(x, proc.num_states), probs)


def test_floor_is_sane(floor):
    assert 0.005 < floor < 0.015  # sqrt(J / (2 pi N)) ~ 0.011 for J = 16 cells


@pytest.mark.parametrize("case", sorted(c for c in CASES if c != "uniform-K3"))
def test_bridge_sampler_converges_to_table(case, floor):
    proc = CASES[case]()
    coarse, fine = _sample_tv(proc, num_steps=4), _sample_tv(proc, num_steps=64)
    assert fine < coarse - 0.01, (coarse, fine)
    assert fine < floor + EXCESS_TOL, (fine, floor)


def test_negative_control_bridge_with_p_t_in_place_of_p_s_to_t(floor, monkeypatch):
    """Forgetting to subtract sigma_s (P_t instead of P_{s->t} in the bridge) must fail the TV test."""

    def wrong(self, xt, x0, lam_t, lam_s):
        forward = self._columns(self.transition_matrix(torch.nn.functional.softplus(-lam_t.double())), xt)
        weights = forward * self._rows(self.transition_matrix(torch.nn.functional.softplus(-lam_s.double())), x0)
        return weights / weights.sum(-1, keepdim=True)

    monkeypatch.setattr(MatrixProcess, "bridge_probs", wrong)
    tv = _sample_tv(MatrixProcess(4, "gaussian", normalize=True))
    assert tv > floor + 3 * EXCESS_TOL, tv  # measured 0.066


def test_negative_control_masking_corrupted_unmask_probability(floor, monkeypatch):
    original = masking_module.unmask_probability
    monkeypatch.setattr(masking_module, "unmask_probability", lambda a, b: original(a, b) ** 2)
    tv = _sample_tv(MaskingProcess(4))
    assert tv > floor + 2 * EXCESS_TOL, tv  # measured 0.048


def test_exact_simulation_masking_matches_table(floor):
    tv = _sample_tv(MaskingProcess(4), "exact", shared=False, lam_stop=12.0)
    assert tv < floor + 0.006, tv  # measured excess -0.001..0.002 over three seeds
