"""Classifier (predictor) guidance on the reverse rates (issue 12 item 3; docs/guidance.md "Classifier guidance"),
checked against the exact noisy classifier p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0) of a joint table pi(x, c)
and the exact class-conditional oracle (DESIGN.md sections 3 and 6)."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion.guidance import ClassifierGuidance, classifier_guided_sample
from discrete_diffusion.oracle import (
    ConditionalOracle,
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

D, C = 2, 3
PROCESSES = ["masking", "uniform", "blackout", "matrix"]


def make_process(name: str):
    if name == "matrix":
        return build_process("matrix", 3, rates="birth-death")
    return build_process(name, 3)


def joint_table(process, seed: int = 0) -> torch.Tensor:
    """A random joint pi(x, c) with full support, classes clearly separated."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(process.num_states ** D, C, generator=g, dtype=torch.float64) ** 3 + 1e-3


def every_state_and_level(process):
    xt = all_configurations(process.num_values, D)
    lams = torch.tensor([-3.0, -0.7, 0.0, 1.3, 4.0], dtype=torch.float64)
    return xt.repeat(lams.shape[0], 1), lams.repeat_interleave(xt.shape[0])


def schedule_for(name: str):
    return build_schedule("blackout" if name == "blackout" else "log-linear")


@pytest.mark.parametrize("name", PROCESSES)
def test_guided_rates_at_gamma_1_equal_the_exact_conditional_model(name):
    """For every x_t, noise level and one-site move y: R(x -> y) p_t(c | y) / p_t(c | x) with the exact noisy
    classifier equals the exact conditional model's rate to 1e-10; gamma = 0 gives the unguided rates exactly."""
    process = make_process(name)
    joint = joint_table(process)
    oracle = ConditionalOracle(process, joint, D)
    marginal = OracleDenoiser(process, joint.sum(1), D, torch.float64)
    xt, lam = every_state_and_level(process)
    unguided = process.reverse_rates(xt, marginal(xt, lam), lam)
    for c in range(C):
        want = process.reverse_rates(xt, OracleDenoiser(process, joint[:, c], D, torch.float64)(xt, lam), lam)
        for gamma, target in ((1.0, want), (0.0, unguided)):
            guidance = ClassifierGuidance(process, oracle.noisy_classifier(), c, gamma)
            got = guidance.process.reverse_rates(xt, guidance.denoiser(marginal)(xt, lam), lam)
            assert (got - target).abs().max() <= 1e-10 * max(1.0, float(target.abs().max()))
        assert (want - unguided).abs().max() > 1e-3          # the classes do differ


def guided_samples(name: str, sampler_name: str, steps: int, gamma: float, label: int, n: int, seed: int,
                   form: str = "exact", table_seed: int = 5):
    process = make_process(name)
    oracle = ConditionalOracle(process, joint_table(process, seed=table_seed), D)
    sampler = build_sampler(sampler_name, num_steps=steps)
    x = classifier_guided_sample(sampler, process, SharedLevelOracle(oracle.denoiser(C), D), schedule_for(name),
                                 (n, D), oracle.noisy_classifier(), label, gamma, form,
                                 torch.Generator().manual_seed(seed))
    return oracle, x


def mc_floor(n: int, states: int = 3) -> float:
    """About 3x the expected TV of n exact draws over states^D cells."""
    return 3 * 0.5 * (states ** D / (2 * torch.pi * n)) ** 0.5


def test_exact_simulation_masking_reaches_conditional_table():
    """Exact simulation (masking, exact classifier, gamma = 1) reaches pi(x | c) at the Monte-Carlo floor;
    gamma = 0 reaches pi(x)."""
    n = 4000
    for gamma in (1.0, 0.0):
        oracle, x = guided_samples("masking", "exact", 1, gamma, 1, n, 11)
        table = oracle.table(1) if gamma == 1 else oracle.table()
        assert total_variation(empirical_distribution(x, 3), table) < mc_floor(n)


@pytest.mark.parametrize("name", PROCESSES)
def test_tau_leaping_converges_to_conditional_table(name):
    """Tau-leaping with exact classifier guidance at gamma = 1: its TV to pi(x | c) shrinks with the steps; at 64
    steps (Blackout 128) it is within the Monte-Carlo floor of the exact conditional model's own leaping TV (the
    leap's time error is the process's, not guidance's), and at the floor itself for masking and uniform. For
    masking and Blackout, whose leaps use the same random draws, it draws what the conditional model draws."""
    n = 3000
    tvs = []
    for steps in ((8, 128) if name == "blackout" else (2, 64)):
        oracle, x = guided_samples(name, "tau-leaping", steps, 1.0, 0, n, 3)
        tvs.append(total_variation(empirical_distribution(x, 3), oracle.table(0)))
    plain = build_sampler("tau-leaping", num_steps=steps).sample(
        oracle.process, SharedLevelOracle(oracle.denoiser(0), D), schedule_for(name), (n, D),
        torch.Generator().manual_seed(3))
    if name in ("masking", "blackout"):
        assert (x == plain).all(1).double().mean() > 0.99
    plain_tv = total_variation(empirical_distribution(plain, 3), oracle.table(0))
    assert tvs[1] < tvs[0] and tvs[1] < plain_tv + mc_floor(n), (tvs, plain_tv)
    if name in ("masking", "uniform"):
        assert tvs[1] < mc_floor(n), tvs


def test_euler_gamma_0_is_the_unconditional_table():
    oracle, x = guided_samples("uniform", "euler", 64, 0.0, 2, 4000, 4)
    assert total_variation(empirical_distribution(x, 3), oracle.table()) < mc_floor(4000)


@pytest.mark.parametrize("name", ["masking", "uniform", "blackout"])
def test_class_likelihood_rises_with_gamma(name):
    """The average log p(c | x) of the samples rises with gamma (0 < 1 < 3)."""
    scores = []
    for gamma in (0.0, 1.0, 3.0):
        oracle, x = guided_samples(name, "tau-leaping", 32, gamma, 2, 3000, 5, table_seed=7)
        scores.append(float(oracle.class_log_probs(x)[:, 2].mean()))
    assert scores[0] < scores[1] < scores[2], scores


class LinearClassifier:
    """log-scores linear in the one-hot input, W (C, D, M): the Taylor form is exact for it."""

    num_classes = C

    def __init__(self, num_values: int, seed: int = 0) -> None:
        self.weight = torch.randn(C, D, num_values, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def onehot_log_probs(self, onehot, lam):
        return torch.einsum("bdm,cdm->bc", onehot.double(), self.weight)

    def __call__(self, xt, lam):
        return self.onehot_log_probs(torch.nn.functional.one_hot(xt, self.weight.shape[-1]).double(), lam)


@pytest.mark.parametrize("name", ["masking", "uniform", "matrix"])
def test_taylor_form_is_exact_for_a_linear_classifier(name):
    """On a classifier linear in the one-hot input the Taylor weights equal the exact ones to 1e-10; on the exact
    noisy classifier they differ (first order only)."""
    process = make_process(name)
    xt, lam = every_state_and_level(process)
    linear = LinearClassifier(process.num_values)
    exact = ClassifierGuidance(process, linear, 1, 2.0, "exact").log_weights(xt, lam)
    taylor = ClassifierGuidance(process, linear, 1, 2.0, "taylor").log_weights(xt, lam)
    assert (exact - taylor).abs().max() <= 1e-10 and exact.abs().max() > 0.1
    oracle = ConditionalOracle(process, joint_table(process), D).noisy_classifier()
    exact = ClassifierGuidance(process, oracle, 1, 1.0, "exact").log_weights(xt, lam)
    taylor = ClassifierGuidance(process, oracle, 1, 1.0, "taylor").log_weights(xt, lam)
    assert (exact - taylor).abs().max() > 1e-3


def test_bad_input_one_line_errors():
    process = make_process("masking")
    oracle = ConditionalOracle(process, joint_table(process), D)
    classifier = oracle.noisy_classifier()
    schedule, den = schedule_for("masking"), oracle.denoiser(C)
    with pytest.raises(ValueError, match=r"unknown class 3: this model has classes 0..2"):
        ClassifierGuidance(process, classifier, 3, 1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        ClassifierGuidance(process, classifier, 0, -1.0)
    with pytest.raises(ValueError, match="guidance form must be one of"):
        ClassifierGuidance(process, classifier, 0, 1.0, "second-order")
    for name in ("bridge", "theta-trapezoidal"):
        with pytest.raises(ValueError, match="use tau-leaping or euler"):
            classifier_guided_sample(build_sampler(name, num_steps=4), process, den, schedule, (5, D), classifier,
                                     0, 1.0)
    with pytest.raises(ValueError, match="cache, temperature"):
        classifier_guided_sample(build_sampler("tau-leaping", num_steps=4, temperature=0.5), process, den, schedule,
                                 (5, D), classifier, 0, 1.0)
    uniform = make_process("uniform")
    with pytest.raises(ValueError, match="use tau-leaping or euler"):
        classifier_guided_sample(build_sampler("exact-thinning"), uniform, den, schedule, (5, D), classifier, 0, 1.0)
    guided = ClassifierGuidance(process, classifier, 0, 1.0).process
    xt, lam = torch.full((2, D), 3), torch.zeros(2)
    with pytest.raises(ValueError, match="lost its per-move weights"):
        guided.reverse_rates(xt, den(xt, lam), lam)
    with pytest.raises(ValueError, match="bypasses"):
        guided.bridge_step(xt, den(xt, lam), lam, lam + 1)
    blackout = make_process("blackout")
    with pytest.raises(ValueError, match="use tau-leaping or euler"):
        classifier_guided_sample(build_sampler("exact"), blackout, den, schedule, (5, D), classifier, 0, 1.0)
    with pytest.raises(ValueError, match="taylor guidance form needs"):
        guided = ClassifierGuidance(blackout, ConditionalOracle(blackout, joint_table(blackout), D).noisy_classifier(),
                                    0, 1.0, "taylor")
        guided.log_weights(torch.zeros(2, D, dtype=torch.long), torch.zeros(2))


# ----- the trained classifier and the command line ---------------------------------------------------------------
RUN = ["data.name=array", "process.name=masking", "model.backbone=mlp", "model.hidden=32", "model.depth=1",
       "model.dropout=0.0", "train.steps=6", "train.batch_size=32", "train.eval_every=3", "train.checkpoint_every=6",
       "train.sample_every=6", "train.warmup_steps=1", "train.eval_t_samples=1", "train.device=cpu",
       "sample.steps=4", "evaluate.t_samples=1"]


def labelled_array(path, seed: int = 0, n: int = 600):
    """Two classes over 6 sites with 4 values: class 0 uses values {0, 1}, class 1 {2, 3} (one in ten flipped)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = 2 * y[:, None] + rng.integers(0, 2, (n, 6))
    flip = rng.random((n, 6)) < 0.1
    x = np.where(flip, rng.integers(0, 4, (n, 6)), x)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    from discrete_diffusion.cli import main

    root = tmp_path_factory.mktemp("clf")
    data = labelled_array(root / "data.npz")
    run = root / "run"
    assert main(["train", "--out", str(run), "--no-progress", *RUN, f"data.path={data}"]) == 0
    clf = root / "classifier"
    assert main(["train-classifier", str(run), "train.steps=150", "train.eval_every=50", "train.lr=3e-3",
                 "--out", str(clf), "--no-progress"]) == 0
    return run, clf, root


def test_trained_classifier_accuracy_and_cli_sampling(labelled_run, ddiff, tmp_path):
    """A tiny classifier reaches > 90% validation accuracy at low noise (t = 0.1);
    `ddiff sample --class 1 --classifier DIR --guidance 3` (exact
    and taylor forms) pulls samples towards class 1's values {2, 3} against --guidance 0."""
    import json

    import numpy as np

    run, clf, _ = labelled_run
    metrics = json.loads((clf / "metrics.json").read_text())
    assert metrics["at_noise_levels"]["t=0.1"]["val_accuracy"] > 0.9, metrics["at_noise_levels"]
    assert {"config.yaml", "classifier.safetensors", "data.json", "metrics.json"} <= {p.name for p in clf.iterdir()}
    means = {}
    for form in ("exact", "taylor"):
        res = ddiff("sample", run, "--sampler", "tau-leaping", "--steps", "8", "--class", "1", "--classifier", clf,
                    "--guidance", "3", "--guidance-form", form, "--num", "64", "--out", tmp_path, "--no-progress")
        assert res.rc == 0, res.err
        stem = "tau-leaping_8steps_seed0_class1_clf" + ("-taylor" if form == "taylor" else "") + "_g3"
        means[form] = float(np.load(tmp_path / f"{stem}.npy").mean())
        assert '"guidance_form": "%s"' % form in (tmp_path / f"{stem}.json").read_text()
    res = ddiff("sample", run, "--sampler", "tau-leaping", "--steps", "8", "--class", "1", "--classifier", clf,
                "--guidance", "0", "--num", "64", "--out", tmp_path, "--no-progress")
    assert res.rc == 0, res.err
    unguided = float(np.load(tmp_path / "tau-leaping_8steps_seed0_class1_clf_g0.npy").mean())
    assert means["exact"] > unguided + 0.3 and means["taylor"] > unguided + 0.3, (means, unguided)


def test_cli_bad_input_one_line(labelled_run, ddiff, tmp_path):
    """Unknown class, --classifier without --class, with the bridge sampler, a classifier of other data, a folder
    that is no classifier: one-line errors."""
    from discrete_diffusion.cli import main

    run, clf, root = labelled_run
    base = ("sample", run, "--steps", "4", "--num", "4", "--out", tmp_path, "--no-progress")
    cases = [((*base, "--sampler", "tau-leaping", "--class", "2", "--classifier", clf), "unknown class 2"),
             ((*base, "--sampler", "tau-leaping", "--classifier", clf), "--classifier needs --class"),
             ((*base, "--sampler", "bridge", "--class", "1", "--classifier", clf), "use tau-leaping or euler"),
             ((*base, "--sampler", "tau-leaping", "--class", "1", "--classifier", tmp_path), "not a classifier"),
             ((*base, "--sampler", "tau-leaping", "--class", "1"), "--classifier DIR"),
             (("train-classifier", run, "data.split_seed=3", "--out", tmp_path / "x"), "override only model")]
    other = root / "other"
    data = labelled_array(root / "other.npz", seed=1)
    assert main(["train", "--out", str(other), "--no-progress", *RUN, "train.steps=1", f"data.path={data}"]) == 0
    cases.append(((*base[:1], other, *base[2:], "--sampler", "tau-leaping", "--class", "1", "--classifier", clf),
                  "another run|data"))
    for args, message in cases:
        res = ddiff(*args)
        assert res.rc == 2 and len(res.err.strip().splitlines()) == 1, (args, res.err)
        assert __import__("re").search(message, res.err), (message, res.err)


def test_load_classifier_refuses_tampered_folders(labelled_run, tmp_path):
    """Changed data checksums, non-finite weights, weights of another shape, a truncated file: one-line ValueErrors."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from discrete_diffusion.guidance.classifier_train import load_classifier
    from discrete_diffusion.pipeline import load_run

    run_dir, clf, _ = labelled_run
    run = load_run(run_dir, "best", "cpu")
    assert load_classifier(clf, run).num_classes == 2

    def copy(name: str):
        target = tmp_path / name
        shutil.copytree(clf, target)
        return target

    changed = copy("changed")
    manifest = json.loads((changed / "data.json").read_text())
    manifest["splits_sha256"] = "0" * 64
    (changed / "data.json").write_text(json.dumps(manifest))
    nan, shape, cut = copy("nan"), copy("shape"), copy("cut")
    state = load_file(str(clf / "classifier.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    save_file({**state, key: torch.full_like(state[key], float("nan"))}, str(nan / "classifier.safetensors"))
    save_file({**state, key: state[key][:1].clone()}, str(shape / "classifier.safetensors"))
    data = (clf / "classifier.safetensors").read_bytes()
    (cut / "classifier.safetensors").write_bytes(data[:len(data) // 2])
    for folder, message in ((changed, "differ|changed|checksum"), (nan, "non-finite"), (shape, "do not match"),
                            (cut, "cannot read classifier weights")):
        with pytest.raises(ValueError, match=message) as info:
            load_classifier(folder, run)
        assert "\n" not in str(info.value)
