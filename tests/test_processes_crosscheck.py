"""The generic matrix process reproduces every closed-form process (DESIGN.md section 6c).

- Q = uniform_generator(K)                      vs UniformProcess: marginals, ELBO integrand, bridge, rates;
- Q = absorbing_generator(K), prior = MASK       vs MaskingProcess: marginals, ELBO integrand (SUBS), bridge;
- Q = pure_death_generator(N + 1), prior = 0     vs BlackoutProcess: marginals, ELBO integrand ("logits").
Predictions are random network outputs passed through the closed-form process's parameterisation; the
matrix process's "logits" parameterisation (net + log P_t[x0, x_t]) must give the same probabilities.
Both expm paths of the matrix process are checked where both apply.

Measured worst deviations over 20 seeds: log-marginals 7e-14 (finite entries, lam in [-12, 30]); ELBO
integrands 1.3e-6 relative (float32 outputs; MaskingProcess computes in float32); bridge probabilities
within 1e-13.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import expit

from discrete_diffusion.oracle import OracleDenoiser
from discrete_diffusion.processes import BlackoutProcess, MaskingProcess, MatrixProcess, Prediction, UniformProcess
from discrete_diffusion.processes.generators import (
    absorbing_generator,
    gaussian_generator,
    pure_death_generator,
    uniform_generator,
)
from discrete_diffusion.processes.masking import unmask_probability

LAMS = torch.tensor([-12.0, -5.0, -1.3, 0.0, 0.7, 3.0, 8.0, 14.0, 30.0])
LAM_PAIRS = [(-6.0, -2.0), (-1.0, 0.5), (0.0, 3.0), (2.0, 2.5), (5.0, 12.0), (1.0, math.inf)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_same_log_marginals(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(torch.isfinite(a), torch.isfinite(b))  # the same impossible transitions
    finite = torch.isfinite(a)
    torch.testing.assert_close(a[finite], b[finite], rtol=0, atol=1e-11)


def _random_case(proc, lam: torch.Tensor, sites: int, seed: int):
    """x0, x_t ~ q_t(.|x0) and a random "logits" prediction of proc: (x0, xt, output, Prediction)."""
    g = _gen(seed)
    x0 = torch.randint(0, proc.num_states, (lam.shape[0], sites), generator=g)
    xt = proc.sample_marginal(x0, lam, g)
    out = 2.5 * torch.randn(lam.shape[0], proc.num_states, sites, generator=g)
    return x0, xt, out, proc.prediction_from_output(out, xt, lam, "logits")


# ----- uniform ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "uniformization"])
def test_matrix_uniform_marginals_prior_and_parameterisation(method):
    closed, generic = UniformProcess(5), MatrixProcess(5, uniform_generator(5), expm_method=method)
    _assert_same_log_marginals(closed.log_marginal_matrix(LAMS), generic.log_marginal_matrix(LAMS))
    torch.testing.assert_close(generic.prior, torch.full((5,), 0.2, dtype=torch.float64))
    x0, xt, out, pred = _random_case(closed, LAMS, 6, seed=1)
    torch.testing.assert_close(generic.prediction_from_output(out, xt, LAMS, "logits").x0_log_probs,
                               pred.x0_log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(generic.prior_kl(x0, LAMS), closed.prior_kl(x0, LAMS), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["auto", "uniformization"])
def test_matrix_uniform_elbo_integrand_and_reverse_rates(method):
    closed, generic = UniformProcess(5), MatrixProcess(5, uniform_generator(5), expm_method=method)
    for seed in range(3):
        x0, xt, _, pred = _random_case(closed, LAMS, 6, seed=10 + seed)
        a = closed.elbo_integrand(x0, xt, LAMS, pred).double()
        b = generic.elbo_integrand(x0, xt, LAMS, pred).double()
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-12)
        torch.testing.assert_close(closed.reverse_rates(xt, pred, LAMS), generic.reverse_rates(xt, pred, LAMS),
                                   rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("lam_t,lam_s", LAM_PAIRS)
def test_matrix_uniform_bridge_probabilities(lam_t, lam_s):
    closed, generic = UniformProcess(4), MatrixProcess(4, uniform_generator(4))
    x0 = torch.arange(4).repeat_interleave(4)[None, :]                 # every (x0, x_t) pair
    xt = torch.arange(4).repeat(4)[None, :]
    lt, ls = torch.tensor([lam_t]), torch.tensor([lam_s])
    torch.testing.assert_close(closed.bridge_log_probs(xt, x0, lt, ls).exp(), generic.bridge_probs(xt, x0, lt, ls),
                               rtol=1e-10, atol=1e-13)


# ----- masking ----------------------------------------------------------------------------------------
def _mask_process(k: int) -> MatrixProcess:
    return MatrixProcess(k, absorbing_generator(k), prior=torch.nn.functional.one_hot(torch.tensor(k), k + 1))


def test_matrix_absorbing_marginals_and_subs_parameterisation():
    closed, generic = MaskingProcess(4), _mask_process(4)
    assert generic.expm_method == "uniformization" and generic.num_values == 5
    _assert_same_log_marginals(closed.log_marginal_matrix(LAMS), generic.log_marginal_matrix(LAMS))
    _, xt, out, pred = _random_case(closed, LAMS, 7, seed=2)
    # net + log P_t[x0, x_t] is exactly SUBS: the masked sites' softmax, unmasked sites copied through
    torch.testing.assert_close(generic.prediction_from_output(out, xt, LAMS, "logits").x0_log_probs,
                               pred.x0_log_probs, rtol=1e-5, atol=1e-5)


def test_matrix_absorbing_elbo_integrand_and_reverse_rates():
    closed, generic = MaskingProcess(4), _mask_process(4)
    for seed in range(3):
        x0, xt, _, pred = _random_case(closed, LAMS, 7, seed=20 + seed)
        a = closed.elbo_integrand(x0, xt, LAMS, pred).double()
        b = generic.elbo_integrand(x0, xt, LAMS, pred).double()
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-12)
        # MaskingProcess renormalises the float32 probabilities in float64 (the exact simulator's bound)
        torch.testing.assert_close(closed.reverse_rates(xt, pred, LAMS), generic.reverse_rates(xt, pred, LAMS),
                                   rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("lam_t,lam_s", LAM_PAIRS)
def test_matrix_absorbing_bridge_probabilities(lam_t, lam_s):
    generic = _mask_process(3)
    x0 = torch.tensor([[0, 1, 2, 0, 1, 2]])
    xt = torch.tensor([[3, 3, 3, 0, 1, 2]])                            # masked, then unmasked (= x0)
    lt, ls = torch.tensor([lam_t]), torch.tensor([lam_s])
    p = float(unmask_probability(lt, ls))
    expected = torch.zeros(1, 6, 4, dtype=torch.float64)
    for d in range(3):
        expected[0, d, d], expected[0, d, 3] = p, 1 - p
        expected[0, 3 + d, d] = 1.0
    torch.testing.assert_close(generic.bridge_probs(xt, x0, lt, ls), expected, rtol=1e-10, atol=1e-13)


# ----- blackout ---------------------------------------------------------------------------------------
def test_matrix_pure_death_marginals_and_logits_parameterisation():
    closed = BlackoutProcess(7)
    generic = MatrixProcess(7, pure_death_generator(7), prior=[1.0] + [0.0] * 6)
    _assert_same_log_marginals(closed.log_marginal_matrix(LAMS), generic.log_marginal_matrix(LAMS))
    _, xt, out, pred = _random_case(closed, LAMS, 6, seed=3)
    torch.testing.assert_close(generic.prediction_from_output(out, xt, LAMS, "logits").x0_log_probs,
                               pred.x0_log_probs, rtol=1e-5, atol=1e-5)


def test_matrix_pure_death_elbo_integrand_and_reverse_rates():
    closed = BlackoutProcess(7)
    generic = MatrixProcess(7, pure_death_generator(7), prior=[1.0] + [0.0] * 6)
    for seed in range(3):
        x0, xt, _, pred = _random_case(closed, LAMS, 6, seed=30 + seed)
        a = closed.elbo_integrand(x0, xt, LAMS, pred).double()  # uses pred.mean_missing
        b = generic.elbo_integrand(x0, xt, LAMS, Prediction(x0_log_probs=pred.x0_log_probs)).double()
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-10)
        torch.testing.assert_close(closed.reverse_rates(xt, pred, LAMS), generic.reverse_rates(xt, pred, LAMS),
                                   rtol=2e-5, atol=1e-12)


@pytest.mark.parametrize("lam_t,lam_s", LAM_PAIRS)
def test_matrix_pure_death_bridge_is_binomial(lam_t, lam_s):
    generic = MatrixProcess(6, pure_death_generator(6), prior=[1.0] + [0.0] * 5)
    x0 = torch.tensor([[5, 5, 3, 2, 4]])
    xt = torch.tensor([[0, 2, 3, 1, 4]])
    lt, ls = torch.tensor([lam_t]), torch.tensor([lam_s])
    p = float(BlackoutProcess.birth_probability(lt, ls))
    expected = np.zeros((1, 5, 6))
    for d in range(5):
        m = int(x0[0, d] - xt[0, d])
        expected[0, d, int(xt[0, d]): int(x0[0, d]) + 1] = stats.binom.pmf(np.arange(m + 1), m, p)
    torch.testing.assert_close(generic.bridge_probs(xt, x0, lt, ls), torch.from_numpy(expected),
                               rtol=1e-9, atol=1e-13)


# ----- the generic reverse rates are the exact time reversal --------------------------------------------
@pytest.mark.parametrize("make", [lambda: MatrixProcess(4, gaussian_generator(4), expm_method="uniformization"),
                                  lambda: MatrixProcess(4, "birth-death", rates_options={"birth": 2.0}),
                                  lambda: _mask_process(4)], ids=["gaussian", "birth-death", "absorbing"])
@pytest.mark.parametrize("lam", [-3.0, 0.4, 6.0])
def test_matrix_reverse_rates_are_the_exact_time_reversal(make, lam):
    """One site, data pi: per unit of lam the reversal of Q in sigma-time is
    (1 - alpha) Q[y, x] p_t(y) / p_t(x), p_t(x) = sum_x0 pi(x0) P_t[x0, x] (|d sigma / d lam| = 1 - alpha)."""
    proc = make()
    pi = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    oracle = OracleDenoiser(proc, pi, num_sites=1)
    lam_b = torch.full((proc.num_values,), lam)
    xt = torch.arange(proc.num_values)[:, None]
    rates = proc.reverse_rates(xt, oracle(xt, lam_b), lam_b)[:, 0, :]                # [x, y]
    p_t = pi @ proc.log_marginal_matrix(lam_b[:1].double())[0].exp()                 # (M,)
    q = proc.rate_matrix
    expected = (1 - expit(lam)) * q.T * p_t[None, :] / p_t[:, None]
    expected.fill_diagonal_(0.0)
    torch.testing.assert_close(rates, expected, rtol=2e-6, atol=1e-12)
