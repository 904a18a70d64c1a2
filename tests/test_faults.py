"""Surviving faults: SIGKILL at any moment (also mid-checkpoint-write) and exact resume, a full disk, an
unwritable run directory, a NaN / infinite loss in the accumulated path."""

from __future__ import annotations

import errno
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, with_overrides
from safetensors.torch import load_file
from test_resume import assert_no_duplicate_steps, final_tensors

from discrete_diffusion.cli import main
from discrete_diffusion.config import load_config
from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.train import checkpoint as checkpoint_module
from discrete_diffusion.train import trainer as trainer_module
from discrete_diffusion.train.checkpoint import load_checkpoint
from discrete_diffusion.train.trainer import Trainer, model_config

CHILD = Path(__file__).with_name("fault_child.py")
HAVE_PROC = Path("/proc/self/fd").is_dir()

# A checkpoint after every step, validation (and so a best/ save) every 4 steps.
KILL = with_overrides("train.steps=8", "train.checkpoint_every=1", "train.eval_every=4", "train.sample_every=1000",
                      "train.keep_last=2")


def train(out: Path, *overrides: str, resume: bool = False) -> int:
    return main(["train", "--out", str(out), "--no-progress", *(["--resume"] if resume else []), *overrides])


def assert_same_final_tensors(run_a: Path, run_b: Path, steps: int) -> None:
    step_a, a = final_tensors(run_a)
    step_b, b = final_tensors(run_b)
    assert step_a == step_b == steps
    assert sorted(a) == sorted(b)
    differing = [k for k in a if not torch.equal(a[k], b[k])]  # weights, EMA, optimizer and every RNG state
    assert not differing, f"tensors differ: {differing[:10]}"


def best_tensors(run: Path) -> dict[str, torch.Tensor]:
    manifest = find_latest_checkpoint(run / "best")
    return load_file(str(manifest.parent / json.loads(manifest.read_text())["tensors_file"]))


def assert_latest_loadable(run: Path, expected_step: int | None) -> None:
    """The newest complete checkpoint loads fully (model, optimizer, scheduler, EMA, RNG) with the run's config."""
    latest = find_latest_checkpoint(run / "checkpoints")
    if expected_step is None:
        assert latest is None
        return
    assert latest is not None and latest.name == f"ckpt_{expected_step:08d}.json", latest
    config = load_config(run / "config.yaml")
    fresh = Trainer(config, run, progress=False, log=lambda _m: None)
    meta = load_checkpoint(latest, fresh.denoiser, fresh.optimizer, fresh.scheduler, fresh.ema, fresh.generators,
                           expected_config=model_config(config))
    assert meta["step"] == expected_step


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "straight"
    assert train(run, *KILL) == 0
    return run


# ----- SIGKILL at exact points of a checkpoint write ----------------------------------------------------------
class Child:
    """``ddiff train`` in a subprocess whose fsyncs wait for the test (see fault_child.py)."""

    def __init__(self, run: Path, resume: bool, lockstep: bool = True, fsync_delay: float = 0.0) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("FAULT_LOCKSTEP", None)
        if lockstep:
            env["FAULT_LOCKSTEP"] = "1"
        if fsync_delay:
            env["FAULT_FSYNC_DELAY"] = str(fsync_delay)
        cmd = [sys.executable, str(CHILD), "train", "--out", str(run), "--no-progress",
               *(["--resume"] if resume else []), *KILL]
        self.stderr = open(run.parent / f"{run.name}.stderr", "a")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def run_until(self, kill_at) -> list[str]:
        """Let the child run, answering fsyncs, until ``kill_at(path)`` is true for an fsync it waits in:
        then SIGKILL it. Returns the fsync paths seen."""
        seen = []
        while True:
            line = self.lines.get(timeout=120)
            if line is None:
                raise AssertionError(f"child exited (rc {self.proc.wait()}) before the kill point; fsyncs: {seen}")
            if not line.startswith("FSYNC "):
                continue
            path = line[len("FSYNC "):]
            seen.append(path)
            if kill_at(path, seen):
                self.kill()
                return seen
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL
        self.stderr.close()

    def finish(self) -> int:
        """Answer every fsync until the child exits; its return code."""
        while (line := self.lines.get(timeout=120)) is not None:
            if line.startswith("FSYNC "):
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
        rc = self.proc.wait(timeout=60)
        self.stderr.close()
        return rc


def tmp_of(directory: str, stem: str, kind: str):
    """Predicate: the fsync of the temp file of ``directory/stem.kind`` (written, not yet renamed)."""
    pattern = re.compile(rf"/{directory}/\.{stem}\.([0-9a-f]{{12}}\.)?{kind}\.[0-9a-f]+\.tmp$")
    return lambda path, seen: bool(pattern.search(path))


def dir_after(directory: str, stem: str, kind: str):
    """Predicate: the directory fsync right after ``directory/stem.kind`` was renamed into place."""
    first = tmp_of(directory, stem, kind)
    return lambda path, seen: (path.endswith(f"/{directory}") and len(seen) > 1 and first(seen[-2], seen[:-1]))


# (kill point, newest complete checkpoint expected afterwards)
TENSORS_MID_WRITE = (tmp_of("checkpoints", "ckpt_00000003", "safetensors"), 2)  # written, not renamed
MANIFEST_MID_WRITE = (tmp_of("checkpoints", "ckpt_00000005", "json"), 4)  # tensors of 5 in place, no manifest
MANIFEST_RENAMED = (dir_after("checkpoints", "ckpt_00000006", "json"), 6)  # renamed, directory not yet synced
BEST_MID_WRITE = (tmp_of("best", "ckpt_00000008", "safetensors"), 7)  # best/ being written at step 8


def kill_at_points_then_finish(uninterrupted: Path, run: Path, points) -> None:
    for i, (kill_at, expected) in enumerate(points):
        Child(run, resume=i > 0).run_until(kill_at)
        assert_latest_loadable(run, expected)
    assert Child(run, resume=True).finish() == 0
    assert_same_final_tensors(uninterrupted, run, 8)
    assert_no_duplicate_steps(run)
    vals = lambda r: [m for m in read_metrics(r) if "val_nll_bits_per_dim" in m]  # noqa: E731
    assert vals(run) == vals(uninterrupted)
    best_a, best_b = best_tensors(uninterrupted), best_tensors(run)
    assert sorted(best_a) == sorted(best_b) and all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # leftovers of the killed writes were cleaned up
    manifests = sorted(p.name for p in (run / "checkpoints").glob("ckpt_*.json"))  # train.keep_last=2
    assert manifests == ["ckpt_00000007.json", "ckpt_00000008.json"]
    assert len(list((run / "checkpoints").iterdir())) == 4  # orphaned tensors of killed writes removed


@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc to name the file being fsync'ed")
def test_sigkill_mid_checkpoint_write_then_resume_is_bit_identical(uninterrupted, tmp_path):
    """Two real SIGKILLs of `ddiff train`, each while a checkpoint file is half-way to disk."""
    kill_at_points_then_finish(uninterrupted, tmp_path / "killed", [TENSORS_MID_WRITE, MANIFEST_MID_WRITE])


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROC, reason="needs /proc to name the file being fsync'ed")
def test_sigkill_at_every_write_phase_then_resume_is_bit_identical(uninterrupted, tmp_path):
    kill_at_points_then_finish(uninterrupted, tmp_path / "killed",
                               [TENSORS_MID_WRITE, MANIFEST_MID_WRITE, MANIFEST_RENAMED, BEST_MID_WRITE])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_random_times_then_resume_is_bit_identical(uninterrupted, tmp_path, seed):
    """Kill a real `ddiff train` at random moments (fsyncs slowed to widen the write windows) until it
    finishes; after every kill the newest checkpoint loads; the end result equals the uninterrupted run."""
    rng = random.Random(seed)
    run = tmp_path / "killed"
    kills = 0
    for attempt in range(40):
        # --resume needs a complete checkpoint; a kill before the first one leaves a run to start anew
        child = Child(run, resume=find_latest_checkpoint(run / "checkpoints") is not None, lockstep=False,
                      fsync_delay=0.02)
        while (line := child.lines.get(timeout=120)) is not None and not (
                line.startswith("FSYNCED") and "/checkpoints/" in line):
            pass  # wait for the first checkpoint fsync (config.yaml and metrics.jsonl are fsync'ed before training)
        if line is None:
            assert child.proc.wait(timeout=60) == 0
            break
        deadline = time.time() + rng.uniform(0.0, 0.6)
        while time.time() < deadline and child.proc.poll() is None:
            time.sleep(0.002)
        if child.proc.poll() is not None:
            assert child.finish() == 0
            break
        child.kill()
        kills += 1
        latest = find_latest_checkpoint(run / "checkpoints")
        assert_latest_loadable(run, None if latest is None else json.loads(latest.read_text())["step"])
    else:
        raise AssertionError("training never finished")
    assert kills >= 2
    assert_same_final_tensors(uninterrupted, run, 8)
    assert_no_duplicate_steps(run)


def test_torn_metrics_line_is_dropped_on_resume(uninterrupted, tmp_path):
    """A kill in the middle of appending to metrics.jsonl leaves half a line; resume drops it."""
    run = tmp_path / "torn"
    assert train(run, *with_overrides("train.steps=4", base=KILL)) == 0
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 0.12')  # torn
    assert train(run, *KILL, resume=True) == 0
    assert all(isinstance(r, dict) for r in read_metrics(run))
    assert_no_duplicate_steps(run)


# ----- a full disk --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["safetensors", "json"])
def test_disk_full_mid_checkpoint_keeps_previous_and_resume_is_exact(uninterrupted, tmp_path, monkeypatch, capsys,
                                                                    victim):
    """ENOSPC part-way through writing the step-5 checkpoint (its tensors or its manifest): a clear error, the
    step-4 checkpoint stays loadable, nothing half-written is left, and once space is back --resume ends with
    exactly the uninterrupted weights."""
    real_write = checkpoint_module._write_chunks

    def full_disk(f, data, chunk=1 << 24):
        if "ckpt_00000005" in f.name and victim in f.name:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(f, data, chunk)

    monkeypatch.setattr(checkpoint_module, "_write_chunks", full_disk)
    run = tmp_path / "full"
    capsys.readouterr()
    assert train(run, *KILL) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddiff train: error: could not write checkpoint ckpt_00000005")
    assert "disk is full" in err and "ckpt_00000004.json is intact" in err and "Traceback" not in err
    assert not list((run / "checkpoints").glob(".*.tmp"))
    monkeypatch.undo()
    assert_latest_loadable(run, 4)
    assert train(run, *KILL, resume=True) == 0
    assert_same_final_tensors(uninterrupted, run, 8)


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch, capsys):
    real_usage = trainer_module.shutil.disk_usage
    monkeypatch.setattr(trainer_module.shutil, "disk_usage",
                        lambda p: real_usage(p)._replace(free=100_000))
    run = tmp_path / "small"
    capsys.readouterr()
    assert train(run, *KILL) == 2
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and "train.keep_last" in err and "MB" in err
    assert find_latest_checkpoint(run / "checkpoints") is None
    assert not (run / "metrics.jsonl").exists() and not (run / "config.yaml").exists()


def test_unwritable_run_directory_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    capsys.readouterr()
    assert train(blocker / "run", *KILL) == 2
    err = capsys.readouterr().err
    assert "is not writable" in err and str(blocker / "run") in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_run_directory_is_refused_before_training(tmp_path, capsys):
    run = tmp_path / "ro"
    run.mkdir()
    run.chmod(0o500)
    try:
        capsys.readouterr()
        assert train(run, *KILL) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        run.chmod(0o700)


def test_write_error_on_resumed_run_never_touches_old_checkpoints(uninterrupted, tmp_path, monkeypatch, capsys):
    """Every checkpoint write failing (EIO): the existing files are byte-for-byte unchanged."""
    run = tmp_path / "eio"
    assert train(run, *with_overrides("train.steps=4", base=KILL)) == 0
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}

    def broken(f, data, chunk=1 << 24):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint_module, "_write_chunks", broken)
    capsys.readouterr()
    assert train(run, *KILL, resume=True) == 2
    assert "Input/output error" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


# ----- NaN / inf in the accumulated (sharded) step -------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_with_accumulation_stops_with_step(tmp_path, bad):
    config = load_config(None, with_overrides("train.steps=6", "train.checkpoint_every=1", "train.eval_every=100",
                                              "train.sample_every=100", "train.grad_accumulation=2"))
    trainer = Trainer(config, tmp_path / "run", progress=False, log=lambda _m: None)
    real = trainer.process.elbo_integrand
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out * bad if len(calls) == 6 else out  # second micro-batch of step 3

    trainer.process.elbo_integrand = poisoned
    with pytest.raises(FloatingPointError, match=rf"loss is {bad} at step 3.*ckpt_00000002\.json is intact"):
        trainer.fit()
    assert_latest_loadable(tmp_path / "run", 2)
