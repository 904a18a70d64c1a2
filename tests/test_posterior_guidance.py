"""Posterior sampling on an enumerable, correlated prior (issue 13): exact posterior guidance, masking inpainting and
the DPS-style approximation against the exact posterior pi(x | y) ∝ pi(x) p(y | x) computed by enumeration
(DESIGN.md sections 3 and 6). The Monte-Carlo floor is the expected TV of n exact draws from pi(x | y),
0.5 sum_x sqrt(2 p (1 - p) / (pi n)); "at the floor" means below ``AT_FLOOR`` times it."""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.guidance import ClassifierGuidance
from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.posterior import (
    ChannelOperator,
    DownsampleOperator,
    DPSLikelihood,
    ExactMeasurementLikelihood,
    InpaintOperator,
    ParityOperator,
    ThinningOperator,
    posterior_sample,
)
from discrete_diffusion.posterior.dps import DPSGuidedProcess
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

K, D = 3, 4
PROCESSES = ["masking", "uniform", "blackout", "matrix"]
AT_FLOOR = 1.5
CONFIGS = all_configurations(K, D)


def correlated_table(seed: int = 0, coupling: float = 1.5) -> torch.Tensor:
    """pi(x) ∝ exp(coupling * #{d: x_d = x_d+1} + noise): strongly correlated neighbours, K^D = 81 entries."""
    g = torch.Generator().manual_seed(seed)
    logits = coupling * (CONFIGS[:, 1:] == CONFIGS[:, :-1]).double().sum(1)
    return torch.softmax(logits + 0.5 * torch.randn(CONFIGS.shape[0], generator=g, dtype=torch.float64), 0)


PI = correlated_table()
OPERATORS = {
    "inpaint": (InpaintOperator(K), torch.tensor([[1, -1, -1, 0]])),
    "channel": (ChannelOperator(K, 0.3), torch.tensor([[0, 2, 2, 1]])),
    "thinning": (ThinningOperator(K, 0.5), torch.tensor([[1, 0, 2, 0]])),
    "downsample": (DownsampleOperator(K, 2), torch.tensor([[3, 1]])),
    "parity": (ParityOperator(K, [(0, 1), (1, 2, 3)], flip=0.1), torch.tensor([[2, 0]])),
}


def make_process(name: str, k: int = K):
    return build_process("matrix", k, rates="birth-death") if name == "matrix" else build_process(name, k)


def schedule_for(name: str):
    return build_schedule("blackout" if name == "blackout" else "log-linear")


def posterior(op, y, table=PI, configs=CONFIGS) -> torch.Tensor:
    """pi(x | y) over all_configurations by enumeration, (K^D,) float64."""
    weights = table * op.log_likelihood(configs, y).exp()
    return weights / weights.sum()


def floor(p: torch.Tensor, n: int) -> float:
    return 0.5 * float((2 * p * (1 - p) / (math.pi * n)).sqrt().sum())


def every_state_and_level(process, num_sites: int = D):
    xt = all_configurations(process.num_values, num_sites)
    lams = torch.tensor([-3.0, -0.7, 0.0, 1.3, 4.0], dtype=torch.float64)
    return xt.repeat(lams.shape[0], 1), lams.repeat_interleave(xt.shape[0]), xt, lams


def guided_rates(process, classifier, prior, xt, lam, gamma=1.0, process_class=None):
    guidance = ClassifierGuidance(process, classifier, 0, gamma)
    if process_class is not None:
        guidance.process = process_class(process, guidance)
    return guidance.process.reverse_rates(xt, guidance.denoiser(prior)(xt, lam), lam)


def assert_rates_close(got, want, where):
    scale = max(1.0, float(want[where].abs().max()))
    assert float((got - want)[where].abs().max()) <= 1e-10 * scale


# ----- exact posterior guidance -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("op_name", list(OPERATORS))
def test_exact_guided_rates_equal_the_posterior_models_rates(name, op_name):
    """For every x_t with p_t(y | x_t) > 0, several noise levels and every one-site move: the prior's rates times
    p_t(y | x') / p_t(y | x) (gamma = 1) equal the reverse rates of the exact posterior model (the oracle of the table
    pi(x) L(x)) to 1e-10, by direct enumeration (levels differing by row) and by the per-level table; gamma = 0 gives
    the prior's rates."""
    process = make_process(name)
    op, y = OPERATORS[op_name]
    prior = OracleDenoiser(process, PI, D, torch.float64)
    exact_post = OracleDenoiser(process, posterior(op, y), D, torch.float64)
    likelihood = ExactMeasurementLikelihood(process, PI, (D,), op, y)
    xs, ls, xt, lams = every_state_and_level(process)
    possible = torch.isfinite(likelihood(xs, ls)[:, 0])
    assert int(possible.sum()) > 40
    want = process.reverse_rates(xs, exact_post(xs, ls), ls)
    assert_rates_close(guided_rates(process, likelihood, prior, xs, ls), want, possible)
    unguided = guided_rates(process, likelihood, prior, xs, ls, gamma=0.0)
    assert torch.equal(unguided, process.reverse_rates(xs, prior(xs, ls), ls))
    assert float((want - unguided)[possible].abs().max()) > 1e-3                 # y does move the rates
    for lam in lams[1::2]:                                                        # one level per call: the table path
        lv = torch.full((xt.shape[0],), float(lam), dtype=torch.float64)
        ok = torch.isfinite(likelihood(xt, lv)[:, 0])
        assert_rates_close(guided_rates(process, likelihood, prior, xt, lv),
                           process.reverse_rates(xt, exact_post(xt, lv), lv), ok)


def test_per_sample_observations_give_each_row_its_own_posterior_rates():
    """y with one row per sample: each row's guided rates are those of its own posterior model."""
    process = make_process("uniform")
    op = ChannelOperator(K, 0.2)
    choices = torch.tensor([[0, 2, 2, 1], [1, 1, 0, 0], [2, 2, 2, 2]])
    xs, ls, _, _ = every_state_and_level(process)
    pick = torch.arange(xs.shape[0]) % 3
    likelihood = ExactMeasurementLikelihood(process, PI, (D,), op, choices[pick])
    got = guided_rates(process, likelihood, OracleDenoiser(process, PI, D, torch.float64), xs, ls)
    for c in range(3):
        rows = pick == c
        model = OracleDenoiser(process, posterior(op, choices[c:c + 1]), D, torch.float64)
        want = process.reverse_rates(xs[rows], model(xs[rows], ls[rows]), ls[rows])
        assert_rates_close(got[rows], want, torch.ones(want.shape[0], dtype=torch.bool))


def sample(method, process_name, sampler_name, steps, op, y, n, seed=1, table=PI, **options):
    process = make_process(process_name)
    prior = OracleDenoiser(process, table, D, torch.float64)
    denoiser = prior if method == "exact-guidance" else SharedLevelOracle(prior, D)
    return posterior_sample(method, process, denoiser, schedule_for(process_name), op, y, (n, D),
                            build_sampler(sampler_name, num_steps=steps), generator=torch.Generator().manual_seed(seed),
                            **options)


@pytest.mark.parametrize("op_name", ["channel", "parity", "downsample", "inpaint"])
def test_exact_simulation_on_masking_reaches_the_posterior(op_name):
    """Exact simulation of the guided masking chain draws pi(x | y) at the Monte-Carlo floor."""
    op, y = OPERATORS[op_name]
    n = 4000
    x = sample("exact-guidance", "masking", "exact", 1, op, y, n)
    target = posterior(op, y)
    tv = total_variation(empirical_distribution(x, K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))


@pytest.mark.parametrize("process_name, sampler_name, steps, op_name", [
    ("uniform", "tau-leaping", 128, "channel"), ("uniform", "tau-leaping", 128, "parity"),
    ("uniform", "euler", 256, "thinning"), ("matrix", "tau-leaping", 128, "thinning"),
    ("matrix", "tau-leaping", 128, "parity")])
def test_leaping_with_many_steps_reaches_the_posterior(process_name, sampler_name, steps, op_name):
    """Tau-leaping at 128 steps / euler at 256 on the guided rates: TV to pi(x | y) at the floor (uniform, matrix)."""
    op, y = OPERATORS[op_name]
    n = 4000
    x = sample("exact-guidance", process_name, sampler_name, steps, op, y, n)
    target = posterior(op, y)
    tv = total_variation(empirical_distribution(x, K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))


def test_blackout_leaping_matches_the_exact_posterior_models_own_leaping():
    """Blackout at 128 steps: the guided chain is as close to pi(x | y) as tau-leaping the exact posterior model itself
    (the leap's time error is the process's, not guidance's): within the floor of it."""
    op, y = OPERATORS["channel"]
    n = 4000
    target = posterior(op, y)
    x = sample("exact-guidance", "blackout", "tau-leaping", 128, op, y, n)
    process = make_process("blackout")
    plain = build_sampler("tau-leaping", num_steps=128).sample(
        process, SharedLevelOracle(OracleDenoiser(process, target, D, torch.float64), D), schedule_for("blackout"),
        (n, D), torch.Generator().manual_seed(1))
    tv, plain_tv = (total_variation(empirical_distribution(s, K), target) for s in (x, plain))
    assert tv < plain_tv + floor(target, n), (tv, plain_tv)


@pytest.mark.parametrize("op_name", ["channel", "thinning"])
def test_blackout_leaping_with_512_steps_reaches_the_posterior(op_name):
    """Blackout tau-leaping at 512 steps: at the floor (its leap error at 128 steps is about twice the floor)."""
    op, y = OPERATORS[op_name]
    n = 4000
    x = sample("exact-guidance", "blackout", "tau-leaping", 512, op, y, n)
    target = posterior(op, y)
    tv = total_variation(empirical_distribution(x, K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))


@pytest.mark.parametrize("process_name, sampler_name, steps",
                         [("uniform", "tau-leaping", 128), ("masking", "exact", 1)])
def test_per_sample_observations_reach_each_rows_posterior(process_name, sampler_name, steps):
    """One observation per sample (two distinct ones, alternating rows): each half reaches its own pi(x | y_r);
    tau-leaping takes them in one run, exact simulation runs once per distinct y."""
    op = ChannelOperator(K, 0.3)
    choices = torch.tensor([[0, 2, 2, 1], [1, 1, 0, 2]])
    n = 4000
    pick = torch.arange(n) % 2
    x = sample("exact-guidance", process_name, sampler_name, steps, op, choices[pick], n)
    for c in range(2):
        target = posterior(op, choices[c:c + 1])
        tv = total_variation(empirical_distribution(x[pick == c], K), target)
        assert tv < AT_FLOOR * floor(target, n // 2), (c, tv, floor(target, n // 2))


# ----- masking inpainting ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler_name, steps", [("exact", 1), ("tau-leaping", 64)])
def test_masking_inpainting_reaches_the_conditional(sampler_name, steps):
    """Revealing the observed sites from the start samples pi(x_unobserved | x_observed) at the floor, with per-sample
    observation patterns (sites {0, 3} observed in even rows, site 1 in odd rows)."""
    op = InpaintOperator(K)
    patterns = torch.tensor([[1, -1, -1, 0], [-1, 2, -1, -1]])
    n = 4000
    pick = torch.arange(n) % 2
    x = sample("infill", "masking", sampler_name, steps, op, patterns[pick], n)
    for c in range(2):
        target = posterior(op, patterns[c:c + 1])
        rows = x[pick == c]
        assert bool(((patterns[c] < 0) | (rows == patterns[c])).all())
        tv = total_variation(empirical_distribution(rows, K), target)
        assert tv < AT_FLOOR * floor(target, n // 2), (c, tv, floor(target, n // 2))


# ----- the DPS-style approximation --------------------------------------------------------------------------------
def independent_table(k: int, sites: int, seed: int = 3) -> torch.Tensor:
    """A product prior prod_d p_d(x_d) over all_configurations(k, sites)."""
    g = torch.Generator().manual_seed(seed)
    marginals = torch.softmax(torch.randn(sites, k, generator=g, dtype=torch.float64), -1)
    configs = all_configurations(k, sites)
    return marginals[torch.arange(sites), configs].prod(1)


@pytest.mark.parametrize("name", PROCESSES)
def test_dps_is_exact_for_one_site_and_for_independent_sites(name):
    """DPS-style guided rates equal the exact posterior model's to 1e-10 when x0's sites are independent given x_t:
    one site (K = 5, the channel), and a product prior over 3 sites, also for the coupled downsample and parity."""
    cases = [(5, 1, ChannelOperator(5, 0.3), torch.tensor([[3]])),
             (3, 3, DownsampleOperator(3, 3), torch.tensor([[4]])),
             (3, 3, ParityOperator(3, [(0, 2)], flip=0.2), torch.tensor([[1]])),
             (3, 3, ThinningOperator(3, 0.6), torch.tensor([[1, 0, 2]]))]
    for k, sites, op, y in cases:
        process = make_process(name, k)
        table = independent_table(k, sites)
        prior = OracleDenoiser(process, table, sites, torch.float64)
        xs, ls, _, _ = every_state_and_level(process, sites)
        model = OracleDenoiser(process, posterior(op, y, table, all_configurations(k, sites)), sites, torch.float64)
        exact = ExactMeasurementLikelihood(process, table, (sites,), op, y)
        possible = torch.isfinite(exact(xs, ls)[:, 0])
        got = guided_rates(process, DPSLikelihood(process, prior, op, y), prior, xs, ls, process_class=DPSGuidedProcess)
        assert_rates_close(got, process.reverse_rates(xs, model(xs, ls), ls), possible)


def test_dps_rates_differ_from_the_posteriors_on_the_correlated_table():
    process = make_process("uniform")
    op, y = OPERATORS["downsample"]
    prior = OracleDenoiser(process, PI, D, torch.float64)
    xs, ls, _, _ = every_state_and_level(process)
    want = process.reverse_rates(xs, OracleDenoiser(process, posterior(op, y), D, torch.float64)(xs, ls), ls)
    got = guided_rates(process, DPSLikelihood(process, prior, op, y), prior, xs, ls)
    assert float((got - want).abs().max()) > 0.1


def test_dps_samples_the_posterior_of_an_independent_prior():
    """With a product prior DPS is exact, final tilted draw included: tau-leaping at the floor."""
    table = independent_table(K, D)
    op, y = OPERATORS["thinning"]
    n = 4000
    x = sample("dps", "uniform", "tau-leaping", 64, op, y, n, table=table)
    target = posterior(op, y, table)
    tv = total_variation(empirical_distribution(x, K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))


@pytest.mark.parametrize("process_name, op_name", [("uniform", "downsample"), ("masking", "downsample"),
                                                   ("uniform", "thinning")])
def test_dps_is_biased_on_the_correlated_table(process_name, op_name):
    """On the correlated table DPS's TV to pi(x | y) stays far above the floor while exact guidance with the same
    sampler (tau-leaping, 64 steps) and seed is near it: DPS is an approximation, not a posterior sampler."""
    op, y = OPERATORS[op_name]
    n = 4000
    target = posterior(op, y)
    dps_x = sample("dps", process_name, "tau-leaping", 64, op, y, n)
    dps_tv = total_variation(empirical_distribution(dps_x, K), target)
    exact_tv = total_variation(
        empirical_distribution(sample("exact-guidance", process_name, "tau-leaping", 64, op, y, n), K), target)
    assert dps_tv > 2.5 * floor(target, n) and dps_tv > exact_tv + 0.03, (dps_tv, exact_tv, floor(target, n))


# ----- the dispatcher --------------------------------------------------------------------------------------------
def test_posterior_sample_refuses_combinations_that_do_not_apply():
    masking, uniform = make_process("masking"), make_process("uniform")
    prior = OracleDenoiser(masking, PI, D, torch.float64)
    schedule = schedule_for("masking")
    channel, y = OPERATORS["channel"]
    tau = build_sampler("tau-leaping", num_steps=4)

    def call(method, process=masking, denoiser=prior, op=channel, obs=y, sampler=tau, shape=(5, D), **options):
        return posterior_sample(method, process, denoiser, schedule, op, obs, shape, sampler, **options)

    cases = [
        (lambda: call("langevin"), "unknown posterior method 'langevin'"),
        (lambda: call("split-gibbs", op=OPERATORS["parity"][0], obs=OPERATORS["parity"][1]), "couples sites"),
        (lambda: call("split-gibbs", langevin=1), "takes the options"),
        (lambda: call("infill"), "inpaint measurement only"),
        (lambda: call("infill", uniform, OracleDenoiser(uniform, PI, D), InpaintOperator(K), OPERATORS["inpaint"][1]),
         "exact for masking only"),
        (lambda: call("exact-guidance", denoiser=lambda xt, lam: prior(xt, lam)), "needs p\\(x0 \\| x_t\\) jointly"),
        (lambda: call("exact-guidance", sampler=build_sampler("bridge", num_steps=4)), "use one of"),
        (lambda: call("exact-guidance", uniform, OracleDenoiser(uniform, PI, D), sampler=build_sampler("exact")),
         "use one of \\['tau-leaping', 'euler'\\]"),
        (lambda: call("dps", sampler=build_sampler("exact")), "use one of \\['tau-leaping', 'euler'\\]"),
        (lambda: call("dps", sampler=build_sampler("tau-leaping", num_steps=4, temperature=0.5)), "temperature"),
        (lambda: call("dps", beta=2.0), "takes the options \\['gamma', 'mc_samples'\\]"),
        (lambda: call("dps", gamma=-1.0), "finite number >= 0"),
        (lambda: call("dps", mc_samples=0), "mc_samples"),
        (lambda: call("exact-guidance", obs=y.expand(3, -1)), "y has 3 rows but 5 samples"),
        (lambda: call("exact-guidance", op=ChannelOperator(4, 0.1)), "K = 4 values per site"),
        (lambda: call("exact-guidance", obs=y[:, :3]), "must have shape"),
        (lambda: call("exact-guidance", op=OPERATORS["parity"][0], obs=OPERATORS["parity"][1], shape=(5, 5)),
         "has 4 sites but the samples have 5"),
        (lambda: call("exact-guidance", denoiser=OracleDenoiser(uniform, PI, D)), "built for process 'uniform'"),
    ]
    blocked = PI.clone()
    blocked[CONFIGS[:, 0] == 2] = 0
    cases.append((lambda: call("exact-guidance", denoiser=OracleDenoiser(masking, blocked, D),
                               op=InpaintOperator(K), obs=torch.tensor([[2, -1, -1, -1]])),
                  "impossible under the prior"))
    for run, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            run()
        assert "\n" not in str(info.value)


def test_dps_with_a_network_prior_on_image_sites_keeps_hard_observations():
    """DPS with a (random) network prior on (2, 3) image sites and one inpainting pattern per sample: a move to a value
    the observation rules out has weight 0 and the final draw is tilted, so every sample agrees with its y; the
    thinning channel under the uniform process runs with the same network class."""
    from discrete_diffusion.denoiser import NetworkDenoiser
    from discrete_diffusion.nn import MLP
    from discrete_diffusion.posterior import inpaint_observation

    k, sites, n = 4, (2, 3), 16
    g = torch.Generator().manual_seed(0)
    for name, op in (("masking", InpaintOperator(k)), ("uniform", ThinningOperator(k, 0.5))):
        process = make_process(name, k)
        torch.manual_seed(0)
        net = MLP(process.num_values, k, sites, hidden=16, depth=1)
        torch.nn.init.normal_(net.output_proj.weight, std=1.0)
        denoiser = NetworkDenoiser(net, process, "logits")
        truth = torch.randint(0, k, (n, *sites), generator=g)
        y = inpaint_observation(truth, torch.rand(truth.shape, generator=g) < 0.5) if name == "masking" else \
            op.simulate(truth, g)
        with torch.no_grad():
            x = posterior_sample("dps", process, denoiser, schedule_for(name), op, y, (n, *sites),
                                 build_sampler("tau-leaping", num_steps=8), generator=torch.Generator().manual_seed(1))
        assert x.shape == (n, *sites) and int(x.min()) >= 0 and int(x.max()) < k
        assert bool(torch.isfinite(op.log_likelihood(x, y)).all())


def test_exact_guidance_on_image_sites():
    """Samples of shape (B, 2, 2) (the table over the 4 flattened sites) with 2-D block sums: at the floor."""
    op, y = DownsampleOperator(K, (2, 1)), torch.tensor([[[3, 1]]])
    n = 4000
    process = make_process("masking")
    x = posterior_sample("exact-guidance", process, OracleDenoiser(process, PI, D, torch.float64),
                         schedule_for("masking"), op, y, (n, 2, 2), build_sampler("exact"),
                         generator=torch.Generator().manual_seed(2))
    assert x.shape == (n, 2, 2)
    target = posterior(op, y, configs=CONFIGS.reshape(-1, 2, 2))
    tv = total_variation(empirical_distribution(x.reshape(n, D), K), target)
    assert tv < AT_FLOOR * floor(target, n), (tv, floor(target, n))
