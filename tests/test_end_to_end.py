"""End to end: train on digits, checkpoint, resume, sample, evaluate (Python API), and ``ddiff demo``."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, read_metrics, with_overrides
from PIL import Image

from discrete_diffusion import cli
from discrete_diffusion.builders import build_sampler_from
from discrete_diffusion.cli import train as cli_train
from discrete_diffusion.config import load_config
from discrete_diffusion.pipeline import evaluate_run, generate_samples, load_run, save_samples
from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.train.trainer import Trainer


def test_train_resume_sample_evaluate(tmp_path, monkeypatch):
    run = tmp_path / "work" / "run"
    logs: list[str] = []
    config = load_config(None, with_overrides("train.steps=4", "train.eval_every=2", "train.checkpoint_every=2",
                                              "train.sample_every=4"))
    first = Trainer(config, run, progress=False, log=logs.append).fit()
    assert first.step == 4 and first.best_step in (2, 4)
    assert math.isfinite(first.best_val_nll_bits_per_dim) and first.best_val_nll_bits_per_dim > 0
    assert find_latest_checkpoint(run / "checkpoints").name == "ckpt_00000004.json"
    assert (run / "samples" / "step_00000004.png").is_file()

    # resume from the run directory's own config, training two more steps
    config = load_config(run / "config.yaml", ["train.steps=6"])
    second = Trainer(config, run, progress=False, log=logs.append).fit(resume=True)
    assert second.step == 6
    assert any("resumed from ckpt_00000004" in line and "step 4" in line for line in logs)
    assert second.best_val_nll_bits_per_dim <= first.best_val_nll_bits_per_dim
    steps = [r["step"] for r in read_metrics(run) if "val_nll_bits_per_dim" in r]
    assert steps == [2, 4, 6]

    # the run directory alone suffices: move it and work from somewhere else
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    monkeypatch.chdir(moved.parent)
    loaded = load_run(moved, "best", "cpu")
    assert loaded.checkpoint.parent == moved / "best"
    assert loaded.checkpoint.name == f"ckpt_{second.best_step:08d}.json"
    assert loaded.dataset.num_states == 17 and tuple(loaded.dataset.site_shape) == (8, 8)
    assert loaded.config.model.base_channels == 16 and loaded.config.train.steps == 6
    assert not loaded.denoiser.training
    latest = load_run(moved, "latest", "cpu")
    assert latest.checkpoint.name == "ckpt_00000006.json"

    sampler = build_sampler_from(loaded.config)
    assert sampler.name == "bridge" and sampler.num_steps == 5
    x = generate_samples(loaded, sampler, 10, batch_size=4, seed=3, progress=False)
    assert x.shape == (10, 8, 8) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) <= 16
    assert torch.equal(x, generate_samples(loaded, sampler, 10, batch_size=4, seed=3, progress=False))
    paths = save_samples(x, loaded, moved / "samples", stem="api")
    np.testing.assert_array_equal(np.load(paths["npy"]), x.numpy())
    assert Image.open(paths["png"]).size[0] > 8

    result = evaluate_run(loaded, "test", t_samples=1, progress=False)
    assert result.num_examples == 297 and result.t_samples == 1
    assert math.isfinite(result.nll_bits_per_dim) and 0 < result.nll_bits_per_dim < 10
    assert math.isfinite(result.nll_bits_per_dim_stderr) and result.nll_bits_per_dim_stderr > 0
    parts = result.diffusion_bits_per_dim + result.prior_bits_per_dim + result.reconstruction_bits_per_dim
    assert parts == pytest.approx(result.nll_bits_per_dim, rel=1e-6)
    again = evaluate_run(loaded, "test", t_samples=1, seed=0, progress=False)
    assert again.nll_bits_per_dim == result.nll_bits_per_dim


def _check_demo_outputs(out: Path, capsys_out: str) -> dict:
    for name in ("samples.png", "samples.npy", "metrics.json", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    samples = np.load(out / "samples.npy")
    assert samples.shape == (64, 8, 8) and samples.min() >= 0 and samples.max() <= 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["nll_bits_per_dim"]) and metrics["nll_bits_per_dim"] > 0
    assert math.isfinite(metrics["nll_bits_per_dim_stderr"]) and metrics["nll_bits_per_dim_stderr"] > 0
    assert metrics["split"] == "test" and metrics["dataset"] == "digits" and metrics["process"] == "blackout"
    assert "test NLL" in capsys_out and "bits/dim" in capsys_out
    return metrics


def test_demo_with_tiny_model(tmp_path, monkeypatch, capsys):
    """The demo's code path with the default model swapped for the tiny one (fast)."""
    monkeypatch.setattr(cli_train, "DEMO_OVERRIDES", [o for o in TINY if not o.startswith("train.device")])
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "4", "--no-progress", "--device", "cpu"]) == 0
    metrics = _check_demo_outputs(out, capsys.readouterr().out)
    assert metrics["best_step"] in (3, 4) and metrics["sampler_steps"] == 5
    assert load_config(out / "config.yaml").train.steps == 4


@pytest.mark.slow
def test_demo_default_model(tmp_path, capsys):
    """`ddiff demo --steps 4`: default U-Net, 200 sampler steps, 16 t-samples; minutes on a CPU."""
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "4", "--no-progress"]) == 0
    metrics = _check_demo_outputs(out, capsys.readouterr().out)
    assert metrics["best_step"] == 4 and metrics["sampler_steps"] == 200
