"""One training loop for every task (issue 12 item 5): the exact-likelihood baselines, the DDPD planner and the
noisy classifier train through the Trainer, so each resumes bit-exactly, trains under torchrun like one process,
accumulates gradients exactly, runs bf16 autocast, and ``ddiff train-planner`` / ``ddiff train-classifier`` write
run-like directories that ``--resume`` continues."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import read_metrics
from safetensors.torch import load_file
from task_child import KINDS, make_trainer

from discrete_diffusion.cli import main
from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.train.trainer import Trainer

#: A tiny uniform-noise run on the bundled digits (8x8, 17 levels, 10 classes) with an MLP: the planner and the
#: classifier train for it, the AR baseline on its data.
RUN = ["process.name=uniform", "process.schedule=log-linear", "model.backbone=mlp", "model.hidden=32",
       "model.depth=1", "model.dropout=0.0", "train.steps=2", "train.batch_size=8", "train.eval_every=2",
       "train.checkpoint_every=2", "train.sample_every=100", "train.eval_t_samples=1", "train.device=cpu",
       "sample.steps=4", "evaluate.t_samples=1"]
VAL_KEYS = {"exact": "val_bits_per_dim", "planner": "val_bce_bits_per_site", "classifier": "val_ce_bits"}
COMPANION = ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.batch_size=16",
             "train.warmup_steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tasks") / "run"
    assert main(["train", "--out", str(run), "--no-progress", *RUN]) == 0
    return run


def last_checkpoint(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = find_latest_checkpoint(out / "checkpoints")
    meta = json.loads(manifest.read_text())
    return meta, load_file(str(manifest.parent / meta["tensors_file"]))


def trained_tensors(out: Path) -> dict[str, torch.Tensor]:
    """Model, EMA, optimizer and generator tensors of the newest checkpoint."""
    meta, tensors = last_checkpoint(out)
    assert meta["step"] == 6
    kept = {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim.", "rng.generators."))}
    assert any(k.startswith("model.") for k in kept) and any(".exp_avg" in k for k in kept)
    return kept


def metric_lines(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(out)]


def interrupt_after(monkeypatch, step: int) -> None:
    """Ctrl-C at the start of step ``step + 1`` (after the checkpoint at ``step``)."""
    real_step = Trainer.train_step

    def stop(self):
        if self.step == step:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", stop)


@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_resume_is_bit_exact(kind, run_dir, tmp_path, monkeypatch):
    """6 steps straight vs 3 steps, Ctrl-C, then --resume to 6: identical weights, EMA, Adam moments, generator
    states and metrics lines (but the wall-clock seconds)."""
    straight = make_trainer(kind, run_dir, tmp_path / "straight").fit()
    assert straight.step == 6 and straight.best_step in (3, 6)
    killed = tmp_path / "killed"
    interrupt_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(kind, run_dir, killed).fit()
    monkeypatch.undo()
    assert find_latest_checkpoint(killed / "checkpoints").name == "ckpt_00000003.json"
    resumed = make_trainer(kind, run_dir, killed).fit(resume=True)
    assert (resumed.step, resumed.best_step, resumed.best_val_nll_bits_per_dim) == \
        (straight.step, straight.best_step, straight.best_val_nll_bits_per_dim)
    a, b = trained_tensors(tmp_path / "straight"), trained_tensors(killed)
    assert sorted(a) == sorted(b)
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    lines = metric_lines(killed)
    assert lines == metric_lines(tmp_path / "straight")
    assert [r["step"] for r in lines if VAL_KEYS[kind] in r] == [3, 6]
    assert all(math.isfinite(r["loss"]) for r in lines if "loss" in r)
    # the weights moved between the step-3 checkpoint and the end, so the equality is not trivial
    first = sorted((killed / "checkpoints").glob("ckpt_*.json"))[0]
    meta = json.loads(first.read_text())
    early = load_file(str(first.parent / meta["tensors_file"]))
    assert meta["step"] == 3 and any(not torch.equal(early[k], b[k]) for k in b if k.startswith("model."))
    assert (killed / "data.json").is_file() and (killed / "config.yaml").is_file()


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_accumulation_matches_one_batch(kind, run_dir, tmp_path):
    """Two micro-batches of 8 train what one batch of 16 trains (the generic sharded step), up to rounding."""
    one = make_trainer(kind, run_dir, tmp_path / "one")
    two = make_trainer(kind, run_dir, tmp_path / "two", "train.grad_accumulation=2")
    records = [[t.train_step() for _ in range(3)] for t in (one, two)]
    for r1, r2 in zip(*records):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-4)
    for (name, p1), p2 in zip(one.module.named_parameters(), two.module.parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(one.noise_generator.get_state(), two.noise_generator.get_state())


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_trains_with_finite_loss_and_fp32_weights(kind, run_dir, tmp_path):
    trainer = make_trainer(kind, run_dir, tmp_path / "bf16", "train.precision=bf16")
    linear = next(m for m in trainer.module.modules() if isinstance(m, torch.nn.Linear))
    dtypes = []
    handle = linear.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    record = trainer.train_step()
    handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert math.isfinite(record["loss"]) and record["loss"] > 0 and math.isfinite(record["grad_norm"])
    assert all(p.dtype == torch.float32 for p in trainer.module.parameters())
    trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "bf16") if "loss" in r)
    assert all(math.isfinite(r[VAL_KEYS[kind]]) for r in read_metrics(tmp_path / "bf16") if VAL_KEYS[kind] in r)
    _, tensors = last_checkpoint(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.startswith("model.") and t.is_floating_point())


@pytest.mark.parametrize("command", ["train-planner", "train-classifier"])
def test_cli_resume_continues_the_directory_exactly(command, run_dir, tmp_path, monkeypatch, capsys):
    """`ddiff train-planner/-classifier RUN --out DIR`: a run-like directory; Ctrl-C at step 4 names the resume
    command; `--resume` finishes it to the weights, metrics and metrics.json of a straight run."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([command, str(run_dir), *COMPANION, "--out", str(straight), "--no-progress"]) == 0
    names = {p.name for p in straight.iterdir()}
    weights = "planner.safetensors" if command == "train-planner" else "classifier.safetensors"
    assert {"config.yaml", "data.json", "metrics.jsonl", "checkpoints", "best", ".lock", "metrics.json",
            weights} <= names
    interrupt_after(monkeypatch, 3)
    capsys.readouterr()
    assert main([command, str(run_dir), *COMPANION, "--out", str(killed), "--no-progress"]) == 130
    assert f"resume with: ddiff {command} {run_dir} --out {killed} --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert not (killed / "metrics.json").exists()
    assert main([command, str(run_dir), "--out", str(killed), "--resume", "--no-progress"]) == 0
    a, b = trained_tensors(straight), trained_tensors(killed)
    assert sorted(a) == sorted(b) and not [k for k in a if not torch.equal(a[k], b[k])]
    assert metric_lines(killed) == metric_lines(straight)
    assert (killed / weights).read_bytes() == (straight / weights).read_bytes()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, killed))
    for key in ("best_step", "steps_done", "val_curve", "parameters"):
        assert a[key] == b[key], key
    assert [row[0] for row in a["val_curve"]] == [3, 6]
    # the exported weights are the best checkpoint's EMA weights
    best = json.loads(find_latest_checkpoint(straight / "best").read_text())
    ema = {k[4:]: v for k, v in load_file(str(straight / "best" / best["tensors_file"])).items()
           if k.startswith("ema.")}
    exported = load_file(str(straight / weights))
    assert best["step"] == a["best_step"] and ema and all(torch.equal(exported[k], v) for k, v in ema.items())


def test_cli_refusals_are_one_line(run_dir, tmp_path, ddiff):
    """--resume without a checkpoint, a fresh start over checkpoints, a changed model section on resume."""
    res = ddiff("train-classifier", run_dir, "--out", tmp_path / "none", "--resume")
    assert res.rc == 2 and "cannot resume" in res.err and "ddiff train-classifier" in res.err, res
    out = tmp_path / "p"
    assert ddiff("train-planner", run_dir, *COMPANION, "train.steps=3", "--out", out, "--no-progress").rc == 0
    res = ddiff("train-planner", run_dir, "--out", out, "--no-progress")
    assert res.rc == 2 and "already holds checkpoints" in res.err, res
    res = ddiff("train-planner", run_dir, "model.hidden=8", "--out", out, "--resume", "--no-progress")
    assert res.rc == 2 and "model.hidden" in res.err and len(res.err.strip().splitlines()) == 1, res


# ----- two gloo processes ------------------------------------------------------------------------------------------
def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_matches_one_process(one: Path, two: Path) -> None:
    a, b = trained_tensors(one), trained_tensors(two)
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key      # every rank drew the global batch of one process
        else:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    rec_1, rec_2 = ([r for r in read_metrics(d) if "loss" in r] for d in (one, two))
    assert [r["step"] for r in rec_2] == [r["step"] for r in rec_1] == [6]
    assert rec_2[0]["loss"] == pytest.approx(rec_1[0]["loss"], rel=1e-5)
    assert rec_2[0]["grad_norm"] == pytest.approx(rec_1[0]["grad_norm"], rel=1e-4)
    val_1, val_2 = ([r for r in read_metrics(d) if "step" in r and "loss" not in r] for d in (one, two))
    for r1, r2 in zip(val_1, val_2, strict=True):   # the same validation draws: only the weights' rounding differs
        assert r2 == pytest.approx(r1, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_gloo_processes_match_one_process(kind, run_dir, tmp_path):
    make_trainer(kind, run_dir, tmp_path / "one").fit()
    proc = torchrun(str(Path(__file__).parent / "task_child.py"), kind, str(run_dir), str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches_one_process(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_train_classifier_under_torchrun(run_dir, tmp_path):
    """The command itself under torchrun: rank 0 alone writes and prints; the weights match one process."""
    args = [str(run_dir), *COMPANION, "--device", "cpu", "--no-progress"]
    assert main(["train-classifier", *args, "--out", str(tmp_path / "one")]) == 0
    proc = torchrun("-m", "discrete_diffusion.cli", "train-classifier", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("classifier validation CE") == 1
    assert_matches_one_process(tmp_path / "one", tmp_path / "two")
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["steps_done"] == 6 and not list((tmp_path / "two").glob("**/*.tmp"))


def test_run_config_of_an_exact_run_records_the_task(run_dir, tmp_path):
    """config.yaml of an exact-likelihood run holds the task's record and the train section, not a diffusion
    config it never used."""
    import yaml

    make_trainer("exact", run_dir, tmp_path / "exact", "train.steps=1").fit()
    saved = yaml.safe_load((tmp_path / "exact" / "config.yaml").read_text())
    assert saved["task"] == "exact-nll" and saved["model"]["class"] == "ARTransformer"
    assert saved["train"]["steps"] == 1 and "process" not in saved
