"""Exact resume of ``ddiff train``, refusal of a mismatched resume, and NaN-loss handling."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, with_overrides
from safetensors.torch import load_file

from discrete_diffusion.cli import main
from discrete_diffusion.config import load_config
from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.train import diffusion_task
from discrete_diffusion.train.checkpoint import load_checkpoint
from discrete_diffusion.train.trainer import Trainer, model_config

# 8 steps, validation every 2 (so metrics exist after the step-4 checkpoint), checkpoints every 4,
# warmup 2 then cosine decay (so a resume that lost the scheduler state would change the learning rate).
REF = with_overrides("train.steps=8", "train.eval_every=2", "train.checkpoint_every=4", "train.sample_every=100")
# min_lr_ratio=1 makes the learning rate after warmup independent of train.steps, so a 4-step run
# extended to 8 must match an 8-step run exactly.
FLAT = with_overrides("train.min_lr_ratio=1.0", base=REF)


def train(out: Path, *overrides: str, resume: bool = False) -> int:
    return main(["train", "--out", str(out), "--no-progress", *(["--resume"] if resume else []), *overrides])


def final_tensors(run_dir: Path) -> tuple[int, dict[str, torch.Tensor]]:
    manifest = find_latest_checkpoint(run_dir / "checkpoints")
    meta = json.loads(manifest.read_text())
    return meta["step"], load_file(str(manifest.parent / meta["tensors_file"]))


def assert_same_tensors(run_a: Path, run_b: Path) -> None:
    step_a, a = final_tensors(run_a)
    step_b, b = final_tensors(run_b)
    assert step_a == step_b == 8
    assert any(k.startswith("model.") for k in a) and any(k.startswith("ema.") for k in a)
    assert sorted(a) == sorted(b)
    differing = [k for k in a if k.startswith(("model.", "ema.", "optim.")) and not torch.equal(a[k], b[k])]
    assert not differing, f"tensors differ after resume: {differing[:10]}"


def assert_no_duplicate_steps(run_dir: Path) -> None:
    records = read_metrics(run_dir)
    for kind in ("loss", "val_nll_bits_per_dim"):
        steps = [r["step"] for r in records if kind in r]
        assert steps == sorted(steps), (kind, steps)
        assert not [s for s, n in Counter(steps).items() if n > 1], (kind, steps)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "straight"
    assert train(run, *REF) == 0
    return run


@pytest.fixture(scope="module")
def straight_flat_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "straight-flat"
    assert train(run, *FLAT) == 0
    return run


def test_resume_after_interrupt_is_exact(straight_run, tmp_path, monkeypatch):
    run = tmp_path / "interrupted"
    real_step = Trainer.train_step

    def crash_before_step_7(self):
        if self.step == 6:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_before_step_7)
    assert train(run, *REF) == 130  # ddiff reports Ctrl-C in one line (tests/test_cli_errors.py)
    monkeypatch.undo()
    assert find_latest_checkpoint(run / "checkpoints").name == "ckpt_00000004.json"
    assert 6 in [r["step"] for r in read_metrics(run)]  # logged after the checkpoint it resumes from

    assert train(run, resume=True) == 0  # the config comes from RUN/config.yaml
    assert_same_tensors(straight_run, run)
    assert_no_duplicate_steps(run)
    assert [r["step"] for r in read_metrics(run) if "val_nll_bits_per_dim" in r] == [2, 4, 6, 8]
    straight_vals = [r for r in read_metrics(straight_run) if "val_nll_bits_per_dim" in r]
    resumed_vals = [r for r in read_metrics(run) if "val_nll_bits_per_dim" in r]
    assert resumed_vals == straight_vals


def test_extend_finished_run_with_resume(straight_flat_run, tmp_path):
    run = tmp_path / "extended"
    assert train(run, *with_overrides("train.steps=4", base=FLAT)) == 0
    assert final_tensors(run)[0] == 4
    assert train(run, "train.steps=8", resume=True) == 0
    assert load_config(run / "config.yaml").train.steps == 8
    assert_same_tensors(straight_flat_run, run)
    assert_no_duplicate_steps(run)


def test_resume_with_different_model_config_is_refused(straight_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    assert train(run, "model.base_channels=8", "train.steps=10", resume=True) == 2
    err = capsys.readouterr().err
    assert "model.base_channels" in err
    assert "16" in err and "8" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_accepts_a_checkpoint_written_before_a_config_option_existed(straight_run, tmp_path):
    """A key the checkpoint's config lacks (an option added to the library later) takes its default."""
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    for manifest in (run / "checkpoints").glob("ckpt_*.json"):
        meta = json.loads(manifest.read_text())
        del meta["config"]["model"]["mlp_ratio"]
        manifest.write_text(json.dumps(meta))
    assert train(run, "train.steps=9", resume=True) == 0
    assert final_tensors(run)[0] == 9


def test_refused_resume_keeps_run_usable(straight_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    config = (run / "config.yaml").read_text()
    assert train(run, "model.base_channels=8", resume=True) == 2
    assert (run / "config.yaml").read_text() == config
    assert main(["sample", str(run), "--steps", "2", "--num", "2", "--no-progress"]) == 0


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch, capsys):
    real_terms = diffusion_task.diffusion_terms   # the diffusion task's per-example loss (one call per step here)
    calls = []

    def nan_at_step_3(*args, **kwargs):
        per_example, elbo = real_terms(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            return per_example * float("nan"), elbo
        return per_example, elbo

    monkeypatch.setattr(diffusion_task, "diffusion_terms", nan_at_step_3)
    run = tmp_path / "nan"
    capsys.readouterr()
    assert train(run, *with_overrides("train.checkpoint_every=2", "train.eval_every=2", "train.sample_every=100")) == 2
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "step 3" in err
    assert len(calls) == 3
    assert not [r for r in read_metrics(run) if r["step"] >= 3]

    latest = find_latest_checkpoint(run / "checkpoints")
    assert latest is not None and latest.name == "ckpt_00000002.json"
    config = load_config(run / "config.yaml")
    fresh = Trainer(config, run, progress=False)
    meta = load_checkpoint(latest, fresh.denoiser, fresh.optimizer, fresh.scheduler, fresh.ema, fresh.generators,
                           expected_config=model_config(config))
    assert meta["step"] == 2
    params = [p for p in fresh.denoiser.parameters()]
    assert params and all(torch.isfinite(p).all() for p in params)
    assert all(torch.isfinite(t).all() for t in fresh.ema.shadow.values() if t.is_floating_point())
