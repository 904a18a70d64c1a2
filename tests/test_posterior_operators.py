"""Measurement operators of posterior sampling (issue 13 item 1): log p(y | x0) against hand-computed values and
independent formulas, the law of ``simulate`` against exp(log_likelihood), the exact factorised likelihoods of the
coupled operators against enumeration, and one-line errors for bad y."""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.oracle import all_configurations, configuration_index, total_variation
from discrete_diffusion.posterior import (
    OPERATORS,
    CallableOperator,
    ChannelOperator,
    DownsampleOperator,
    InpaintOperator,
    ParityOperator,
    ThinningOperator,
    build_operator,
    factorised_log_likelihood,
    inpaint_observation,
)

NEG = -math.inf


def test_log_likelihood_matches_hand_computed_values():
    x0 = torch.tensor([[1, 2, 0], [1, 2, 1]])
    assert InpaintOperator(3).log_likelihood(x0, torch.tensor([[1, -1, 0]])).tolist() == [0.0, NEG]
    got = ChannelOperator(3, 0.3).log_likelihood(torch.tensor([[0, 1]]), torch.tensor([[0, 2]]))
    assert abs(float(got) - math.log(0.8 * 0.1)) < 1e-12
    thin = ThinningOperator(4, 0.25)
    got = thin.log_likelihood(torch.tensor([[3, 1], [0, 1]]), torch.tensor([[1, 0]]))
    assert abs(float(got[0]) - math.log(3 * 0.25 * 0.75 ** 2 * 0.75)) < 1e-12 and got[1] == NEG
    assert float(ThinningOperator(4, 1.0).log_likelihood(torch.tensor([[2, 3]]), torch.tensor([[2, 3]]))) == 0.0
    down = DownsampleOperator(3, 2)
    assert down.log_likelihood(torch.tensor([[1, 2, 0, 1]] * 2), torch.tensor([[3, 1], [2, 1]])).tolist() == [0.0, NEG]
    image = torch.arange(8).reshape(1, 2, 4) % 3                  # [[0 1 2 0], [1 2 0 1]]
    assert DownsampleOperator(3, (2, 2)).block_sums(image).tolist() == [[[4, 3]]]
    xor = ParityOperator(2, [(0, 1), (1, 2)], flip=0.1)
    got = xor.log_likelihood(torch.tensor([[1, 1, 0]]), torch.tensor([[0, 0]]))
    assert abs(float(got) - math.log(0.9 * 0.1)) < 1e-12
    mod3 = ParityOperator(3, [(0, 1, 2)])
    assert mod3.log_likelihood(torch.tensor([[2, 2, 1]] * 2), torch.tensor([[2], [1]])).tolist() == [0.0, NEG]
    soft = ParityOperator(3, [(0, 1, 2)], flip=0.2)
    assert abs(float(soft.log_likelihood(torch.tensor([[2, 2, 1]]), torch.tensor([[1]]))) - math.log(0.1)) < 1e-12
    user = CallableOperator(3, lambda x, y: -(x - y).abs().sum(1).double(), (2,))
    assert user.log_likelihood(torch.tensor([[0, 2], [1, 1]]), torch.tensor([[1, 1]])).tolist() == [-2.0, 0.0]


def test_site_tables_match_independent_formulas_and_sum_to_the_likelihood():
    """The per-site tables of the factorising operators equal closed forms computed another way, and summed over the
    sites they give log_likelihood; the coupled operators have none."""
    g = torch.Generator().manual_seed(0)
    k, shape = 5, (2, 3)
    x0 = torch.randint(0, k, (7, *shape), generator=g)
    y = torch.randint(0, k, (7, *shape), generator=g)
    thin = ThinningOperator(k, 0.4)
    table = thin.site_log_likelihood(y, shape)
    for v in range(k):
        law = torch.distributions.Binomial(torch.tensor(float(v), dtype=torch.float64), torch.tensor(0.4).double())
        expected = torch.where(y <= v, law.log_prob(y.double().clamp_max(v)), torch.tensor(NEG, dtype=torch.float64))
        assert torch.allclose(table[..., v], expected, atol=1e-12)
    channel = ChannelOperator(k, 0.25)
    expected = torch.log(torch.where(y[..., None] == torch.arange(k), 0.75 + 0.05, 0.05).double())
    assert torch.allclose(channel.site_log_likelihood(y, shape), expected, atol=1e-12)
    observed = inpaint_observation(y, torch.rand(y.shape, generator=g) < 0.5)
    for op, obs in ((thin, y), (channel, y), (InpaintOperator(k), observed)):
        table = op.site_log_likelihood(obs, shape)
        summed = torch.gather(table, -1, x0[..., None])[..., 0].reshape(7, -1).sum(1)
        assert torch.equal(summed.isneginf(), op.log_likelihood(x0, obs).isneginf())
        finite = summed.isfinite()
        assert torch.allclose(summed[finite], op.log_likelihood(x0, obs)[finite], atol=1e-12)
    assert DownsampleOperator(k, 1).site_log_likelihood(y, shape) is None
    assert ParityOperator(k, [(0, 1)]).site_log_likelihood(y, shape) is None


def _law_check(op, x0, y_space, n=40000, seed=0):
    """TV between the empirical law of simulate(x0) over y_space (m, *y) and exp(log_likelihood(x0, y)), against
    3x the expected TV of n exact draws; also: the likelihood sums to 1 over y_space."""
    draws = op.simulate(x0.expand(n, *x0.shape[1:]), torch.Generator().manual_seed(seed))
    probs = op.log_likelihood(x0.expand(y_space.shape[0], *x0.shape[1:]), y_space).exp()
    assert abs(float(probs.sum()) - 1.0) < 1e-10
    k_y = int(y_space.max()) + 1
    counts = torch.bincount(configuration_index(draws.reshape(n, -1), k_y), minlength=k_y ** y_space[0].numel())
    order = configuration_index(y_space.reshape(y_space.shape[0], -1), k_y)
    emp = counts[order].double() / n
    assert abs(float(emp.sum()) - 1.0) < 1e-12                      # every draw lies in y_space
    floor = 3 * 0.5 * float((2 * probs * (1 - probs) / (math.pi * n)).sqrt().sum())
    assert total_variation(emp, probs) < floor, (total_variation(emp, probs), floor)


def test_simulate_draws_y_with_the_likelihood_law():
    _law_check(ChannelOperator(3, 0.4), torch.tensor([[0, 2]]), all_configurations(3, 2))
    _law_check(ThinningOperator(4, 0.35), torch.tensor([[3, 2]]), all_configurations(4, 2))
    _law_check(ParityOperator(3, [(0, 1), (1, 2)], flip=0.3), torch.tensor([[2, 2, 1]]), all_configurations(3, 2))
    x0 = torch.tensor([[2, 1, 0, 2]])
    assert DownsampleOperator(3, 2).simulate(x0).tolist() == [[3, 2]]
    mask = torch.tensor([True, False, False, True])
    assert InpaintOperator(3, mask).simulate(x0).tolist() == [[2, -1, -1, 2]]


@pytest.mark.parametrize("which", ["downsample", "parity"])
def test_factorised_likelihood_of_coupled_operators_matches_enumeration(which):
    """log E[p(y | x0)] for independent sites: the convolution forms equal the sum over all K^D configurations."""
    k, shape = 3, (2, 2)
    g = torch.Generator().manual_seed(1)
    log_probs = torch.log_softmax(2 * torch.randn(6, *shape, k, generator=g, dtype=torch.float64), -1)
    if which == "downsample":
        op, y = DownsampleOperator(k, (1, 2)), torch.tensor([[[3], [1]]])
    else:
        op, y = ParityOperator(k, [(0, 3), (1,), (2,)], flip=0.15), torch.tensor([[1, 2, 0]])
    got = op.factorised_log_likelihood(log_probs, y)
    configs = all_configurations(k, 4).reshape(-1, *shape)
    like = op.log_likelihood(configs, y).exp()                                    # (J,)
    weight = torch.gather(log_probs.reshape(6, 1, 4, k).expand(-1, configs.shape[0], -1, -1), -1,
                          configs.reshape(1, -1, 4, 1).expand(6, -1, -1, -1))[..., 0].sum(-1).exp()
    assert torch.allclose(got, torch.log(weight @ like), atol=1e-10)
    if which == "parity":
        assert ParityOperator(k, [(0, 1), (1, 2)]).factorised_log_likelihood(log_probs, torch.tensor([[0, 1]])) is None


def test_dps_likelihood_paths_agree(monkeypatch):
    """factorised_log_likelihood: the enumeration path (a callable wrapping the channel) equals the channel's site
    closed form to 1e-10; the Monte-Carlo path (forced) is within 0.05 of it with 20000 draws."""
    import discrete_diffusion.posterior.dps as dps

    k, d = 3, 4
    g = torch.Generator().manual_seed(2)
    log_probs = torch.log_softmax(torch.randn(5, d, k, generator=g, dtype=torch.float64), -1)
    channel = ChannelOperator(k, 0.3)
    y = torch.tensor([[0, 2, 1, 1], [2, 2, 0, 1]])
    wrapped = CallableOperator(k, channel.log_likelihood, (d,))
    rows = torch.tensor([0, 1, 1, 0, 1])
    exact = factorised_log_likelihood(channel, log_probs, y, rows)
    assert torch.allclose(factorised_log_likelihood(wrapped, log_probs, y, rows), exact, atol=1e-10)
    monkeypatch.setattr(dps, "ENUM_LIMIT", 1)
    mc = factorised_log_likelihood(wrapped, log_probs, y, rows, mc_samples=200000)
    assert (mc - exact).abs().max() < 0.02


def one_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_y_and_bad_options_are_one_line_errors():
    shape = (4,)
    ops = [InpaintOperator(3), ChannelOperator(3, 0.1), ThinningOperator(3, 0.5), DownsampleOperator(3, 2),
           ParityOperator(3, [(0, 1)])]
    for op in ops:
        good = torch.zeros((1, *op.y_shape(shape)), dtype=torch.long)
        assert op.check_y(good, shape).dtype == torch.long
        one_line(lambda: op.check_y(good.double(), shape), "integer tensor")
        one_line(lambda: op.check_y(good.bool(), shape), "integer tensor")
        one_line(lambda: op.check_y(good[0], shape), "leading batch axis")
        one_line(lambda: op.check_y(torch.zeros(1, 7, dtype=torch.long), shape), "must have shape")
        one_line(lambda: op.log_likelihood(torch.zeros(3, 4, dtype=torch.long), good.expand(2, -1)), "2 rows")
    one_line(lambda: InpaintOperator(3).check_y(torch.tensor([[0, -2, 1, 1]]), shape), r"-1..2")
    one_line(lambda: ChannelOperator(3, 0.1).check_y(torch.tensor([[0, 3, 1, 1]]), shape), r"0..2")
    one_line(lambda: ThinningOperator(3, 0.5).check_y(torch.tensor([[0, 3, 1, 1]]), shape), "at most the largest")
    one_line(lambda: DownsampleOperator(3, 2).check_y(torch.tensor([[5, 1]]), shape), r"0..4 \(a block sum")
    one_line(lambda: ParityOperator(3, [(0, 1)]).check_y(torch.tensor([[3]]), shape), r"0..2")
    one_line(lambda: ParityOperator(3, [(0, 9)]).check_y(torch.tensor([[0]]), shape), "names site 9")
    one_line(lambda: DownsampleOperator(3, 3).y_shape(shape), "must divide")
    one_line(lambda: InpaintOperator(3, torch.tensor([True, False, True, True])).check_y(
        torch.tensor([[1, 1, 0, 0]]), shape), "exactly at the observed")
    one_line(lambda: InpaintOperator(3).simulate(torch.zeros(1, 4, dtype=torch.long)), "observed mask")
    one_line(lambda: ChannelOperator(3, 1.5), r"\[0, 1\]")
    one_line(lambda: ThinningOperator(3, 0.0), r"\(0, 1\]")
    one_line(lambda: DownsampleOperator(3, 0), "integer >= 1")
    one_line(lambda: ParityOperator(3, [(0, 0)]), "distinct site indices")
    one_line(lambda: ParityOperator(3, []), "distinct site indices")
    one_line(lambda: build_operator("blur", 3), "unknown measurement 'blur'")
    one_line(lambda: build_operator("channel", 3, sigma=1), "bad options for measurement 'channel'")
    assert set(OPERATORS) == {"inpaint", "channel", "thinning", "downsample", "parity", "callable"}
    x0, y = torch.zeros(2, 4, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
    one_line(lambda: CallableOperator(3, lambda x, y: torch.zeros(3), (2,)).log_likelihood(x0, y), r"\(2,\) real")
    one_line(lambda: CallableOperator(3, lambda x, y: torch.full((2,), math.nan), (2,)).log_likelihood(x0, y), "NaN")
    one_line(lambda: CallableOperator(3, lambda x, y: torch.zeros(2), (2,)).simulate(x0), "no simulate")
    one_line(lambda: CallableOperator(3, "f", (2,)), "must be a function")
    real = CallableOperator(3, lambda x, y: torch.zeros(x.shape[0]), lambda s: (s[0] // 2,), y_dtype=torch.float64)
    assert real.check_y(torch.tensor([[0.5, 1.0]]), shape).dtype == torch.float64
    one_line(lambda: real.check_y(torch.tensor([[math.inf, 1.0]]), shape), "finite")
