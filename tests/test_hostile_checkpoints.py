"""Hostile checkpoint directories (issue 11): bad manifests are skipped with a warning, bad state fields give a
one-line ValueError before anything is restored, non-finite or wrong-dtype weights are refused, pruning counts
only verified checkpoints, and saving is byte-reproducible."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import shutil
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from conftest import with_overrides
from safetensors.torch import load, save
from torch import nn

from discrete_diffusion.runs.checkpoint_files import MAX_MANIFEST_BYTES, canonical_safetensors
from discrete_diffusion.runs.weights import find_latest_checkpoint, load_model_weights
from discrete_diffusion.train.checkpoint import load_checkpoint, save_checkpoint
from discrete_diffusion.train.ema import EMA
from discrete_diffusion.train.optim import build_optimizer, warmup_cosine_schedule
from discrete_diffusion.train.trainer import best_record


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def make_run(seed: int) -> tuple:
    torch.manual_seed(seed)
    model = Tiny()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = warmup_cosine_schedule(opt, warmup_steps=2, total_steps=10)
    ema = EMA(model, decay=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    return model, opt, sched, ema, gen


def step(run: tuple) -> None:
    model, opt, sched, ema, gen = run
    loss = model.norm(model.lin(torch.randn(5, 3, generator=gen))).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    ema.update(model)


def save_run(directory: Path, at: int, run: tuple, **kw: Any) -> Path:
    model, opt, sched, ema, gen = run
    return save_checkpoint(directory, at, model, opt, sched, ema, {"data": gen},
                           extra={"best": [1.5, at]}, keep_last=kw.pop("keep_last", None), **kw)


def load_run(path: Path, run: tuple, **kw: Any) -> dict:
    model, opt, sched, ema, gen = run
    return load_checkpoint(path, model, opt, sched, ema, {"data": gen}, **kw)


def two_checkpoints(directory: Path) -> tuple[Path, Path]:
    run = make_run(0)
    step(run)
    first = save_run(directory, 1, run)
    step(run)
    return first, save_run(directory, 2, run)


def snapshot(run: tuple) -> Any:
    """Everything a load could touch: weights, optimizer, scheduler, EMA, the named and global RNGs."""
    model, opt, sched, ema, gen = run
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict()),
            copy.deepcopy(ema.state_dict()), gen.get_state(), torch.get_rng_state(), np.random.get_state()[1].copy(),
            random.getstate())


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def edit(manifest: Path, fn: Callable[[dict], None]) -> None:
    meta = json.loads(manifest.read_text())
    fn(meta)
    manifest.write_text(json.dumps(meta))


def rewrite_tensors(manifest: Path, fn: Callable[[dict], None]) -> None:
    """Change the tensors of a checkpoint and re-seal it (a consistent SHA-256, size and file name), as an
    attacker or a buggy tool could."""
    meta = json.loads(manifest.read_text())
    old = manifest.parent / meta["tensors_file"]
    tensors = load(old.read_bytes())
    fn(tensors)
    blob = canonical_safetensors(save(tensors))
    digest = hashlib.sha256(blob).hexdigest()
    name = f"{manifest.stem}.{digest[:12]}.safetensors"
    old.unlink()
    (manifest.parent / name).write_bytes(blob)
    meta.update(tensors_file=name, tensors_sha256=digest, tensors_bytes=len(blob))
    manifest.write_text(json.dumps(meta))


# --------------------------------------------------------------------------- issue 3: bad manifests


def _set(path: str, value: Any) -> Callable[[dict], None]:
    keys = path.split(".")

    def fn(meta: dict) -> None:
        node = meta
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last: Any = int(keys[-1]) if isinstance(node, list) else keys[-1]
        node[last] = value(node[last]) if callable(value) else value
    return fn


RAW_MANIFESTS: dict[str, Callable[[str], str]] = {
    "format_version=1e999": lambda text: text.replace('"format_version": 1', '"format_version": 1e999'),
    "deep-nesting": lambda text: text.replace('"extra": {',
                                              '"extra": {"deep": ' + "[" * 100_000 + "]" * 100_000 + ", "),
    "padded-past-the-bound": lambda text: text + " " * (MAX_MANIFEST_BYTES + 1),
}
FIELD_MANIFESTS: dict[str, tuple[str, Any]] = {
    "format_version=[1]": ("format_version", [1]),
    "format_version=null": ("format_version", None),
    "format_version=2": ("format_version", 2),
    "step=-10": ("step", -10),
    "step=1e30": ("step", 10**30),
    "step=other-than-file-name": ("step", 7),
    "step=true": ("step", True),
    "rng=x": ("rng", "x"),
    "optimizer={}": ("optimizer", {}),
    "ema.num_updates=null": ("ema.num_updates", None),
    "ema.decay=2": ("ema.decay", 2.0),
    "tensors_sha256=list": ("tensors_sha256", ["a"]),
    "tensors_file=traversal": ("tensors_file", "../ckpt_00000002.abc.safetensors"),
    "tensors_bytes=-1": ("tensors_bytes", -1),
    "config=list": ("config", [1]),
}


@pytest.mark.parametrize("case", list(RAW_MANIFESTS) + list(FIELD_MANIFESTS))
def test_bad_manifest_is_skipped_and_refused_before_restoring(tmp_path: Path, case: str, caplog) -> None:
    first, second = two_checkpoints(tmp_path)
    if case in RAW_MANIFESTS:
        second.write_text(RAW_MANIFESTS[case](second.read_text()))
    else:
        edit(second, _set(*FIELD_MANIFESTS[case]))
    with caplog.at_level(logging.WARNING):
        assert find_latest_checkpoint(tmp_path) == first  # skipped, the previous valid one is found
    assert any(second.name in r.getMessage() for r in caplog.records)
    run = make_run(5)
    load_run(tmp_path, run)  # and it loads
    fresh = make_run(9)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match=second.name) as err:
        load_run(second, fresh)
    assert "\n" not in str(err.value)
    assert same(before, snapshot(fresh))


def test_huge_manifest_is_refused_before_reading(tmp_path: Path) -> None:
    """An 8 GiB (sparse) manifest: refused from its size, without reading it (the old code read it all)."""
    first, second = two_checkpoints(tmp_path)
    with open(second, "r+b") as f:
        f.truncate(8 << 30)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        assert find_latest_checkpoint(tmp_path) == first
        with pytest.raises(ValueError, match=rf"{second.name}: {8 << 30} bytes, more than"):
            load_run(second, make_run(1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20 and time.perf_counter() - start < 5


# --------------------------------------------------------------------------- issue 4: bad state fields


STATE_FIELDS: dict[str, tuple[str, Any, str]] = {
    "optimizer lr=fast": ("optimizer.state_dict.param_groups.0.lr", "fast", "'lr' is 'fast'"),
    "optimizer lr=-1": ("optimizer.state_dict.param_groups.0.lr", -1.0, "'lr' is -1.0"),
    "optimizer betas=[0.9]": ("optimizer.state_dict.param_groups.0.betas", {"__tuple__": [0.9]}, "'betas'"),
    "optimizer no lr": ("optimizer.state_dict.param_groups.1", lambda g: {k: v for k, v in g.items() if k != "lr"},
                        "lacks 'lr'"),
    "optimizer params=[a]": ("optimizer.state_dict.param_groups.0.params", ["a"], "parameter indices"),
    "optimizer state of no parameter": ("optimizer.state_dict.state.__items__.0.0", 99, "parameter 99"),
    "optimizer class": ("optimizer.class", "SGD", "holds SGD state"),
    "scheduler unknown key": ("scheduler.state_dict.optimizer", 5, "unknown keys"),
    "scheduler last_epoch=x": ("scheduler.state_dict.last_epoch", "x", "'last_epoch'"),
    "rng torch_cpu=1": ("rng.torch_cpu", 1, "torch_cpu"),
    "rng numpy pos=9999": ("rng.numpy.pos", 9999, "numpy.pos"),
    "rng python=x": ("rng.python", "x", "RNG state python"),
    "rng python words": ("rng.python.1", [2**33] * 624 + [624], "RNG state python"),
    "rng generator missing": ("rng.generators", {}, "no saved RNG state for generator"),
    "extra.best=x": ("extra.best", "x", "extra.best"),
    "extra.best=[1]": ("extra.best", [1], "extra.best"),
    "extra.best step in the future": ("extra.best", [1.0, 99], "extra.best"),
    "tensor marker=[1]": ("rng.torch_cpu", {"__tensor__": [1]}, "references tensor"),
    "items marker=5": ("optimizer.state_dict.state", {"__items__": 5}, "__items__"),
}


@pytest.mark.parametrize("case", list(STATE_FIELDS))
def test_bad_state_field_is_refused_before_anything_is_restored(tmp_path: Path, case: str) -> None:
    _, second = two_checkpoints(tmp_path)
    path, value, message = STATE_FIELDS[case]
    edit(second, _set(path, value))
    fresh = make_run(9)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match=message) as err:
        load_run(second, fresh, check_extra=best_record)
    assert "\n" not in str(err.value)
    assert same(before, snapshot(fresh))


def test_step_beyond_the_run_is_refused(tmp_path: Path) -> None:
    _, second = two_checkpoints(tmp_path)
    fresh = make_run(9)
    with pytest.raises(ValueError, match="at step 2, beyond the run's last step 1"):
        load_run(second, fresh, max_step=1)
    assert load_run(second, fresh, max_step=2)["step"] == 2


def test_resume_skips_a_hostile_newest_manifest(tmp_path: Path, ddiff) -> None:
    """End to end: a newest manifest with step -10 is skipped with a warning; --resume continues from the
    valid one (the old code wrote ckpt_-0000009.* and crashed)."""
    run = tmp_path / "run"
    assert ddiff("train", "--out", run, "--no-progress", *with_overrides("train.steps=1")).rc == 0
    good = find_latest_checkpoint(run / "checkpoints")
    hostile = run / "checkpoints" / "ckpt_00000009.json"
    meta = json.loads(good.read_text())
    meta["step"] = -10
    hostile.write_text(json.dumps(meta))
    res = ddiff("train", "--out", run, "--resume", "--no-progress", *with_overrides("train.steps=2"))
    assert res.rc == 0, res
    assert not list((run / "checkpoints").glob("ckpt_-*"))
    assert find_latest_checkpoint(run / "checkpoints").name == "ckpt_00000002.json"


@pytest.mark.parametrize("best, steps, message", [("x", 3, "extra.best is x;"), ([1], 3, "extra.best is [1];"),
                                                   ([0.5, 2], 1, "at step 2, beyond the run's last step 1")])
def test_resume_refuses_bad_best_or_a_step_beyond_the_run(tmp_path: Path, ddiff, best, steps: int, message) -> None:
    """Through `ddiff train --resume`: a bad extra.best (the old code: a traceback) and a checkpoint past
    train.steps (the old code: nothing trained, exit 0) are one-line errors before anything is restored."""
    run = tmp_path / "run"
    assert ddiff("train", "--out", run, "--no-progress", *with_overrides("train.steps=2")).rc == 0
    edit(find_latest_checkpoint(run / "checkpoints"), _set("extra.best", best))
    res = ddiff("train", "--out", run, "--resume", "--no-progress", *with_overrides(f"train.steps={steps}"))
    assert res.rc == 2 and "Traceback" not in res.err, res
    assert message in res.err


# --------------------------------------------------------------------------- issue 5: checkpoint content


def _nan_weight(tensors: dict) -> None:
    tensors["model.lin.weight"][0, 0] = float("nan")


def _inf_ema(tensors: dict) -> None:
    tensors["ema.norm.bias"][1] = float("inf")


def _double_weight(tensors: dict) -> None:
    tensors["model.lin.weight"] = tensors["model.lin.weight"].double()


def _half_ema(tensors: dict) -> None:
    tensors["ema.lin.bias"] = tensors["ema.lin.bias"].half()


@pytest.mark.parametrize("fault, message", [(_nan_weight, "non-finite"), (_inf_ema, "non-finite"),
                                            (_double_weight, "dtype mismatch for 'lin.weight'"),
                                            (_half_ema, "dtype mismatch for 'lin.bias'")])
def test_non_finite_or_wrong_dtype_weights_are_refused(tmp_path: Path, fault, message: str) -> None:
    _, second = two_checkpoints(tmp_path)
    rewrite_tensors(second, fault)
    assert find_latest_checkpoint(tmp_path) == second  # a sealed file: only the content check catches it
    fresh = make_run(9)
    before = snapshot(fresh)
    with pytest.raises(ValueError, match=message):
        load_run(second, fresh)
    with pytest.raises(ValueError, match=message):
        load_model_weights(second, fresh[0], use_ema=True)
    if fault in (_nan_weight, _double_weight):
        with pytest.raises(ValueError, match=message):
            load_model_weights(second, fresh[0], use_ema=False)
    assert same(before, snapshot(fresh))


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_cli_refuses_nan_weights(ddiff, trained_run: Path, tmp_path: Path, command: str) -> None:
    """`ddiff sample` / `evaluate` go through the same loader: NaN weights are an error, not "NLL <= nan"."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for sub in ("best", "checkpoints"):
        for manifest in (run / sub).glob("ckpt_*.json"):
            rewrite_tensors(manifest, lambda t: [v.fill_(float("nan")) for k, v in t.items()
                                                 if k.startswith(("model.", "ema.")) and v.is_floating_point()])
    extra = ["--out", tmp_path / "out", "--num", "2", "--steps", "2"] if command == "sample" else ["--t-samples", "1"]
    res = ddiff(command, run, *extra, "--no-progress")
    assert res.rc == 2, res
    assert "non-finite values (NaN or inf)" in res.err and "Traceback" not in res.err


# --------------------------------------------------------------------------- issue 8: pruning


@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_pruning_counts_only_verified_checkpoints(tmp_path: Path, fault: str) -> None:
    first, second = two_checkpoints(tmp_path)
    # a parseable manifest for step 3 whose tensors file is missing / does not match its SHA-256
    meta = json.loads(second.read_text())
    digest = "0" * 64 if fault == "missing" else meta["tensors_sha256"]
    meta.update(step=3, tensors_sha256=digest, tensors_file=f"ckpt_00000003.{digest[:12]}.safetensors")
    if fault == "corrupt":
        (tmp_path / meta["tensors_file"]).write_bytes(b"x" * meta["tensors_bytes"])
    (tmp_path / "ckpt_00000003.json").write_text(json.dumps(meta))
    run = make_run(3)
    save_run(tmp_path, 4, run, keep_last=2)
    assert second.exists() and (tmp_path / json.loads(second.read_text())["tensors_file"]).exists()
    assert not first.exists()
    tensors_files = sorted(p.name[:13] for p in tmp_path.glob("*.safetensors"))
    assert "ckpt_00000001" not in tensors_files
    (tmp_path / "ckpt_00000004.json").unlink()
    assert find_latest_checkpoint(tmp_path) == second  # the bad step 3 is skipped, step 2 still loads
    load_run(tmp_path, make_run(7))


# --------------------------------------------------------------------------- issue 12: reproducibility


def test_saving_the_same_state_gives_identical_bytes(tmp_path: Path) -> None:
    run = make_run(0)
    step(run)
    digests = set()
    for i in range(8):
        manifest = save_run(tmp_path / str(i), 1, run)
        digests.add(hashlib.sha256((manifest.parent / json.loads(manifest.read_text())["tensors_file"])
                                   .read_bytes()).hexdigest())
    assert len(digests) == 1
    tensors = load((manifest.parent / json.loads(manifest.read_text())["tensors_file"]).read_bytes())
    assert torch.equal(tensors["model.lin.weight"], run[0].lin.weight)


def test_thread_count_is_recorded_and_checked_on_resume(tmp_path: Path) -> None:
    _, second = two_checkpoints(tmp_path)
    threads = torch.get_num_threads()
    assert json.loads(second.read_text())["torch_num_threads"] == threads
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(second, make_run(1))  # same count: no warning
    try:
        torch.set_num_threads(threads + 1)
        with pytest.warns(UserWarning, match=rf"torch.get_num_threads\(\) = {threads}.*not bit-identical"):
            load_run(second, make_run(1))
    finally:
        torch.set_num_threads(threads)
