"""Oracle tests of split Gibbs posterior sampling (posterior/split_gibbs.py) and of samplers started mid-way.

The prior is a correlated random table pi over {0..3}^3 (64 configurations, pi ∝ u^3 with u uniform: far from the
product of its marginals), made exact by enumeration (oracle.py). Two measurement operators, written here against
the ``MeasurementOperator`` contract: a per-site noisy channel (factorises: exact per-site likelihood step) and a
noisy "sum mod 4" of all sites (couples them: Metropolis-Hastings). Everything is compared with tables computed
by enumeration:

- sampler start=(x_t, t): from x_t ~ q_t(. | x0 ~ pi) the exact simulators give pi, and from a fixed x_t the joint
  p(x0 | x_t); a grid sampler approaches it as its steps grow;
- the likelihood step's kernel is the normalised K_t(z | x0) L(z) (exact step; MH leaves it invariant and
  converges to it);
- at a fixed level with an exact prior step the chain's x0 has the law p(x0) sum_z K_t(z | x0) L(z) (MC floor);
- annealed to a small t_min, total variation (TV) to the exact posterior falls toward the floor as iterations
  (and MH steps, for the coupled operator) grow.

The Monte-Carlo floor is the mean TV of equally many exact draws from the same target. Tolerances over it were
set from measurements (see each constant).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    configuration_index,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.posterior.measurement import MeasurementOperator
from discrete_diffusion.posterior.oracle_prior import OraclePriorStep
from discrete_diffusion.posterior.split_gibbs import (
    LikelihoodStep,
    SplitGibbsResult,
    annealing_levels,
    split_gibbs_method,
    split_gibbs_sample,
)
from discrete_diffusion.processes import (
    BlackoutProcess,
    ForwardProcess,
    MaskingProcess,
    MatrixProcess,
    UniformProcess,
    sample_categorical,
)
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.schedules import build_schedule

K, D = 4, 3
SCHEDULE = build_schedule("log-linear")
PROCESSES = {
    "uniform": lambda: UniformProcess(K),
    "blackout": lambda: BlackoutProcess(K),          # counts 0..3
    "masking": lambda: MaskingProcess(K),
    "gaussian": lambda: MatrixProcess(K, "gaussian", normalize=True),
}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SiteChannel(MeasurementOperator):
    """y^d = x0^d with probability 1 - flip, else one of the K - 1 other values: factorises over sites."""

    name = "test-channel"

    def __init__(self, num_states: int, flip: float) -> None:
        super().__init__(num_states)
        self.flip = flip

    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(site_shape)

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        if y.dim() != len(site_shape) + 1 or tuple(y.shape[1:]) != tuple(site_shape):
            raise ValueError(f"test channel: y must be (B or 1, *{tuple(site_shape)}), got {tuple(y.shape)}")
        return y.long()

    def _log_matrix(self) -> Tensor:                     # [x0, y]
        k = self.num_states
        m = torch.full((k, k), self.flip / (k - 1), dtype=torch.float64)
        return m.fill_diagonal_(1.0 - self.flip).log()

    def site_log_likelihood(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        return self._log_matrix().T[y]                   # (B|1, *sites, K): log p(y^d | x0^d = k)

    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        return self._log_matrix()[x0, y.expand_as(x0)].reshape(x0.shape[0], -1).sum(1)

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits = self._log_matrix()[x0]
        return torch.distributions.Categorical(logits=logits).sample()


class NoisySumMod(MeasurementOperator):
    """y = (sum_d x0^d) mod m with probability 1 - flip, else one of the m - 1 other residues: couples the sites
    (no site table)."""

    name = "test-summod"

    def __init__(self, num_states: int, modulus: int, flip: float) -> None:
        super().__init__(num_states)
        self.modulus, self.flip = modulus, flip

    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        return ()

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        if y.dim() != 1:
            raise ValueError(f"test summod: y must be (B or 1,), got {tuple(y.shape)}")
        return y.long()

    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        hit = x0.reshape(x0.shape[0], -1).sum(1) % self.modulus == y
        return torch.where(hit, math.log(1.0 - self.flip), math.log(self.flip / (self.modulus - 1))).double()

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


CHANNEL, Y_CHANNEL = SiteChannel(K, 0.3), torch.tensor([[1, 2, 3]])
SUMMOD, Y_SUMMOD = NoisySumMod(K, 4, 0.05), torch.tensor([1])
OPERATORS = {"channel": (CHANNEL, Y_CHANNEL), "summod": (SUMMOD, Y_SUMMOD)}


@pytest.fixture(scope="module")
def table() -> Tensor:
    """pi ∝ u^3 over all_configurations(K, D), u ~ U(0, 1): peaked and correlated."""
    probs = torch.rand(K**D, generator=_gen(0), dtype=torch.float64) ** 3
    return probs / probs.sum()


def _floor(target: Tensor, num: int, num_states: int, num_sites: int = D, repeats: int = 4) -> float:
    """Mean TV of ``num`` exact draws from ``target`` (over all_configurations(num_states, num_sites))."""
    configs = all_configurations(num_states, num_sites)
    draws = [configs[torch.multinomial(target, num, True, generator=_gen(900 + i))] for i in range(repeats)]
    tvs = [total_variation(empirical_distribution(x, num_states), target) for x in draws]
    return sum(tvs) / repeats


def _lam(t: float) -> Tensor:
    return torch.logit(SCHEDULE.alpha(torch.tensor([t], dtype=torch.float64)))


def _kernel_matrix(process: ForwardProcess, t: float) -> tuple[Tensor, Tensor]:
    """(K_t(z | x0) over (x0 configs, z configs): (K^D, M^D) float64, the z configurations (M^D, D))."""
    q = process.log_marginal_matrix(_lam(t))[0].exp()                           # (K, M)
    zs = all_configurations(process.num_values, D)
    xs = all_configurations(K, D)
    return q[xs[:, None, :], zs[None, :, :]].prod(-1), zs


def _likelihood_of_z(process: ForwardProcess, operator: MeasurementOperator, y: Tensor, zs: Tensor) -> Tensor:
    """L(z) for every z configuration, MASK sites getting the documented constant mean_k exp(l_d(k))."""
    if isinstance(process, MaskingProcess):
        site = operator.site_log_likelihood(y, (D,))[0].exp()                   # (D, K)
        ext = torch.cat([site, site.mean(-1, keepdim=True)], dim=-1)             # (D, K + 1)
        return ext[torch.arange(D), zs].prod(-1)
    return operator.log_likelihood(zs, y.expand((zs.shape[0],) + y.shape[1:])).exp()


def _smoothed_marginal(process: ForwardProcess, operator, y, table: Tensor, t: float) -> Tensor:
    """The x0-marginal of split Gibbs at a fixed level: p(x0) sum_z K_t(z | x0) L(z), normalised."""
    kernel, zs = _kernel_matrix(process, t)
    weights = table * (kernel @ _likelihood_of_z(process, operator, y, zs))
    return weights / weights.sum()


def _posterior(operator, y, table: Tensor) -> Tensor:
    xs = all_configurations(K, D)
    weights = table * operator.log_likelihood(xs, y.expand((xs.shape[0],) + y.shape[1:])).exp()
    return weights / weights.sum()


def _tv(samples: Tensor, target: Tensor, num_states: int = K) -> float:
    return total_variation(empirical_distribution(samples, num_states), target)


def test_table_is_correlated(table):
    """The sites of the table are far from independent (else per-site shortcuts would look exact)."""
    xs = all_configurations(K, D)
    marginals = [torch.zeros(K, dtype=torch.float64).index_add_(0, xs[:, d], table) for d in range(D)]
    product = marginals[0][xs[:, 0]] * marginals[1][xs[:, 1]] * marginals[2][xs[:, 2]]
    assert total_variation(product, table) > 0.2


# ----- samplers started mid-way: start=(x_t, t) ---------------------------------------------------------------

def test_time_grid_from_a_start_level():
    sampler = build_sampler("bridge", num_steps=4)
    assert torch.equal(sampler.time_grid(SCHEDULE), sampler.time_grid(SCHEDULE, 1.0))
    grid = sampler.time_grid(SCHEDULE, 0.3)
    assert float(grid[0]) == pytest.approx(float(_lam(0.3)), abs=1e-12)
    assert bool((grid[1:] > grid[:-1]).all()) and math.isinf(float(grid[-1]))
    # the grid option: another schedule places the steps, but the start is the same noise level
    cosine = build_sampler("bridge", num_steps=4, grid="cosine").time_grid(SCHEDULE, 0.3)
    assert float(cosine[0]) == pytest.approx(float(_lam(0.3)), abs=1e-12)
    assert bool((cosine[1:] > cosine[:-1]).all()) and not torch.equal(cosine, grid)
    # a start above the grid schedule's alpha(0) (Blackout's grid ends at logit alpha ~ 15): no step goes backward
    late = build_sampler("bridge", num_steps=4, grid="blackout").time_grid(SCHEDULE, 1e-9)
    assert float(late[0]) > 20 and bool((late[1:] >= late[:-1]).all())


@pytest.mark.parametrize("start, match", [
    ((torch.zeros(5, 2, dtype=torch.long), 0.5), "shape"),
    ((torch.zeros(5, 3), 0.5), "integer"),
    ((torch.full((5, 3), K), 0.5), r"0\.\.3"),                 # MASK is no value of the uniform process
    ((torch.zeros(5, 3, dtype=torch.long), 0.0), r"\(0, 1\]"),
    ((torch.zeros(5, 3, dtype=torch.long), 1.5), r"\(0, 1\]"),
    (torch.zeros(5, 3, dtype=torch.long), "pair"),
])
def test_start_is_validated(start, match, table):
    process = UniformProcess(K)
    oracle = OracleDenoiser(process, table, D)
    for name in ("bridge", "exact-thinning"):
        with pytest.raises(ValueError, match=match):
            build_sampler(name).sample(process, oracle, SCHEDULE, (5, D), _gen(0), start=start)


def test_remdm_loop_cannot_start_midway(table):
    process = MaskingProcess(K)
    x = torch.full((5, D), K)
    with pytest.raises(ValueError, match="loop"):
        build_sampler("remdm", strategy="loop").sample(process, OracleDenoiser(process, table, D), SCHEDULE, (5, D),
                                                       start=(x, 0.5))


@pytest.mark.parametrize("process_name, name", [(p, n) for p in sorted(PROCESSES) for n in sorted(SAMPLERS)
                                                 if SAMPLERS[n].supports(PROCESSES[p]().name)])
def test_every_sampler_starts_midway(table, process_name, name):
    """Contract over the registry: a start (x_t, t) gives data values; masking keeps x_t's revealed sites (but
    ReMDM, which may remask them)."""
    process = PROCESSES[process_name]()
    num = 50
    xt = process.sample_marginal(OracleDenoiser(process, table, D).sample(num, _gen(1)), _lam(0.4).expand(num), _gen(2))
    out = build_sampler(name, num_steps=4).sample(process, OracleDenoiser(process, table, D), SCHEDULE, (num, D),
                                                  _gen(3), start=(xt, 0.4))
    assert out.shape == (num, D) and out.dtype == torch.long and 0 <= int(out.min()) and int(out.max()) < K
    if process_name == "masking" and name != "remdm":
        revealed = xt != process.mask_index
        assert torch.equal(out[revealed], xt[revealed])


def _midway(process: ForwardProcess, table: Tensor, name: str, t: float, num: int, steps: int = 1,
            seed: int = 1) -> tuple[float, float, float, float]:
    """(TV to pi from x_t ~ q_t(. | x0 ~ pi), its floor, TV to p(x0 | x_t) from one fixed x_t, its floor)."""
    oracle = OracleDenoiser(process, table, D, dtype=torch.float64)
    denoiser = SharedLevelOracle(oracle, D)
    x0 = oracle.sample(num, _gen(seed))
    xt = process.sample_marginal(x0, _lam(t).expand(num), _gen(seed + 1))
    sampler = build_sampler(name, num_steps=steps)
    out = sampler.sample(process, denoiser, SCHEDULE, (num, D), _gen(seed + 2), start=(xt, t))
    fixed = xt[:1].expand(num, D).clone()
    exact = OraclePriorStep(oracle).log_posterior(fixed[:1], _lam(t))[0].exp()
    out_fixed = sampler.sample(process, denoiser, SCHEDULE, (num, D), _gen(seed + 3), start=(fixed, t))
    return _tv(out, table), _floor(table, num, K), _tv(out_fixed, exact), _floor(exact, num, K)


# Exact simulation started mid-way: measured excess over the floor within +-0.004 (masking 20k, blackout 4k).
@pytest.mark.parametrize("process_name, name, num", [
    ("masking", "exact", 20_000),
    pytest.param("blackout", "exact", 4_000, marks=pytest.mark.slow),      # 11 s: ~200 candidate events a row
    pytest.param("uniform", "exact-thinning", 4_000, marks=pytest.mark.slow),
    pytest.param("gaussian", "exact-window", 4_000, marks=pytest.mark.slow),
])
def test_exact_simulation_from_midway_is_exact(table, process_name, name, num):
    tv, floor, tv_fixed, floor_fixed = _midway(PROCESSES[process_name](), table, name, 0.4, num)
    assert tv < floor + 0.012, (tv, floor)
    assert tv_fixed < floor_fixed + 0.012, (tv_fixed, floor_fixed)


@pytest.mark.parametrize("process_name", ["uniform", "gaussian", "blackout"])
def test_grid_sampler_from_midway_converges(table, process_name):
    """One bridge step from x_t draws the sites of x0 independently (biased for a correlated table); 64 steps
    reach the floor of the joint p(x0 | x_t). Measured (seeds 1, 2): one step 0.33-0.39, 64 steps within 0.006 of
    the floor (0.022-0.027)."""
    process = PROCESSES[process_name]()
    _, _, tv_one, floor = _midway(process, table, "bridge", 0.6, 8_000, steps=1)
    tv, floor_pi, tv_many, _ = _midway(process, table, "bridge", 0.6, 8_000, steps=64)
    assert tv_many < floor + 0.015, (tv_many, floor)
    assert tv < floor_pi + 0.015, (tv, floor_pi)
    assert tv_one > tv_many + 0.02, (tv_one, tv_many)


# ----- the likelihood step ---------------------------------------------------------------------------------------

def _z_target(process: ForwardProcess, operator, y, x0: Tensor, t: float) -> Tensor:
    """K_t(z | x0) L(z) normalised over the z configurations, for one x0 (D,)."""
    kernel, zs = _kernel_matrix(process, t)
    row = kernel[configuration_index(x0[None], K)[0]]
    weights = row * _likelihood_of_z(process, operator, y, zs)
    return weights / weights.sum()


@pytest.mark.parametrize("process_name", sorted(PROCESSES))
def test_exact_likelihood_step_is_the_normalised_kernel_times_likelihood(process_name):
    process = PROCESSES[process_name]()
    x0 = torch.tensor([3, 1, 2])
    num, t = 20_000, 0.5
    step = LikelihoodStep(process, CHANNEL, Y_CHANNEL, (D,))
    assert step.mode == "exact"
    z = step(x0.expand(num, D), _lam(t), generator=_gen(3))
    target = _z_target(process, CHANNEL, Y_CHANNEL, x0, t)
    tv = _tv(z, target, process.num_values)
    floor = _floor(target, num, process.num_values)
    assert tv < floor + 0.01, (tv, floor)
    assert step.likelihood_rows == 0
    # control: the kernel alone (L dropped) is a different law
    assert total_variation(_z_target(process, SiteChannel(K, 0.75), Y_CHANNEL, x0, t), target) > 0.1


@pytest.mark.parametrize("process_name, proposal", [("uniform", "site"), ("uniform", "independent"),
                                                     ("blackout", "site"), ("gaussian", "independent")])
def test_mh_likelihood_step_keeps_and_reaches_its_target(process_name, proposal):
    """The coupled operator: started at the target, MH stays there; started from K_t(. | x0), it gets there."""
    process = PROCESSES[process_name]()
    x0 = torch.tensor([3, 1, 2])
    num, t = 20_000, 0.5
    target = _z_target(process, SUMMOD, Y_SUMMOD, x0, t)
    floor = _floor(target, num, process.num_values)
    zs = all_configurations(process.num_values, D)
    start = zs[torch.multinomial(target, num, True, generator=_gen(5))]
    step = LikelihoodStep(process, SUMMOD, Y_SUMMOD, (D,), mode="auto", mh_steps=3, proposal=proposal)
    assert step.mode == "mh"
    kept = step(x0.expand(num, D), _lam(t), start, generator=_gen(6))
    assert _tv(kept, target, process.num_values) < floor + 0.01
    assert step.likelihood_rows == 4 * num and step.proposals == 3 * num and 0 < step.accepted < step.proposals
    first = LikelihoodStep(process, SUMMOD, Y_SUMMOD, (D,), mh_steps=1, proposal=proposal)(x0.expand(num, D), _lam(t),
                                                                                           generator=_gen(7))
    # one-site moves leave the residue class rarely (acceptance ~ flip), so they need more proposals to mix
    many = LikelihoodStep(process, SUMMOD, Y_SUMMOD, (D,), mh_steps=200 if proposal == "site" else 40,
                          proposal=proposal)(x0.expand(num, D), _lam(t), generator=_gen(7))
    assert _tv(many, target, process.num_values) < floor + 0.01
    assert _tv(first, target, process.num_values) > floor + 0.03


def test_masking_mask_sites_get_the_average_site_likelihood():
    """log L at an all-MASK z is sum_d log mean_k exp(l_d(k)) (the documented constant)."""
    step = LikelihoodStep(MaskingProcess(K), CHANNEL, Y_CHANNEL, (D,))
    site = CHANNEL.site_log_likelihood(Y_CHANNEL, (D,))[0].exp()
    expected = site.mean(-1).log().sum()
    assert float(step.log_likelihood(torch.full((1, D), K))[0]) == pytest.approx(float(expected), abs=1e-12)


# ----- the chain at a fixed level -------------------------------------------------------------------------------

# Measured excess over the floor after 40 iterations (N = 20k): within +-0.005. The coupled operator uses
# independent proposals: one-site moves leave the residue class rarely and needed ~150 iterations (or 20 MH steps)
# to reach the floor from the uniform start (0.071 / 0.038 excess after 40 iterations of 3 steps).
@pytest.mark.parametrize("process_name, operator_name", [
    ("uniform", "channel"), ("blackout", "channel"), ("masking", "channel"), ("gaussian", "channel"),
    ("uniform", "summod"), ("blackout", "summod"),
])
def test_fixed_level_chain_has_the_smoothed_marginal(table, process_name, operator_name):
    process = PROCESSES[process_name]()
    operator, y = OPERATORS[operator_name]
    num, t = 20_000, 0.3
    oracle = OracleDenoiser(process, table, D, dtype=torch.float64)
    result = split_gibbs_sample(process, None, SCHEDULE, operator, y, (num, D), prior_step=OraclePriorStep(oracle),
                                iterations=40, t_max=t, t_min=t, mh_steps=3, proposal="independent", generator=_gen(1))
    target = _smoothed_marginal(process, operator, y, table, t)
    floor = _floor(target, num, K)
    assert _tv(result.x0, target) < floor + 0.012, (_tv(result.x0, target), floor)
    # a different level is a different law: the test can tell
    assert total_variation(_smoothed_marginal(process, operator, y, table, 0.1), target) > 0.05
    assert result.likelihood_step == ("exact" if operator_name == "channel" else "mh")
    assert result.prior_rows == 40 * num and result.network_evaluations == 0


def test_fixed_level_check_catches_a_factorised_prior_step(table):
    """Control: drawing the sites of x0 independently from p(x0^d | z) (not jointly) misses the fixed-level law."""
    process = UniformProcess(K)
    num, t = 20_000, 0.3
    oracle = SharedLevelOracle(OracleDenoiser(process, table, D, dtype=torch.float64), D)

    def per_site(z: Tensor, lam: Tensor, generator: torch.Generator | None) -> Tensor:
        return sample_categorical(oracle(z, lam).x0_log_probs, generator)

    result = split_gibbs_sample(process, None, SCHEDULE, CHANNEL, Y_CHANNEL, (num, D), prior_step=per_site,
                                iterations=40, t_max=t, t_min=t, generator=_gen(1))
    target = _smoothed_marginal(process, CHANNEL, Y_CHANNEL, table, t)
    assert _tv(result.x0, target) > _floor(target, num, K) + 0.05      # measured 0.176, floor 0.016


def test_fixed_level_chain_with_the_exact_simulator_as_prior_step(table):
    """The prior step through the library's exact simulator started mid-way (masking) is as exact."""
    process = MaskingProcess(K)
    num, t = 10_000, 0.5
    denoiser = SharedLevelOracle(OracleDenoiser(process, table, D, dtype=torch.float64), D)
    result = split_gibbs_sample(process, denoiser, SCHEDULE, CHANNEL, Y_CHANNEL, (num, D), build_sampler("exact"),
                                iterations=20, t_max=t, t_min=t, generator=_gen(2))
    target = _smoothed_marginal(process, CHANNEL, Y_CHANNEL, table, t)
    floor = _floor(target, num, K)
    assert _tv(result.x0, target) < floor + 0.015, (_tv(result.x0, target), floor)
    assert result.network_evaluations > 20 * num and result.nfe == result.network_evaluations / num


# ----- annealed: toward the posterior ---------------------------------------------------------------------------

def _annealed(process: ForwardProcess, table: Tensor, operator, y, iterations: int, mh_steps: int = 1,
              num: int = 10_000, t_min: float = 0.005, seed: int = 1, proposal: str = "site") -> float:
    oracle = OracleDenoiser(process, table, D, dtype=torch.float64)
    result = split_gibbs_sample(process, None, SCHEDULE, operator, y, (num, D), prior_step=OraclePriorStep(oracle),
                                iterations=iterations, t_max=0.9, t_min=t_min, mh_steps=mh_steps, proposal=proposal,
                                generator=_gen(seed))
    return _tv(result.x0, _posterior(operator, y, table))


# Measured TV (N = 10k, floor 0.016) at 5 / 20 / 80 iterations, seeds 1-3: uniform 0.37 / 0.10-0.11 / 0.033-0.042,
# blackout 0.46 / 0.22 / 0.075-0.083, masking 0.55 / 0.29 / 0.087-0.092 (benchmarks/split_gibbs_oracle.py goes on).
ANNEALED_EXCESS = {"uniform": 0.04, "blackout": 0.08, "masking": 0.09}


@pytest.mark.parametrize("process_name", ["uniform", "blackout", "masking"])
def test_annealed_chain_approaches_the_posterior(table, process_name):
    process = PROCESSES[process_name]()
    tvs = [_annealed(process, table, CHANNEL, Y_CHANNEL, n) for n in (5, 20, 80)]
    floor = _floor(_posterior(CHANNEL, Y_CHANNEL, table), 10_000, K)
    assert tvs[0] > tvs[1] + 0.05 and tvs[1] > tvs[2] + 0.02, tvs
    assert tvs[2] < floor + ANNEALED_EXCESS[process_name], (tvs, floor)


def test_annealed_chain_with_the_coupled_operator_approaches_the_posterior(table):
    """Metropolis-Hastings likelihood steps (uniform process, independent proposals). Measured (N = 10k, floor
    0.019): 0.205 at 10 iterations x 4 MH steps, 0.053 at 160 x 4."""
    process = UniformProcess(K)
    few = _annealed(process, table, SUMMOD, Y_SUMMOD, 10, mh_steps=4, proposal="independent")
    many = _annealed(process, table, SUMMOD, Y_SUMMOD, 160, mh_steps=4, proposal="independent")
    floor = _floor(_posterior(SUMMOD, Y_SUMMOD, table), 10_000, K)
    assert few > many + 0.1, (few, many)
    assert many < floor + 0.05, (many, floor)


@pytest.mark.slow
def test_annealed_coupled_chain_improves_with_mh_steps_and_reaches_the_floor(table):
    """Measured (N = 10k, floor 0.019): one-site proposals at 40 iterations 0.346 (1 MH step) / 0.235 (16);
    independent proposals at 640 x 4: 0.025."""
    process = UniformProcess(K)
    one = _annealed(process, table, SUMMOD, Y_SUMMOD, 40, mh_steps=1)
    sixteen = _annealed(process, table, SUMMOD, Y_SUMMOD, 40, mh_steps=16)
    long = _annealed(process, table, SUMMOD, Y_SUMMOD, 640, mh_steps=4, proposal="independent")
    floor = _floor(_posterior(SUMMOD, Y_SUMMOD, table), 10_000, K)
    assert one > sixteen + 0.05, (one, sixteen)
    assert long < floor + 0.02, (long, floor)


# ----- errors, cost, determinism ----------------------------------------------------------------------------------

def test_masking_with_a_coupled_operator_is_refused(table):
    process = MaskingProcess(K)
    with pytest.raises(ValueError, match="couples sites"):
        split_gibbs_sample(process, None, SCHEDULE, SUMMOD, Y_SUMMOD, (4, D),
                           prior_step=OraclePriorStep(OracleDenoiser(process, table, D)))


@pytest.mark.parametrize("options, match", [
    ({"iterations": 0}, "iterations"),
    ({"mh_steps": 0}, "mh_steps"),
    ({"t_min": 0.0}, "t_min"),
    ({"t_min": 0.5, "t_max": 0.2}, "t_min"),
    ({"t_max": 1.5}, "t_max"),
    ({"annealing": "cosine"}, "annealing"),
    ({"likelihood_step": "gibbs"}, "likelihood_step"),
    ({"proposal": "swap"}, "proposal"),
    ({"prior_step": None}, "exactly one"),
    ({"sampler": "bridge"}, "exactly one"),
    ({"operator": SiteChannel(3, 0.1)}, "values per site"),
    ({"y": torch.tensor([[1, 2, 3], [0, 0, 0]])}, "batch"),
    ({"operator": SUMMOD, "y": Y_SUMMOD, "likelihood_step": "exact"}, "factorises"),
    ({"init": torch.full((4, D), K)}, "init"),
    ({"shape": (4,)}, "shape"),
])
def test_bad_arguments_raise(table, options, match):
    process = UniformProcess(K)
    args = {"operator": CHANNEL, "y": Y_CHANNEL, "shape": (4, D),
            "prior_step": OraclePriorStep(OracleDenoiser(process, table, D))}
    args.update(options)
    if args.get("sampler") == "bridge":
        args["sampler"] = build_sampler("bridge")
    operator, y, shape = args.pop("operator"), args.pop("y"), args.pop("shape")
    with pytest.raises(ValueError, match=match):
        split_gibbs_sample(process, None, SCHEDULE, operator, y, shape, **args)


def test_a_sampler_that_does_not_apply_is_refused(table):
    process = UniformProcess(K)
    with pytest.raises(ValueError, match="does not apply"):
        split_gibbs_sample(process, OracleDenoiser(process, table, D), SCHEDULE, CHANNEL, Y_CHANNEL, (4, D),
                           build_sampler("exact"))


def test_cost_is_recorded_and_seeds_reproduce(table):
    process = UniformProcess(K)
    denoiser = SharedLevelOracle(OracleDenoiser(process, table, D, dtype=torch.float64), D)
    seen = []
    runs = [split_gibbs_sample(process, denoiser, SCHEDULE, SUMMOD, Y_SUMMOD, (50, D),
                               build_sampler("bridge", num_steps=3), iterations=4, mh_steps=5, generator=_gen(9),
                               callback=lambda i, n, x: seen.append((i, n)))
            for _ in range(2)]
    result: SplitGibbsResult = runs[0]
    assert torch.equal(runs[0].x0, runs[1].x0) and torch.equal(runs[0].z, runs[1].z)
    assert seen[:4] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.network_evaluations == 4 * 3 * 50 and result.network_calls == 4 * 3 and result.nfe == 12
    assert result.likelihood_evaluations == 4 * (5 + 1) * 50 and 0 < result.acceptance_rate < 1
    assert result.prior_rows == 0 and result.levels.shape == (4,)
    assert result.x0.shape == (50, D) and int(result.x0.max()) < K


def test_annealing_levels():
    geometric = annealing_levels("geometric", 5, 0.8, 0.05)
    assert float(geometric[0]) == pytest.approx(0.8) and float(geometric[-1]) == pytest.approx(0.05)
    ratios = geometric[1:] / geometric[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    linear = annealing_levels("linear", 5, 0.8, 0.0)
    assert torch.allclose(linear, torch.tensor([0.8, 0.6, 0.4, 0.2, 0.0], dtype=torch.float64))
    assert annealing_levels("geometric", 1, 0.8, 0.05).tolist() == [0.05]


def test_dispatcher_form_and_site_shapes(table):
    """split_gibbs_method (posterior_sample's signature) with exact_prior equals split_gibbs_sample with the oracle
    prior step, draw for draw, also on sites shaped (1, 3) instead of (3,); a non-table prior is refused."""
    process = UniformProcess(K)
    oracle = OracleDenoiser(process, table, D, dtype=torch.float64)
    options = dict(iterations=6, t_max=0.8, t_min=0.05)
    direct = split_gibbs_sample(process, None, SCHEDULE, CHANNEL, Y_CHANNEL, (40, D),
                                prior_step=OraclePriorStep(oracle), generator=_gen(4), **options).x0
    via = split_gibbs_method(build_sampler("bridge"), process, SharedLevelOracle(oracle, D), SCHEDULE, CHANNEL,
                             Y_CHANNEL, (40, D), exact_prior=True, generator=_gen(4), **options)
    assert torch.equal(direct, via)
    shaped = split_gibbs_method(build_sampler("bridge"), process, oracle, SCHEDULE, CHANNEL, Y_CHANNEL.reshape(1, 1, D),
                                (40, 1, D), exact_prior=True, generator=_gen(4), **options)
    assert torch.equal(shaped.reshape(40, D), direct)
    with pytest.raises(ValueError, match="enumerated table"):
        split_gibbs_method(build_sampler("bridge"), process, lambda x, lam: None, SCHEDULE, CHANNEL, Y_CHANNEL, (4, D),
                           exact_prior=True)
    with pytest.raises(ValueError, match="built for process"):
        split_gibbs_method(build_sampler("bridge"), BlackoutProcess(K), oracle, SCHEDULE, CHANNEL, Y_CHANNEL, (4, D),
                           exact_prior=True)
