"""Contract tests over every entry of the process registry (DESIGN.md section 6, "contract tests").

Each registry name needs a factory in FACTORIES: a new process without one fails loudly in
``test_every_registered_process_has_a_factory`` (and its parametrised cases error). EXTRA_CASES adds
variants of a registered process that take other code paths (a matrix process with an absorbing generator
and a given prior, the uniformization expm, a Gaussian kernel).

A process with no maximum count (``unbounded``: jump) has no marginal matrix or K^D table: the tests that
enumerate values run over BOUNDED_CASES only, and tests/test_jump_process.py checks its marginals, bridge and
ELBO directly; every other contract test runs over it with data values 0..UNBOUNDED_RANGE - 1.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch

from discrete_diffusion.processes import (
    PROCESSES,
    BlackoutProcess,
    ForwardProcess,
    JumpProcess,
    MaskingProcess,
    MatrixProcess,
    Prediction,
    UniformProcess,
    build_process,
)

FACTORIES: dict[str, Callable[[], ForwardProcess]] = {
    "blackout": lambda: BlackoutProcess(5),
    "masking": lambda: MaskingProcess(4),
    "uniform": lambda: UniformProcess(4),
    "matrix": lambda: MatrixProcess(4, "birth-death", rates_options={"birth": 2.0, "death": 1.0}, normalize=True),
    "jump": lambda: JumpProcess(scale=2.0, mean_scale=5.0),
}
EXTRA_CASES: dict[str, Callable[[], ForwardProcess]] = {
    "matrix-absorbing": lambda: MatrixProcess(3, "absorbing", prior=[0.0, 0.0, 0.0, 1.0]),
    "matrix-uniformization": lambda: MatrixProcess(4, "banded", normalize=True, expm_method="uniformization"),
    "matrix-gaussian": lambda: MatrixProcess(5, "gaussian", rates_options={"variance": 0.5}),
}
CASES = sorted(PROCESSES) + sorted(EXTRA_CASES)
BOUNDED_CASES = [c for c in CASES if not (FACTORIES.get(c) or EXTRA_CASES[c])().unbounded]
#: Data values 0..UNBOUNDED_RANGE - 1 stand in for 0..K-1 for a process without a maximum count.
UNBOUNDED_RANGE = 50
LAMS = torch.tensor([-7.0, -2.0, -0.3, 0.0, 1.5, 4.0, 9.0, 16.0])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _build(case: str) -> ForwardProcess:
    factory = FACTORIES.get(case) or EXTRA_CASES.get(case)
    if factory is None:
        pytest.fail(f"process {case!r} is registered but has no factory in tests/test_process_contract.py")
    return factory()


def _states(proc: ForwardProcess) -> int:
    """How many data values the tests draw x0 from: K, or UNBOUNDED_RANGE for a process without a maximum."""
    return UNBOUNDED_RANGE if proc.unbounded else proc.num_states


def _in_range(proc: ForwardProcess, x: torch.Tensor) -> bool:
    """x holds values the process's chain can take: 0..num_values-1, or any count >= 0 when unbounded."""
    return int(x.min()) >= 0 and (proc.unbounded or int(x.max()) < proc.num_values)


def _random_predictions(proc: ForwardProcess, xt: torch.Tensor, lam: torch.Tensor, seed: int = 0,
                        requires_grad: bool = False):
    """Yield (parameterisation, output, Prediction) for random network outputs of every parameterisation."""
    for param in proc.parameterizations:
        out = 2.0 * torch.randn((xt.shape[0], proc.output_channels(param)) + xt.shape[1:], generator=_gen(seed))
        out.requires_grad_(requires_grad)
        yield param, out, proc.prediction_from_output(out, xt, lam, param)


def test_every_registered_process_has_a_factory():
    assert set(FACTORIES) == set(PROCESSES), "add a factory for each new registry entry"


@pytest.mark.parametrize("case", BOUNDED_CASES)
def test_sample_marginal_in_range_and_matches_log_marginal_matrix(case):
    proc = _build(case)
    x0 = torch.randint(0, proc.num_states, (LAMS.shape[0], 3, 2), generator=_gen(1))
    xt = proc.sample_marginal(x0, LAMS, _gen(2))
    assert xt.shape == x0.shape and xt.dtype == torch.long
    assert int(xt.min()) >= 0 and int(xt.max()) < proc.num_values
    # frequencies of many draws from one x0 at one lam agree with exp(log_marginal_matrix) within 5 s.e.
    n, lam = 20_000, torch.full((20_000,), -0.4)
    start = proc.num_states - 1
    draws = proc.sample_marginal(torch.full((n, 1), start), lam, _gen(3))[:, 0]
    freq = torch.bincount(draws, minlength=proc.num_values).double() / n
    expected = proc.log_marginal_matrix(lam[:1])[0, start].exp()
    assert torch.all((freq - expected).abs() <= 5 * torch.sqrt(expected * (1 - expected) / n) + 1e-12)


@pytest.mark.parametrize("case", BOUNDED_CASES)
def test_log_marginal_matrix_rows_normalised(case):
    proc = _build(case)
    lam = torch.cat([LAMS, torch.tensor([math.inf])])
    log_q = proc.log_marginal_matrix(lam)
    assert log_q.shape == (lam.shape[0], proc.num_states, proc.num_values) and log_q.dtype == torch.float64
    torch.testing.assert_close(torch.logsumexp(log_q, -1), torch.zeros(log_q.shape[:2], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # alpha = 1 is the identity on the data values
    assert torch.equal(log_q[-1].exp()[:, : proc.num_states], torch.eye(proc.num_states, dtype=torch.float64))


@pytest.mark.parametrize("case", BOUNDED_CASES)
def test_bridge_to_alpha_one_returns_x0_and_composes(case):
    proc = _build(case)
    x0 = torch.randint(0, proc.num_states, (64, 5), generator=_gen(4))
    lam_t = torch.linspace(-4.0, 6.0, 64)
    xt = proc.sample_marginal(x0, lam_t, _gen(5))
    assert torch.equal(proc.bridge_from_x0(xt, x0, lam_t, torch.full((64,), math.inf), _gen(6)), x0)
    # x_t ~ q_t(.|x0) then x_s ~ q(x_s | x_t, x0) gives x_s ~ q_s(.|x0)
    n, start = 20_000, proc.num_states - 1
    lam_t, lam_s = torch.full((n,), -0.5), torch.full((n,), 1.0)
    x0 = torch.full((n, 1), start)
    xs = proc.bridge_from_x0(proc.sample_marginal(x0, lam_t, _gen(7)), x0, lam_t, lam_s, _gen(8))[:, 0]
    freq = torch.bincount(xs, minlength=proc.num_values).double() / n
    expected = proc.log_marginal_matrix(lam_s[:1])[0, start].exp()
    assert torch.all((freq - expected).abs() <= 5 * torch.sqrt(expected * (1 - expected) / n) + 1e-12)


@pytest.mark.parametrize("case", CASES)
def test_elbo_integrand_nonnegative_with_finite_gradients(case):
    proc = _build(case)
    x0 = torch.randint(0, _states(proc), (LAMS.shape[0], 6), generator=_gen(9))
    xt = proc.sample_marginal(x0, LAMS, _gen(10))
    for param, out, pred in _random_predictions(proc, xt, LAMS, seed=11, requires_grad=True):
        value = proc.elbo_integrand(x0, xt, LAMS, pred)
        assert value.shape == (LAMS.shape[0],), param
        assert torch.all(torch.isfinite(value)) and torch.all(value >= 0), (param, value)
        value.sum().backward()
        assert torch.all(torch.isfinite(out.grad)), param
        nll = proc.reconstruction_nll(x0, xt, proc.prediction_from_output(out.detach(), xt, LAMS, param))
        assert nll.shape == (LAMS.shape[0],) and torch.all(nll >= 0)


@pytest.mark.parametrize("case", BOUNDED_CASES)
def test_elbo_integrand_vanishes_at_the_exact_posterior(case):
    """Point-mass data x0 = c at one site: p(x0 | x_t) = delta_c exactly, so every Bregman term is zero."""
    proc = _build(case)
    for c in range(proc.num_states):
        x0 = torch.full((LAMS.shape[0], 1), c)
        xt = proc.sample_marginal(x0, LAMS, _gen(12 + c))
        log_probs = torch.log(torch.nn.functional.one_hot(x0, proc.num_states).float())
        pred = Prediction(x0_log_probs=log_probs, mean_missing=(x0 - xt).float())
        value = proc.elbo_integrand(x0, xt, LAMS, pred)
        assert torch.all(value.abs() <= 1e-6), (c, value)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sites", [(7,), (3, 4)])
def test_prediction_and_feature_shapes(case, sites):
    proc = _build(case)
    batch = LAMS.shape[0]
    xt = torch.randint(0, proc.num_values or UNBOUNDED_RANGE, (batch,) + sites, generator=_gen(13))
    if isinstance(proc, (BlackoutProcess,)):
        xt = xt.clamp_max(proc.num_states - 1)
    features = proc.network_features(xt, LAMS)
    assert features.shape == (batch, proc.feature_channels) + sites and torch.all(torch.isfinite(features))
    for param, out, pred in _random_predictions(proc, xt, LAMS, seed=14):
        assert out.shape[1] == proc.output_channels(param)
        if pred.x0_log_probs is not None:
            assert pred.x0_log_probs.shape == (batch,) + sites + (proc.num_states,), param
            torch.testing.assert_close(pred.x0_log_probs.exp().sum(-1), torch.ones((batch,) + sites))
        if pred.mean_missing is not None:
            assert pred.mean_missing.shape == (batch,) + sites, param
    with pytest.raises(ValueError, match="parameterizations"):
        proc.check_parameterization("no-such-parameterization")


@pytest.mark.parametrize("case", CASES)
def test_prior_samples_in_range_and_prior_kl(case):
    proc = _build(case)
    lam1 = math.log(1e-4 / (1 - 1e-4))
    x1 = proc.sample_prior((50, 2, 3), lam1, _gen(15))
    assert x1.shape == (50, 2, 3) and x1.dtype == torch.long
    assert _in_range(proc, x1)
    again = proc.sample_prior((50, 2, 3), lam1, _gen(15))
    assert torch.equal(x1, again)
    x0 = torch.randint(0, _states(proc), (4, 6), generator=_gen(16))
    kl = proc.prior_kl(x0, torch.full((4,), lam1))
    assert kl.shape == (4,) and torch.all(kl >= 0)


@pytest.mark.parametrize("case", CASES)
def test_reverse_rates_contract(case):
    proc = _build(case)
    x0 = torch.randint(0, _states(proc), (LAMS.shape[0], 5), generator=_gen(17))
    xt = proc.sample_marginal(x0, LAMS, _gen(18))
    _, _, pred = next(_random_predictions(proc, xt, LAMS, seed=19))
    try:
        rates = proc.reverse_rates(xt, pred, LAMS)
    except ValueError as err:
        assert "reverse_rates" in str(err)
        return
    assert rates.shape == xt.shape + (proc.num_values,) and torch.all(rates >= 0)
    assert torch.all(rates.gather(-1, xt[..., None]) == 0)
    try:
        bound = proc.reverse_rate_bound(xt)
    except ValueError as err:
        assert "reverse_rate_bound" in str(err)
        return
    total = rates.reshape(rates.shape[0], -1).sum(1)
    assert torch.all(total <= torch.sigmoid(LAMS.double()) * bound * (1 + 1e-9) + 1e-300)


@pytest.mark.parametrize("case", CASES)
def test_config_round_trips_through_build_process(case):
    proc = _build(case)
    config = proc.config()
    options = {k: v for k, v in config.items() if k not in ("name", "num_states")}
    again = build_process(config["name"], config["num_states"], **options)
    assert type(again) is type(proc) and again.config() == config
    assert (again.num_states, again.num_values, again.feature_channels) == \
        (proc.num_states, proc.num_values, proc.feature_channels)
    if proc.unbounded:      # no marginal matrix: the same draws instead
        x0 = torch.randint(0, UNBOUNDED_RANGE, (LAMS.shape[0], 4), generator=_gen(20))
        assert torch.equal(again.sample_marginal(x0, LAMS, _gen(21)), proc.sample_marginal(x0, LAMS, _gen(21)))
        return
    torch.testing.assert_close(again.log_marginal_matrix(LAMS), proc.log_marginal_matrix(LAMS), rtol=0, atol=0)
