"""Hostile and busy run directories (issue 11): ``--resume`` with nothing to resume, symbolic links planted
at every name the library writes, and two trainings on one directory.

A planted link points at a "victim" file outside the run (in tmp_path); after the command the victim must be
byte-for-byte unchanged and the command must either have written a regular file or refused with one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, with_overrides
from omegaconf import OmegaConf

from discrete_diffusion.pipeline import write_json
from discrete_diffusion.report.grids import save_image_grid
from discrete_diffusion.runs.config_file import save_config
from discrete_diffusion.train import atomic_io  # names looked up at call time: the module collects on old code

PRECIOUS = "precious content, must survive\n"
SHORT = with_overrides("train.steps=3", "train.eval_every=3", "train.checkpoint_every=3", "train.sample_every=3")


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, or ``link -> target`` / ``dir`` (links not followed)."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            key = str(p.relative_to(root))
            out[key] = f"link -> {os.readlink(p)}" if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


def victim(tmp_path: Path, name: str = "victim.txt") -> Path:
    path = tmp_path / name
    path.write_text(PRECIOUS)
    return path


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def one_line_error(result, *needles: str) -> None:
    assert result.rc == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of the session's trained run (tests must not write into ``trained_run``)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, symlinks=True)
    (copy / ".lock").unlink(missing_ok=True)
    return copy


# ----- item 1: --resume with nothing to resume -------------------------------------------------------------------
def test_resume_of_a_missing_directory_is_refused(ddiff, tmp_path):
    run = tmp_path / "missing"
    res = ddiff("train", "--out", run, "--resume", "--no-progress", *TINY)
    one_line_error(res, "cannot resume", str(run), "does not exist", "without --resume")
    assert not run.exists()


def test_resume_of_a_directory_without_config_is_refused(ddiff, tmp_path):
    run = tmp_path / "not-a-run"
    run.mkdir()
    (run / "notes.txt").write_text("mine\n")
    before = tree(run)
    res = ddiff("train", "--out", run, "--resume", "--no-progress", *TINY)
    one_line_error(res, "cannot resume", "no config.yaml", "notes.txt")
    assert tree(run) == before  # nothing written


def test_resume_without_a_valid_checkpoint_is_refused_and_keeps_metrics(ddiff, trained_run, tmp_path):
    """config.yaml and metrics.jsonl of a run whose checkpoints are gone or corrupt: refused, nothing touched
    (the original restarted from step 0 and appended to the old metrics, duplicating steps)."""
    run = tmp_path / "no-ckpt"
    run.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(trained_run / name, run / name)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "ckpt_00000006.json").write_text("{ torn")  # a corrupt manifest is not a checkpoint
    before = tree(run)
    res = ddiff("train", "--out", run, "--resume", "--no-progress", *TINY)
    one_line_error(res, "cannot resume", "has config.yaml but no complete checkpoint", "ckpt_00000006.json")
    assert tree(run) == before


# ----- item 2: writes never follow a symbolic link ----------------------------------------------------------------
def test_fresh_train_never_writes_through_planted_links(ddiff, tmp_path):
    """Links at the probe files and the temp names the original used: ignored, victims untouched."""
    run = tmp_path / "run"
    names = [".write_test", "checkpoints/.write_test", "metrics.jsonl.tmp", "config.yaml.tmp"]
    victims = {name: victim(tmp_path, f"victim{i}.txt") for i, name in enumerate(names)}
    for name, target in victims.items():
        plant(run / name, target)
    assert ddiff("train", "--out", run, "--no-progress", *SHORT).rc == 0
    assert all(v.read_text() == PRECIOUS for v in victims.values())
    for name in ("config.yaml", "metrics.jsonl"):
        assert (run / name).is_file() and not (run / name).is_symlink()


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml", "checkpoints", "best", "samples", ".lock"])
def test_fresh_train_refuses_a_link_at_a_file_or_folder_it_writes(ddiff, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    target = victim(tmp_path) if "." in name else tmp_path / "victim-dir"
    if target.suffix == "":
        target.mkdir()
        (target / "ckpt_00000001.json").write_text(PRECIOUS)  # would be pruned through a linked checkpoints/
    before = tree(tmp_path / "victim-dir") if target.is_dir() else None
    plant(run / name, target)
    res = ddiff("train", "--out", run, "--no-progress", *SHORT)
    one_line_error(res, "symbolic link", str(run / name))
    if target.is_dir():
        assert tree(target) == before
    else:
        assert target.read_text() == PRECIOUS
    assert not (run / "config.yaml").is_file() or name == "config.yaml"


def test_resume_never_writes_through_planted_links(ddiff, run_copy, tmp_path):
    names = [".write_test", "checkpoints/.write_test", "metrics.jsonl.tmp", "config.yaml.tmp"]
    victims = {name: victim(tmp_path, f"victim{i}.txt") for i, name in enumerate(names)}
    for name, target in victims.items():
        plant(run_copy / name, target)
    assert ddiff("train", "--out", run_copy, "--resume", "--no-progress", "train.steps=7").rc == 0
    assert all(v.read_text() == PRECIOUS for v in victims.values())
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert 7 in steps


def test_resume_refuses_a_linked_metrics_file(ddiff, run_copy, tmp_path):
    target = victim(tmp_path)
    (run_copy / "metrics.jsonl").unlink()
    plant(run_copy / "metrics.jsonl", target)
    res = ddiff("train", "--out", run_copy, "--resume", "--no-progress", "train.steps=7")
    one_line_error(res, "symbolic link", "metrics.jsonl")
    assert target.read_text() == PRECIOUS


def test_sample_never_writes_through_planted_links(ddiff, run_copy, tmp_path):
    """`ddiff sample` into RUN/samples where every output name (and the original's fixed temp names) is a link."""
    first = ddiff("sample", run_copy, "--num", "2", "--no-progress")
    assert first.rc == 0, first
    outputs = sorted(p for p in (run_copy / "samples").iterdir() if not p.name.startswith("step_"))
    assert {p.suffix for p in outputs} == {".npy", ".png", ".json"}
    names = [p.name for p in outputs] + [p.name + ".tmp" for p in outputs]
    for p in outputs:
        p.unlink()
    victims = {name: victim(tmp_path, f"victim{i}.txt") for i, name in enumerate(names)}
    for name, target in victims.items():
        plant(run_copy / "samples" / name, target)
    res = ddiff("sample", run_copy, "--num", "2", "--no-progress")
    assert res.rc == 0, res
    assert all(v.read_text() == PRECIOUS for v in victims.values())
    for p in outputs:
        assert p.is_file() and not p.is_symlink()
    assert np.load(run_copy / "samples" / next(p.name for p in outputs if p.suffix == ".npy")).shape[0] == 2


def test_sample_refuses_a_linked_samples_folder(ddiff, run_copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run_copy / "samples")
    plant(run_copy / "samples", elsewhere)
    res = ddiff("sample", run_copy, "--num", "2", "--no-progress")
    one_line_error(res, "symbolic link", str(run_copy / "samples"))
    assert list(elsewhere.iterdir()) == []


def test_sample_follows_a_run_directory_the_user_names_through_a_link(ddiff, run_copy, tmp_path):
    """The path the user typed may be a link (runs/latest -> runs/2026-11-30); links inside it may not."""
    alias = tmp_path / "latest"
    alias.symlink_to(run_copy)
    res = ddiff("sample", alias, "--num", "2", "--no-progress")
    assert res.rc == 0, res
    assert any(p.suffix == ".npy" for p in (run_copy / "samples").iterdir())


def writers():
    """Each library writer of a named file, as (name, write(path))."""
    images = torch.zeros(2, 4, 4, dtype=torch.long)
    config = OmegaConf.create({"train": {"steps": 1}})
    return [
        ("write_json", lambda p: write_json(p, {"a": 1})),
        ("save_config", lambda p: save_config(config, p)),
        ("save_image_grid", lambda p: save_image_grid(images, 2, p)),
        ("atomic_write_text", lambda p: atomic_io.atomic_write_text(p, "x")),
    ]


@pytest.mark.parametrize("name,write", writers(), ids=[n for n, _ in writers()])
def test_writers_replace_a_link_and_never_write_through_it(tmp_path, name, write):
    """Links at the destination and at the fixed temp names ``NAME.tmp`` / ``NAME.SUFFIX.tmp`` the original
    used: the victims stay untouched and the destination becomes a regular file."""
    out = tmp_path / "out"
    dest = out / "file.json"
    victims = [victim(tmp_path, f"v{i}.txt") for i in range(3)]
    for link, target in zip((dest, out / "file.json.tmp", out / "file.tmp"), victims):
        plant(link, target)
    write(dest)
    assert all(v.read_text() == PRECIOUS for v in victims)
    assert dest.is_file() and not dest.is_symlink()


@pytest.mark.parametrize("name,write", writers(), ids=[n for n, _ in writers()])
def test_writers_refuse_a_linked_parent_folder(tmp_path, name, write):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plant(tmp_path / "run" / "samples", elsewhere)
    with pytest.raises(atomic_io.UnsafePathError, match="symbolic link"):
        write(tmp_path / "run" / "samples" / "file.json")
    assert list(elsewhere.iterdir()) == []


def test_append_and_ensure_dir_refuse_links_fifos_and_hard_links(tmp_path):
    target = victim(tmp_path)
    plant(tmp_path / "metrics.jsonl", target)
    with pytest.raises(atomic_io.UnsafePathError, match="symbolic link"):
        atomic_io.append_text(tmp_path / "metrics.jsonl", "{}\n")
    os.link(target, tmp_path / "hard.jsonl")
    with pytest.raises(atomic_io.UnsafePathError, match="single link"):
        atomic_io.append_text(tmp_path / "hard.jsonl", "{}\n")
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(atomic_io.UnsafePathError, match="regular file"):  # and does not block waiting for a reader
        atomic_io.append_text(tmp_path / "fifo.jsonl", "{}\n")
    assert target.read_text() == PRECIOUS
    plant(tmp_path / "root" / "a", tmp_path)
    with pytest.raises(atomic_io.UnsafePathError, match="symbolic link"):
        atomic_io.ensure_dir(tmp_path / "root" / "a" / "b", root=tmp_path / "root")
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory) -> Path:
    from discrete_diffusion.cli import main

    run = tmp_path_factory.mktemp("rundir-planner") / "run"
    assert main(["train", "--out", str(run), "--no-progress", "process.name=uniform", "process.schedule=log-linear",
                 *with_overrides("train.steps=3", "train.eval_every=3", "train.checkpoint_every=3",
                                 "train.sample_every=100")]) == 0
    return run


def test_train_planner_never_writes_through_planted_links(ddiff, uniform_run, tmp_path):
    """train-planner trains with `ddiff train`'s loop: a link at config.yaml is refused in one line as there; links
    at the temp names and at the files written at the end (metrics.json, planner.safetensors) are replaced."""
    planner = uniform_run / "planner"
    shutil.rmtree(planner, ignore_errors=True)
    names = ["config.yaml.tmp", "metrics.json", "metrics.json.tmp", "planner.safetensors"]
    victims = {name: victim(tmp_path, f"victim{i}.txt") for i, name in enumerate(names)}
    for name, target in victims.items():
        plant(planner / name, target)
    res = ddiff("train-planner", uniform_run, "train.steps=2", "train.eval_every=2", "--no-progress")
    assert res.rc == 0, res
    assert all(v.read_text() == PRECIOUS for v in victims.values())
    for name in ("config.yaml", "metrics.json", "planner.safetensors"):
        assert (planner / name).is_file() and not (planner / name).is_symlink()
    shutil.rmtree(planner)
    target = victim(tmp_path, "victim-config.txt")
    plant(planner / "config.yaml", target)
    res = ddiff("train-planner", uniform_run, "train.steps=2", "train.eval_every=2", "--no-progress")
    one_line_error(res, "symbolic link", str(planner / "config.yaml"))
    assert target.read_text() == PRECIOUS
    shutil.rmtree(planner)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planner.symlink_to(elsewhere)
    try:
        res = ddiff("train-planner", uniform_run, "train.steps=2", "train.eval_every=2", "--no-progress")
        one_line_error(res, "symbolic link", str(planner))
        assert list(elsewhere.iterdir()) == []
    finally:
        planner.unlink()


# ----- item 7: one training per run directory ---------------------------------------------------------------------
def test_second_training_on_a_locked_directory_is_refused_at_once(ddiff, tmp_path):
    """Another process holds RUN/.lock (flock): a training there refuses before writing anything, naming the
    directory; once the lock is free the same command trains, and it releases the lock when it ends."""
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = ddiff("train", "--out", run, "--no-progress", *SHORT)
        one_line_error(res, "in use by another training", str(run))
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        os.close(fd)
    assert ddiff("train", "--out", run, "--no-progress", *SHORT).rc == 0
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the finished training
    finally:
        os.close(fd)


def test_resume_on_a_locked_directory_is_refused(ddiff, run_copy):
    before = tree(run_copy)
    fd = os.open(run_copy / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = ddiff("train", "--out", run_copy, "--resume", "--no-progress", "train.steps=7")
        one_line_error(res, "in use by another training", str(run_copy))
    finally:
        os.close(fd)
    after = tree(run_copy)
    after.pop(".lock")
    assert after == before
