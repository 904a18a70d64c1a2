"""Split Gibbs with coupled operators (issue 19 item 3): the exact group likelihood step (forward filtering /
backward sampling over partial sums) for block sums and parity, MH that leaves states with L(z) = 0, and the refusal
of one-site proposals under hard coupled constraints.

On main the only likelihood step for these operators was Metropolis-Hastings with one-site proposals: a feasible z
under a block sum or a hard parity never moved (any one-site change breaks the constraint), so z | x0 and the chain's
x0 were far from their laws (TV 0.2-0.6 at a fixed level), and a z with L(z) = 0 that needed two site changes was
absorbing (-inf -> -inf rejected as NaN). Oracle: the correlated table over {0..3}^3 of tests/test_split_gibbs.py.
"""

from __future__ import annotations

import pytest
import torch
from test_split_gibbs import (
    PROCESSES,
    SCHEDULE,
    D,
    K,
    _floor,
    _gen,
    _kernel_matrix,
    _lam,
    _likelihood_of_z,
    _smoothed_marginal,
    _tv,
    _z_target,
    table,  # noqa: F401  (the module's fixture)
)

from discrete_diffusion.oracle import (
    OracleDenoiser,
    all_configurations,
    configuration_index,
    total_variation,
)
from discrete_diffusion.posterior.group_likelihood import sample_given_group_sums
from discrete_diffusion.posterior.operators import (
    CallableOperator,
    DownsampleOperator,
    InpaintOperator,
    ParityOperator,
)
from discrete_diffusion.posterior.oracle_prior import OraclePriorStep
from discrete_diffusion.posterior.split_gibbs import LikelihoodStep, split_gibbs_sample
from discrete_diffusion.processes import MaskingProcess, UniformProcess

COUPLED = {
    "downsample": (DownsampleOperator(K, 3), torch.tensor([[4]])),              # z^0 + z^1 + z^2 = 4
    "parity": (ParityOperator(K, [[0, 1, 2]]), torch.tensor([[1]])),            # sum mod 4 = 1, hard
    "parity-groups": (ParityOperator(K, [[0, 2], [1]], flip=0.1), torch.tensor([[3, 2]])),
}


@pytest.mark.parametrize("process_name", ["uniform", "blackout"])
@pytest.mark.parametrize("operator_name", sorted(COUPLED))
def test_group_likelihood_step_is_the_normalised_kernel_times_likelihood(process_name, operator_name):
    """z | x0 ∝ K_t(z | x0) L(z) at the Monte-Carlo floor, with the default (auto) step. On main: MH one-site
    proposals, TV 0.26-0.60."""
    process = PROCESSES[process_name]()
    operator, y = COUPLED[operator_name]
    x0 = torch.tensor([3, 1, 2])
    num, t = 20_000, 0.5
    step = LikelihoodStep(process, operator, y, (D,))
    assert step.mode == "exact"
    z = step(x0.expand(num, D), _lam(t), generator=_gen(3))
    target = _z_target(process, operator, y, x0, t)
    tv, floor = _tv(z, target, process.num_values), _floor(target, num, process.num_values)
    assert tv < floor + 0.01, (tv, floor)
    assert step.likelihood_rows == 0


def test_group_sampler_matches_enumeration_on_a_wide_block():
    """sample_given_group_sums against enumeration: a 2 x 2 block of arbitrary per-site laws, K = 3, two rows with
    different sums (one at the edge, 8 = 4 (K - 1))."""
    k = 3
    log_q = torch.log(torch.rand(2, 2, 2, k, generator=_gen(8), dtype=torch.float64))
    op = DownsampleOperator(k, 2)
    y = torch.tensor([[[3]], [[8]]])
    factors = op.sum_factors(y, (2, 2))
    num = 20_000
    zs = all_configurations(k, 4)
    for row in range(2):
        z, stuck = sample_given_group_sums(log_q[row:row + 1].expand(num, 2, 2, k), op.sum_factors(y[row:row + 1],
                                                                                                   (2, 2)), _gen(row))
        assert not bool(stuck.any())
        weights = log_q[row].reshape(4, k)[torch.arange(4), zs].sum(1).exp() * (zs.sum(1) == int(y[row])).double()
        target = weights / weights.sum()
        empirical = torch.bincount(configuration_index(z.reshape(num, 4), k), minlength=k ** 4).double() / num
        assert total_variation(empirical, target) < _floor(target, num, k, 4) + 0.01
    assert factors.hard and factors.log_factor.shape == (2, 1, 9)


@pytest.mark.parametrize("process_name", ["uniform", "blackout"])
@pytest.mark.parametrize("operator_name", ["downsample", "parity"])
def test_fixed_level_chain_with_hard_coupled_operators(table, process_name, operator_name):
    """At a fixed level t = 0.6 with the exact prior step and the default options, the chain's x0 follows
    p(x0) sum_z K_t(z | x0) L(z) and its z follows p_t(z) L(z), at the Monte-Carlo floor. On main: TV 0.207 (floor
    0.042) with the default one-site proposals, and feasible chains never moved."""
    process = PROCESSES[process_name]()
    operator, y = COUPLED[operator_name]
    num, t = 10_000, 0.6
    oracle = OracleDenoiser(process, table, D, dtype=torch.float64)
    result = split_gibbs_sample(process, None, SCHEDULE, operator, y, (num, D), prior_step=OraclePriorStep(oracle),
                                iterations=20, t_max=t, t_min=t, generator=_gen(1))
    assert result.likelihood_step == "exact" and result.infeasible_chains == 0
    target = _smoothed_marginal(process, operator, y, table, t)
    tv, floor = _tv(result.x0, target), _floor(target, num, K)
    assert tv < floor + 0.015, (tv, floor)
    kernel, zs = _kernel_matrix(process, t)
    z_law = (table @ kernel) * _likelihood_of_z(process, operator, y, zs)
    z_law = z_law / z_law.sum()
    tv_z, floor_z = _tv(result.z, z_law, process.num_values), _floor(z_law, num, process.num_values)
    assert tv_z < floor_z + 0.015, (tv_z, floor_z)


@pytest.mark.parametrize("process_name", ["uniform", "masking"])
def test_mh_chains_leave_states_with_zero_likelihood(table, process_name):
    """Inpainting two of three sites with forced MH one-site proposals: a z that contradicts both observed values
    needs two changes to reach L > 0. On main those chains never left (-inf -> -inf rejected): 1295 (uniform) and
    199 (masking) of the 2000 chains ended with L(z) = 0; now every chain reaches the support."""
    process = PROCESSES[process_name]()
    operator = InpaintOperator(K, observed=torch.tensor([True, True, False]))
    y = torch.tensor([[2, 0, -1]])
    num = 2000
    result = split_gibbs_sample(process, None, SCHEDULE, operator, y, (num, D),
                                prior_step=OraclePriorStep(OracleDenoiser(process, table, D, dtype=torch.float64)),
                                iterations=10, t_max=0.6, t_min=0.05, likelihood_step="mh", mh_steps=5,
                                generator=_gen(2))
    step = LikelihoodStep(process, operator, y, (D,), mode="mh")
    assert int(torch.isneginf(step.log_likelihood(result.z)).sum()) == 0
    assert result.infeasible_chains == 0


def test_one_site_proposals_under_hard_coupled_operators_are_refused_or_warned(table):
    """Forced MH with one-site proposals: refused for downsample and hard parity (they never move), warned for a
    user operator whose feasible z never moves (a hard sum mod 4 written as a plain operator); independent proposals
    run."""
    process = UniformProcess(K)
    prior = OraclePriorStep(OracleDenoiser(process, table, D, dtype=torch.float64))
    for name in ("downsample", "parity"):
        operator, y = COUPLED[name]
        with pytest.raises(ValueError, match="proposal='independent'"):
            split_gibbs_sample(process, None, SCHEDULE, operator, y, (8, D), prior_step=prior, likelihood_step="mh")
        out = split_gibbs_sample(process, None, SCHEDULE, operator, y, (8, D), prior_step=prior, likelihood_step="mh",
                                 proposal="independent", iterations=3)
        assert out.likelihood_step == "mh"
    hard = CallableOperator(K, lambda x0, y: torch.where(x0.sum(1) % 4 == y, 0.0, -torch.inf).double(), ())
    with pytest.warns(RuntimeWarning, match="one-site proposals"):
        out = split_gibbs_sample(process, None, SCHEDULE, hard, torch.tensor([1]), (200, D), prior_step=prior,
                                 iterations=5, mh_steps=4, generator=_gen(5))
    assert out.infeasible_chains <= 5          # its repair is a random walk (no structure to aim with)


def test_masking_stays_refused_for_coupled_operators(table):
    process = MaskingProcess(K)
    operator, y = COUPLED["downsample"]
    with pytest.raises(ValueError, match="couples sites"):
        split_gibbs_sample(process, None, SCHEDULE, operator, y, (4, D),
                           prior_step=OraclePriorStep(OracleDenoiser(process, table, D)))


def test_group_step_from_an_x0_outside_the_support_comes_as_close_as_it_can():
    """Blackout z <= x0: an x0 whose block sums to 2 < y = 4 cannot reach y; z is then x0 itself (sum 2, the
    reachable sum nearest to 4), so that the next prior step (x0 >= z) can reach the support."""
    process = PROCESSES["blackout"]()
    operator, y = COUPLED["downsample"]
    step = LikelihoodStep(process, operator, y, (D,))
    x0 = torch.tensor([[1, 0, 1]]).expand(500, D)
    z = step(x0, _lam(0.5), generator=_gen(4))
    assert torch.equal(z, x0)
