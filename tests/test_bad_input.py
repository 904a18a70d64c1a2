"""Bad input gets a clear error (docs/bad-input.md): each case through `ddiff`, one line on stderr starting
``ddiff COMMAND: error:``, exit code 2, no traceback, and nothing written for a run that never started."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, with_overrides

from discrete_diffusion.data import load_dataset
from discrete_diffusion.data.fashion_mnist import FASHION_MNIST_FILES
from discrete_diffusion.processes import PROCESSES
from discrete_diffusion.samplers import SAMPLERS
from discrete_diffusion.schedules import SCHEDULES


def refused(ddiff, out: Path, *overrides: str, command: str = "train") -> str:
    res = ddiff("train", "--out", out, "--no-progress", *with_overrides(*overrides))
    assert res.rc == 2, res
    assert res.err.startswith(f"ddiff {command}: error:") and "Traceback" not in res.err
    assert res.err.count("\n") == 1  # one line
    return res.err


def array_file(tmp_path: Path, data: np.ndarray, name: str = "bad.npy") -> Path:
    path = tmp_path / name
    np.save(path, data)
    return path


# ----- user data ------------------------------------------------------------------------------------------------
GOOD = np.random.default_rng(0).integers(0, 4, size=(20, 8, 8))


@pytest.mark.parametrize("case, data, fragments", [
    ("negative", np.where(np.arange(20 * 64).reshape(20, 8, 8) == 5, -3, GOOD), ["negative", "min found -3"]),
    ("nan", np.where(np.arange(20 * 64).reshape(20, 8, 8) == 5, np.nan, GOOD.astype(float)), ["NaN"]),
    ("float", GOOD + 0.5, ["non-integral value", ".5 at index", "states must be integers"]),
    ("empty", np.zeros((0, 8, 8), dtype=np.int64), ["empty"]),
    ("1-d", np.arange(10), ["at least 2 dimensions"]),
    ("strings", np.array([["a", "b"], ["c", "d"]]), ["dtype <U1", "expected integer states"]),
], ids=["negative", "nan", "float", "empty", "1-d", "strings"])
def test_bad_user_array_is_refused(ddiff, tmp_path, case, data, fragments):
    path = array_file(tmp_path, data)
    err = refused(ddiff, tmp_path / "run", "data.name=array", f"data.path={path}")
    assert "bad.npy" in err
    for fragment in fragments:
        assert fragment in err, (case, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("shape", [(20, 64), (20, 3)])
def test_sequence_data_with_image_backbone_is_refused(ddiff, tmp_path, shape):
    """The error names the backbones that fit: (N, 3) vectors and (N, 64) sequences need mlp or transformer."""
    path = array_file(tmp_path, GOOD.reshape(20, 64)[:, :shape[1]])
    err = refused(ddiff, tmp_path / "run", "data.name=array", f"data.path={path}")
    assert "backbone 'unet' needs images" in err and f"({shape[1]},)" in err
    assert "use model.backbone=transformer or model.backbone=mlp" in err
    assert not (tmp_path / "run").exists()


def test_image_augmentation_on_sequences_names_the_fix(ddiff, tmp_path):
    path = array_file(tmp_path, GOOD.reshape(20, 64))
    err = refused(ddiff, tmp_path / "run", "data.name=array", f"data.path={path}", "model.backbone=mlp",
                  "train.augment=shift")
    assert "needs image data" in err and "use train.augment=none" in err


def test_truncated_idx_file_is_refused(tmp_path):
    """Fashion-MNIST files cut short (checksums off, as for a user's own copy): the message names the file."""
    for stem, (_, _, shape) in FASHION_MNIST_FILES.items():
        arr = np.zeros((3,) + tuple(shape[1:]), dtype=np.uint8)
        header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    victim = tmp_path / "train-images-idx3-ubyte.gz"
    victim.write_bytes(gzip.compress(gzip.decompress(victim.read_bytes())[:-5]))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated IDX file"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False, verify=False)
    victim.write_bytes(victim.read_bytes()[:30])  # a cut gzip stream
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*corrupt or truncated gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False, verify=False)


# ----- names ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, kind, registry", [
    ("process.name=brownian", "process", PROCESSES),
    ("process.schedule=zigzag", "schedule", SCHEDULES),
    ("sample.sampler=teleport", "sampler", SAMPLERS),
    ("model.backbone=resnet9000", "backbone", ["unet", "mlp"]),
    ("train.weighting=heavy", "weighting", ["elbo", "instantaneous", "finite-time"]),
])
def test_unknown_name_lists_valid_ones(ddiff, tmp_path, override, kind, registry):
    err = refused(ddiff, tmp_path / "run", override)
    assert f"unknown {kind}" in err and override.split("=")[1] in err
    for name in registry:
        assert name in err, (name, err)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----- impossible settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, fragment", [
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.steps=-5", "train.steps must be >= 1, got -5"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.grad_accumulation=0", "train.grad_accumulation must be >= 1, got 0"),
    ("train.grad_accumulation=3", "must be divisible by world size x train.grad_accumulation (1 x 3 = 3)"),
    ("train.precision=fp16", "unknown train.precision 'fp16'; valid: fp32, bf16"),
    ("train.eval_every=0", "train.eval_every must be >= 1"),
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1"),
    ("train.keep_last=0", "train.keep_last must be >= 1"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.ema_decay=1.5", "train.ema_decay must lie in [0, 1]"),
    ("sample.steps=0", "num_steps must be an integer in 1..1000000, got 0"),
])
def test_impossible_setting_is_refused_before_anything_is_written(ddiff, tmp_path, override, fragment):
    err = refused(ddiff, tmp_path / "run", override)
    assert fragment in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, alpha1", [
    (["process.schedule=log-linear", "process.eps=0.4"], "0.4"),
    (["process.schedule=cosine", "process.eps=0.2"], "0.2"),
    (["process.t_end=4"], "0.01832"),
])
def test_schedule_that_does_not_reach_noise_is_refused(ddiff, tmp_path, overrides, alpha1):
    err = refused(ddiff, tmp_path / "run", *overrides)
    assert f"alpha(1) = {alpha1}" in err and "alpha(1) <= 0.01" in err
    assert not (tmp_path / "run").exists()


# ----- config files and overrides --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, fragment", [
    ("train: {steps: 3\n", "not valid YAML"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("train:\n  stepz: 3\n", "stepz"),
])
def test_malformed_config_file_is_refused(ddiff, tmp_path, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    res = ddiff("train", "--config", config, "--out", tmp_path / "run", "--no-progress", *TINY)
    assert res.rc == 2 and fragment in res.err and "Traceback" not in res.err, res


def test_non_utf8_config_file_is_refused(ddiff, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("train:\n  device: caf\xe9\n".encode("latin-1"))
    res = ddiff("train", "--config", config, "--out", tmp_path / "run", "--no-progress", *TINY)
    assert res.rc == 2 and "latin1.yaml" in res.err and "Traceback" not in res.err, res


@pytest.mark.parametrize("override", ["train.steps=[", "=3", "train..steps=3", "train.steps=${nope}", "0=\x1f",
                                      "model.channel_mults={}"])
def test_malformed_override_is_refused(ddiff, tmp_path, override):
    err = refused(ddiff, tmp_path / "run", override)
    assert "override" in err or "invalid configuration" in err


# ----- checkpoints from a different config ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_checkpoint_from_a_different_config_is_refused(ddiff, trained_run, tmp_path, command):
    """config.yaml edited after training (same tensor shapes, different process): the saved weights do not
    belong to it, and loading says which key differs."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("t_end: 15.0", "t_end: 12.0"))
    extra = ["--out", tmp_path / "s", "--num", 2, "--steps", 2] if command == "sample" else ["--t-samples", 1]
    res = ddiff(command, run, *extra, "--no-progress")
    assert res.rc == 2, res
    assert "process.t_end" in res.err and "15.0" in res.err and "12.0" in res.err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_is_refused(ddiff, tmp_path):
    err = refused(ddiff, tmp_path / "run", "train.device=cuda")
    assert "CUDA is not available" in err and "device=cpu" in err
    assert not (tmp_path / "run").exists()


def test_run_from_before_an_option_existed_still_loads(ddiff, trained_run, tmp_path):
    """A checkpoint whose stored config lacks a key (an option added later) is not refused for that key."""
    import json

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for manifest in list(run.glob("best/ckpt_*.json")) + list(run.glob("checkpoints/ckpt_*.json")):
        meta = json.loads(manifest.read_text())
        del meta["config"]["model"]["hidden"]
        manifest.write_text(json.dumps(meta))
    res = ddiff("evaluate", run, "--t-samples", 1, "--no-progress")
    assert res.rc == 0, res
