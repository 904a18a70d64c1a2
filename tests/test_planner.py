"""The trained DDPD planner for uniform noise: its target, its training, the ddpd sampler driven by it, and
``ddiff train-planner`` / ``ddiff sample --planner``."""

from __future__ import annotations

import math

import pytest
import torch
from test_sampler_suite import D, K, N, _gen, _table

from discrete_diffusion.baselines.fit import FitSettings
from discrete_diffusion.nn import MLP
from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    configuration_index,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.planner import (
    NoisePlanner,
    denoiser_planner,
    draw_noise_indicators,
    fit_planner,
    planner_bits_per_site,
)
from discrete_diffusion.processes import MaskingProcess, UniformProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

TINY_UNIFORM = ["process.name=uniform", "process.schedule=log-linear", "train.steps=6", "train.batch_size=8",
                "train.eval_every=3", "train.checkpoint_every=3", "train.sample_every=100", "train.warmup_steps=2",
                "train.eval_t_samples=1", "train.device=cpu", "model.base_channels=16", "model.channel_mults=[1]",
                "sample.steps=5", "evaluate.t_samples=1"]


def test_sample_marginal_with_noise_draws_x0_or_a_uniform_value():
    proc, n = UniformProcess(5), 40_000
    x0 = torch.full((n, 3), 2)
    lam = torch.full((n,), 0.3)
    xt, is_noise = proc.sample_marginal_with_noise(x0, lam, _gen(0))
    assert torch.equal(xt, proc.sample_marginal(x0, lam, _gen(0)))      # the same draws as the plain marginal
    assert torch.equal(xt[~is_noise], x0[~is_noise])
    rate, expected = is_noise.double().mean().item(), 1 - torch.sigmoid(torch.tensor(0.3)).item()
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / (3 * n)), (rate, expected)
    freq = torch.bincount(xt[is_noise], minlength=5).double() / int(is_noise.sum())
    assert float((freq - 0.2).abs().max()) < 0.01, freq                 # noise is uniform, x0 included


def test_noise_probability_is_the_frequency_of_noise_given_xt():
    """The BCE target: P(z = 1 | x_t), counted on forward draws, is what noise_probability derives from the
    exact denoiser (the planner the ddpd sampler uses by default)."""
    proc, n = UniformProcess(K), 400_000
    oracle = OracleDenoiser(proc, _table(K, D, seed=1), D)
    x0 = oracle.sample(n, _gen(2))
    lam = torch.full((n,), 0.2)
    xt, is_noise = proc.sample_marginal_with_noise(x0, lam, _gen(3))
    index = configuration_index(xt, K)
    counts = torch.bincount(index, minlength=K**D).double()
    noisy = torch.stack([torch.bincount(index, weights=is_noise[:, d].double(), minlength=K**D) for d in range(D)], 1)
    configs = all_configurations(K, D)
    pi = proc.noise_probability(configs, oracle(configs, lam[:K**D]), lam[:K**D])
    se = (pi * (1 - pi) / counts[:, None]).sqrt()
    z = ((noisy / counts[:, None] - pi) / se).abs()
    assert float(z.max()) < 4.5, float(z.max())
    wrong = proc.noise_probability(configs, oracle(configs, lam[:K**D] + 0.5), lam[:K**D])   # a control
    assert float(((noisy / counts[:, None] - wrong) / se).abs().max()) > 10


def _peaked_oracle() -> OracleDenoiser:
    """A table with most mass on a few configurations (top 0.36, 0.26, 0.18), so that x_t says much about
    which sites are noise (with the near-uniform table of test_sampler_suite it says little)."""
    probs = torch.softmax(3 * torch.randn(K**D, generator=_gen(1), dtype=torch.float64), 0)
    return OracleDenoiser(UniformProcess(K), probs, D)


def _ddpd_tv(planner, oracle: OracleDenoiser, num_steps: int = 64, seed: int = 1) -> float:
    sampler = build_sampler("ddpd", num_steps=num_steps, planner=planner)
    x = sampler.sample(oracle.process, SharedLevelOracle(oracle, D), build_schedule("log-linear"), (N, D),
                       generator=_gen(seed))
    return total_variation(empirical_distribution(x, K), oracle.log_probs.exp())


@pytest.fixture(scope="module")
def trained_planner(tmp_path_factory) -> tuple[NoisePlanner, OracleDenoiser]:
    torch.manual_seed(0)
    proc = UniformProcess(K)
    oracle = _peaked_oracle()
    planner = NoisePlanner(MLP(K, 1, site_shape=(D,), hidden=64, depth=2), proc)
    settings = FitSettings(steps=1000, batch_size=512, lr=3e-3, warmup_steps=20, ema_decay=0.99, eval_every=500)
    train, val = oracle.sample(20_000, _gen(4)), oracle.sample(2000, _gen(5))
    fit_planner(planner, build_schedule("log-linear"), train, val, settings,
                tmp_path_factory.mktemp("planner") / "planner.safetensors")
    return planner, oracle


def test_trained_planner_reaches_the_exact_planners_cross_entropy(trained_planner):
    """Measured: trained 0.587, exact 0.586, alpha-only 0.725 bits/site (1000 steps, 4 s)."""
    planner, oracle = trained_planner
    proc, schedule = oracle.process, build_schedule("log-linear")
    val = oracle.sample(4000, _gen(6))
    trained = planner_bits_per_site(planner, proc, schedule, val, seed=7)
    exact = planner_bits_per_site(denoiser_planner(proc, oracle), proc, schedule, val, seed=7)
    alpha_only = planner_bits_per_site(lambda xt, lam: 1 - torch.sigmoid(lam.double())[:, None].expand(xt.shape),
                                       proc, schedule, val, seed=7)            # knows t, not x_t
    assert trained < exact + 0.01, (trained, exact)
    assert alpha_only > exact + 0.05, (alpha_only, exact)                      # x_t carries information


def test_ddpd_with_the_trained_planner_converges_to_the_table(trained_planner):
    """Measured TV (N = 20k, 64 steps, seeds 1-3): trained planner 0.013 / 0.009 / 0.009 (a 500-step planner:
    0.018-0.020), exact planner 0.008, a planner that knows t but not x_t 0.25; the floor is 0.008."""
    planner, oracle = trained_planner
    floor = sum(total_variation(empirical_distribution(oracle.sample(N, _gen(100 + i)), K), oracle.log_probs.exp())
                for i in range(4)) / 4
    trained, exact = _ddpd_tv(planner, oracle), _ddpd_tv(denoiser_planner(oracle.process, oracle), oracle)
    alpha_only = _ddpd_tv(lambda xt, lam: 1 - torch.sigmoid(lam.double())[:, None].expand(xt.shape), oracle)
    assert trained < floor + 0.012 and exact < floor + 0.006, (trained, exact, floor)
    assert alpha_only > floor + 0.1, (alpha_only, floor)                        # the planner's x_t input matters


def test_ddpd_with_a_masked_denoiser_converges_and_counts_its_calls():
    """DDPD's pairing: planner + a masked-diffusion denoiser with the sites drawn as noise masked. Measured TV at
    64 steps, seeds 1-2: 0.0073 / 0.0081 (floor 0.0077); with the masked posterior of another table 0.46."""
    oracle = _peaked_oracle()
    probs = oracle.log_probs.exp()
    floor = sum(total_variation(empirical_distribution(oracle.sample(N, _gen(100 + i)), K), probs)
                for i in range(4)) / 4
    planner = denoiser_planner(oracle.process, oracle)

    def tv(masked_probs: torch.Tensor) -> tuple[float, int]:
        sampler = build_sampler("ddpd", num_steps=64, planner=planner,
                                masked_denoiser=OracleDenoiser(MaskingProcess(K), masked_probs, D))
        x = sampler.sample(oracle.process, SharedLevelOracle(oracle, D), build_schedule("log-linear"), (N, D),
                           generator=_gen(1))
        return total_variation(empirical_distribution(x, K), probs), sampler.network_calls

    paired, calls = tv(probs)
    assert paired < floor + 0.006, (paired, floor)
    assert calls == 2 * 64                   # the planner and the masked denoiser; the uniform denoiser is unused
    wrong, _ = tv(_table(K, D, seed=2))
    assert wrong > floor + 0.05, wrong
    with pytest.raises(ValueError, match="masked_denoiser applies to uniform noise"):
        build_sampler("ddpd", num_steps=2, masked_denoiser=oracle).sample(
            MaskingProcess(K), oracle, build_schedule("log-linear"), (2, D))


def test_draws_follow_the_schedule_and_a_planner_needs_uniform_noise():
    proc, schedule = UniformProcess(K), build_schedule("log-linear")
    _, is_noise, lam = draw_noise_indicators(proc, schedule, torch.zeros(20_000, D, dtype=torch.long), _gen(8))
    assert abs(is_noise.double().mean().item() - (1 - torch.sigmoid(lam).mean().item())) < 0.01
    with pytest.raises(ValueError, match="uniform noise"):
        NoisePlanner(MLP(K + 1, 1, site_shape=(D,), hidden=8, depth=1), MaskingProcess(K))


# ----- the command line --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory):
    from discrete_diffusion.cli import main

    run = tmp_path_factory.mktemp("planner") / "run"
    assert main(["train", "--out", str(run), "--no-progress", *TINY_UNIFORM]) == 0
    assert main(["train-planner", str(run), "train.steps=4", "train.eval_every=2", "--no-progress"]) == 0
    return run


def test_cli_trains_a_planner_and_samples_with_it(uniform_run, ddiff):
    import json

    metrics = json.loads((uniform_run / "planner" / "metrics.json").read_text())
    assert metrics["best_step"] in (2, 4) and [row[0] for row in metrics["val_curve"]] == [2, 4]
    assert 0 < metrics["val_bce_bits_per_site"] < 5 and 0 < metrics["denoiser_planner_val_bce_bits_per_site"] < 5
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--planner", uniform_run / "planner", "--num", "4",
                   "--steps", "3", "--no-progress")
    assert result.rc == 0, result
    record = json.loads((uniform_run / "samples" / "ddpd-planner_3steps_seed0.json").read_text())
    assert record["sampler"]["planner"] == str((uniform_run / "planner").resolve())


def _masking_run(tmp_path_factory, *extra: str):
    from discrete_diffusion.cli import main

    run = tmp_path_factory.mktemp("masking") / "run"
    overrides = [o for o in TINY_UNIFORM if not o.startswith("process.name")] + ["process.name=masking", *extra]
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    return run


def test_cli_samples_with_a_planner_and_a_masked_denoiser(uniform_run, trained_run, ddiff, tmp_path_factory):
    import json

    masking = _masking_run(tmp_path_factory)
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--planner", uniform_run / "planner",
                   "--masked-denoiser", masking, "--num", "4", "--steps", "3", "--no-progress")
    assert result.rc == 0, result
    record = json.loads((uniform_run / "samples" / "ddpd-planner-masked_3steps_seed0.json").read_text())
    assert record["sampler"]["masked_denoiser"] == str(masking.resolve())
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--masked-denoiser", trained_run, "--num", "2",
                   "--no-progress")
    assert result.rc == 2 and "pairs a uniform-noise run with a masking run" in result.err, result
    other_data = _masking_run(tmp_path_factory, "data.split_seed=1")
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--masked-denoiser", other_data, "--num", "2",
                   "--no-progress")
    assert result.rc == 2 and "trained on other data" in result.err, result
    result = ddiff("sample", uniform_run, "--masked-denoiser", masking, "--num", "2", "--no-progress")
    assert result.rc == 2 and "--masked-denoiser is an option of the ddpd sampler" in result.err, result


def test_cli_planner_errors(uniform_run, trained_run, ddiff, tmp_path):
    result = ddiff("train-planner", trained_run, "--out", tmp_path / "p", "--no-progress")
    assert result.rc == 2 and "uniform noise" in result.err, result                    # a Blackout run
    for override in ("data.levels=4", "sample.steps=3"):
        result = ddiff("train-planner", uniform_run, override, "--out", tmp_path / "p", "--no-progress")
        assert result.rc == 2 and "override only model.* and train.*" in result.err, result
    result = ddiff("sample", uniform_run, "--planner", uniform_run / "planner", "--num", "2", "--no-progress")
    assert result.rc == 2 and "--sampler ddpd" in result.err, result
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--planner", tmp_path, "--num", "2", "--no-progress")
    assert result.rc == 2 and "not a planner directory" in result.err, result
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((uniform_run / "planner" / "config.yaml").read_text())
    (broken / "planner.safetensors").write_bytes(b"\x00" * 5)
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--planner", broken, "--num", "2", "--no-progress")
    assert result.rc == 2 and "cannot read planner weights" in result.err, result
    (broken / "config.yaml").write_text((uniform_run / "planner" / "config.yaml").read_text().replace(
        "base_channels: 16", "base_channels: 8"))
    (broken / "planner.safetensors").write_bytes((uniform_run / "planner" / "planner.safetensors").read_bytes())
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--planner", broken, "--num", "2", "--no-progress")
    assert result.rc == 2 and "do not match its config.yaml" in result.err, result
    (broken / "config.yaml").write_text((uniform_run / "planner" / "config.yaml").read_text().replace(
        "split_seed: 0", "split_seed: 1"))
    result = ddiff("sample", uniform_run, "--sampler", "ddpd", "--planner", broken, "--num", "2", "--no-progress")
    assert result.rc == 2 and "trained for another run" in result.err, result
