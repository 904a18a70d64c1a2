"""The ``ddiff`` command line: help, train, sample, evaluate, user arrays and error handling."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, read_metrics, with_overrides
from PIL import Image

from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.samplers import SAMPLERS

_NEXT_TO_PYTHON = Path(sys.executable).with_name("ddiff")
DDIFF = str(_NEXT_TO_PYTHON) if _NEXT_TO_PYTHON.is_file() else shutil.which("ddiff")


# ----- help ---------------------------------------------------------------------------------------
def test_console_script_help_lists_commands():
    cmd = [DDIFF, "--help"] if DDIFF else [sys.executable, "-m", "discrete_diffusion.cli", "--help"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "train", "sample", "evaluate"):
        assert command in proc.stdout


@pytest.mark.parametrize("command, options", [
    ("demo", ["--out", "--steps", "--no-progress"]),
    ("train", ["--out", "--resume", "--config", "overrides", "digits", "blackout"]),
    ("sample", ["--sampler", "--steps", "--num", "--seed", "--out", "bridge", "tau-leaping"]),
    ("evaluate", ["--json", "--split", "--t-samples", "--checkpoint"]),
])
def test_subcommand_help(ddiff, command, options):
    res = ddiff(command, "--help")
    assert res.rc == 0
    for option in options:
        assert option in res.out, f"{command} --help does not mention {option}"


# ----- train ----------------------------------------------------------------------------------------
def test_train_writes_run_directory(trained_run):
    assert (trained_run / "config.yaml").is_file()
    assert "base_channels: 16" in (trained_run / "config.yaml").read_text()
    records = read_metrics(trained_run)
    vals = [r for r in records if "val_nll_bits_per_dim" in r]
    assert [r["step"] for r in vals] == [3, 6]
    assert all(math.isfinite(r["val_nll_bits_per_dim"]) and r["val_nll_bits_per_dim"] > 0 for r in vals)
    assert any("loss" in r and r["step"] == 6 for r in records)
    for sub in ("checkpoints", "best"):
        assert list((trained_run / sub).glob("ckpt_*.json")), sub
        assert list((trained_run / sub).glob("ckpt_*.safetensors")), sub
    assert find_latest_checkpoint(trained_run / "checkpoints").name == "ckpt_00000006.json"
    pngs = list((trained_run / "samples").glob("*.png"))
    assert pngs and Image.open(pngs[0]).size[0] > 8


# ----- sample ---------------------------------------------------------------------------------------
def _sample(ddiff, run_dir: Path, out: Path, sampler: str, seed: int, num: int = 8) -> np.ndarray:
    res = ddiff("sample", run_dir, "--sampler", sampler, "--steps", 5, "--num", num, "--seed", seed,
                "--out", out, "--no-progress")
    assert res.rc == 0, res
    npy = out / f"{sampler}_5steps_seed{seed}.npy"
    assert npy.is_file() and (out / f"{sampler}_5steps_seed{seed}.png").is_file()
    assert str(npy) in res.out
    return np.load(npy)


def test_sample_bridge_is_deterministic_per_seed(ddiff, trained_run, tmp_path):
    a = _sample(ddiff, trained_run, tmp_path / "a", "bridge", seed=1)
    assert a.shape == (8, 8, 8)
    assert np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() <= 16
    b = _sample(ddiff, trained_run, tmp_path / "b", "bridge", seed=1)
    np.testing.assert_array_equal(a, b)
    c = _sample(ddiff, trained_run, tmp_path / "c", "bridge", seed=2)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("sampler", ["tau-leaping", "mean-bridge"])
def test_sample_other_samplers(ddiff, trained_run, tmp_path, sampler):
    x = _sample(ddiff, trained_run, tmp_path, sampler, seed=0, num=4)
    assert x.shape == (4, 8, 8) and x.min() >= 0 and x.max() <= 16


def test_sample_options_from_flags_reach_the_sampler(ddiff, trained_run, tmp_path):
    res = ddiff("sample", trained_run, "--sampler", "theta-trapezoidal", "--steps", 4, "--num", 4, "-o", "theta=0.3",
                "--option", "multi_jump=reject", "--out", tmp_path / "theta", "--no-progress")
    assert res.rc == 0, res
    record = json.loads((tmp_path / "theta" / "theta-trapezoidal_4steps_seed0.json").read_text())
    assert record["sampler"]["theta"] == 0.3 and record["sampler"]["multi_jump"] == "reject"
    assert record["nfe_last_batch"] == 2 * 3 + 1 and record["num_samples"] == 4
    plain = _sample(ddiff, trained_run, tmp_path / "plain", "bridge", seed=3)
    res = ddiff("sample", trained_run, "--sampler", "bridge", "--steps", 5, "--num", 8, "--seed", 3,
                "--temperature", "0.5", "--top-p", "0.5", "--out", tmp_path / "cold", "--no-progress")
    assert res.rc == 0, res
    record = json.loads((tmp_path / "cold" / "bridge_5steps_seed3.json").read_text())
    assert record["sampler"]["temperature"] == 0.5 and record["sampler"]["top_p"] == 0.5
    assert not np.array_equal(np.load(tmp_path / "cold" / "bridge_5steps_seed3.npy"), plain)


@pytest.mark.parametrize("args,message", [
    (["-o", "thetaa=0.3"], "no option 'thetaa'; its options: num_steps, final_denoise"),
    (["-o", "theta"], "malformed --option 'theta'"),
    (["--cache"], "cache=True"),
    (["--top-p", "2"], "top_p must lie in"),
    (["-o", "theta=abc"], "bad options for sampler 'theta-rk2'"),
])
def test_sample_bad_options_are_clear_errors(ddiff, trained_run, tmp_path, args, message):
    res = ddiff("sample", trained_run, "--sampler", "theta-rk2", *args, "--out", tmp_path, "--no-progress")
    assert res.rc == 2 and message in res.err, res
    assert not list(tmp_path.iterdir())


def test_sample_unknown_sampler(ddiff, trained_run, tmp_path):
    res = ddiff("sample", trained_run, "--sampler", "nope", "--out", tmp_path, "--no-progress")
    assert res.rc == 2
    assert "nope" in res.err
    for name in SAMPLERS:
        assert name in res.err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["sample", "--steps", "0"], ["sample", "--num", "0"],
                                  ["evaluate", "--t-samples", "0"]])
def test_zero_counts_are_rejected(ddiff, trained_run, tmp_path, args):
    extra = ["--out", tmp_path] if args[0] == "sample" else []
    res = ddiff(args[0], trained_run, *args[1:], *extra, "--no-progress")
    assert res.rc == 2, res


# ----- evaluate -------------------------------------------------------------------------------------
def test_evaluate_json(ddiff, trained_run):
    res = ddiff("evaluate", trained_run, "--json", "--split", "val", "--no-progress")
    assert res.rc == 0, res
    payload = json.loads(res.out)
    assert math.isfinite(payload["nll_bits_per_dim"]) and payload["nll_bits_per_dim"] > 0
    assert math.isfinite(payload["nll_bits_per_dim_stderr"]) and payload["nll_bits_per_dim_stderr"] > 0
    assert payload["split"] == "val" and payload["num_examples"] == 150
    assert payload["nll_bits_per_dim"] < 10  # sanity: log2(17) = 4.09 bits/dim is the uniform model


def test_evaluate_text_output(ddiff, trained_run):
    res = ddiff("evaluate", trained_run, "--split", "val", "--t-samples", 1, "--no-progress")
    assert res.rc == 0, res
    assert "bits/dim" in res.out and "val NLL" in res.out


# ----- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, fragments", [
    ("train.steps", ["malformed override", "train.steps"]),
    ("train.nope=1", ["nope"]),
    ("model.base_channels=many", ["many", "Integer"]),
])
def test_train_bad_overrides(ddiff, tmp_path, override, fragments):
    res = ddiff("train", "--out", tmp_path / "run", "--no-progress", *TINY, override)
    assert res.rc == 2, res
    assert res.err.startswith("ddiff train: error:")
    for fragment in fragments:
        assert fragment in res.err
    assert "Traceback" not in res.err


def test_wrong_type_override_names_the_key(ddiff, tmp_path):
    res = ddiff("train", "--out", tmp_path / "run", "--no-progress", *TINY, "model.base_channels=many")
    assert res.rc == 2
    assert "model.base_channels" in res.err


def test_train_unknown_dataset_lists_valid_names(ddiff, tmp_path):
    res = ddiff("train", "--out", tmp_path / "run", "--no-progress", *TINY, "data.name=cifar-1000")
    assert res.rc == 2
    assert "cifar-1000" in res.err
    for name in ("digits", "array", "png-folder", "fashion-mnist"):
        assert name in res.err


def test_sample_and_evaluate_on_non_run_dir(ddiff, tmp_path):
    for command in ("sample", "evaluate"):
        res = ddiff(command, tmp_path, "--no-progress")
        assert res.rc == 2
        assert "not a run directory" in res.err
    res = ddiff("evaluate", tmp_path / "missing", "--no-progress")
    assert res.rc == 2 and "not a run directory" in res.err


def test_train_refuses_existing_checkpoints_without_resume(ddiff, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    res = ddiff("train", "--out", run, "--no-progress", *TINY)
    assert res.rc == 2
    assert "--resume" in res.err and "checkpoints" in res.err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_refused_train_leaves_run_config_intact(ddiff, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = (run / "config.yaml").read_text()
    res = ddiff("train", "--out", run, "--no-progress", *with_overrides("model.base_channels=8"))
    assert res.rc == 2
    assert (run / "config.yaml").read_text() == config
    assert ddiff("sample", run, "--steps", 2, "--num", 2, "--no-progress").rc == 0


# ----- the user's own data ----------------------------------------------------------------------------
@pytest.fixture
def user_array(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(60, 8, 8)).astype(np.int64)
    x[0, 0, 0] = 3  # make sure the maximum is present
    path = tmp_path / "mine.npy"
    np.save(path, x)
    return path


def test_train_and_sample_user_array(ddiff, user_array, tmp_path):
    run = tmp_path / "run"
    res = ddiff("train", "--out", run, "--no-progress",
                *with_overrides("data.name=array", f"data.path={user_array}", "train.steps=3",
                                "train.sample_every=100"))
    assert res.rc == 0, res
    assert "trained to step 3" in res.out
    assert find_latest_checkpoint(run / "checkpoints") is not None
    assert str(user_array) in (run / "config.yaml").read_text()
    x = _sample(ddiff, run, tmp_path / "s", "bridge", seed=0, num=5)
    assert x.shape == (5, 8, 8) and x.min() >= 0 and x.max() <= 3
    res = ddiff("evaluate", run, "--json", "--no-progress")
    assert res.rc == 0 and json.loads(res.out)["num_examples"] == 6  # 10 % of 60


def test_train_user_array_out_of_range(ddiff, user_array, tmp_path):
    res = ddiff("train", "--out", tmp_path / "run", "--no-progress",
                *with_overrides("data.name=array", f"data.path={user_array}", "data.num_states=3"))
    assert res.rc == 2, res
    assert "mine.npy" in res.err and "Traceback" not in res.err
    assert "3" in res.err


def test_train_user_array_missing_file(ddiff, tmp_path):
    res = ddiff("train", "--out", tmp_path / "run", "--no-progress",
                *with_overrides("data.name=array", f"data.path={tmp_path / 'absent.npy'}"))
    assert res.rc == 2
    assert "absent.npy" in res.err
