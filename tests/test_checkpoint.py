"""Checkpoint save / load / resume tests (tiny CPU model, fast)."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from discrete_diffusion.runs.weights import find_latest_checkpoint, load_model_weights
from discrete_diffusion.train.checkpoint import load_checkpoint, save_checkpoint
from discrete_diffusion.train.ema import EMA
from discrete_diffusion.train.optim import build_optimizer, clip_gradients, warmup_cosine_schedule

VOCAB, DIM = 11, 8


class TinyNet(nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.hidden = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(2 * dim)
        self.drop = nn.Dropout(0.2)  # consumes the global torch RNG
        self.out = nn.Linear(2 * dim, VOCAB)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.emb(x) + noise
        return self.out(self.drop(self.norm(torch.tanh(self.hidden(h)))))


def make_run(seed: int, dim: int = DIM):
    torch.manual_seed(seed)
    model = TinyNet(dim)
    opt = build_optimizer(model, lr=3e-2, weight_decay=0.1, betas=(0.9, 0.95))
    sched = warmup_cosine_schedule(opt, warmup_steps=3, total_steps=20, min_lr_ratio=0.1)
    ema = EMA(model, decay=0.95)
    gen = torch.Generator().manual_seed(seed + 1)
    return model, opt, sched, ema, gen


def train(model, opt, sched, ema, gen, steps: int) -> None:
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (4, 6), generator=gen)
        noise = torch.randn(4, 6, model.emb.embedding_dim, generator=gen) * (np.random.rand() + random.random())
        target = torch.randint(0, VOCAB, (4, 6), generator=gen)
        loss = F.cross_entropy(model(x, noise).reshape(-1, VOCAB), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, 1.0)
        opt.step()
        sched.step()
        ema.update(model)


def save(directory, step, run, **kw):
    model, opt, sched, ema, gen = run
    return save_checkpoint(directory, step, model, opt, sched, ema, {"data": gen}, **kw)


def _peek_np_py() -> tuple[float, float]:
    """Next numpy / python draws, without consuming them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    out = (np.random.rand(), random.random())
    np.random.set_state(np_state)
    random.setstate(py_state)
    return out


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    run_a = make_run(0)
    np.random.seed(0)
    random.seed(0)
    train(*run_a, steps=5)
    config = {"model": {"dim": DIM, "vocab": VOCAB}, "train": {"lr": 3e-2, "betas": (0.9, 0.95)}}
    path = save(tmp_path, 5, run_a, extra={"config": config, "tokens": 120, "pair": (1, 2)})
    train(*run_a, steps=5)
    global_a = (torch.get_rng_state(), *_peek_np_py())

    run_b = make_run(123)  # different init, generator seed and global RNG streams
    np.random.seed(99)
    random.seed(99)
    torch.manual_seed(99)
    meta = load_checkpoint(path, *run_b[:4], rng_generators={"data": run_b[4]},
                           expected_config={"model": config["model"]})
    assert meta["step"] == 5 and meta["extra"] == {"tokens": 120, "pair": (1, 2)}
    assert meta["config"]["train"]["betas"] == [0.9, 0.95] and len(meta["config_hash"]) == 64
    train(*run_b, steps=5)

    (ma, oa, sa, ea, ga), (mb, ob, sb, eb, gb) = run_a, run_b
    for (name, ta), tb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert ea.shadow.keys() == eb.shadow.keys() and ea.num_updates == eb.num_updates == 10
    for name in ea.shadow:
        assert torch.equal(ea.shadow[name], eb.shadow[name]), name
    sda, sdb = oa.state_dict(), ob.state_dict()
    assert sda["param_groups"] == sdb["param_groups"]
    for idx in sda["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sda["state"][idx][key], sdb["state"][idx][key]), (idx, key)
    assert sa.state_dict() == sb.state_dict()
    assert torch.equal(torch.rand(5, generator=ga), torch.rand(5, generator=gb))
    # the global streams consumed by dropout / numpy / random continued identically
    assert torch.equal(torch.get_rng_state(), global_a[0])
    assert np.random.rand() == global_a[1] and random.random() == global_a[2]


def test_global_rng_streams_restored(tmp_path: Path) -> None:
    run = make_run(0)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's legacy state
    path = save(tmp_path, 1, run)
    expected = (torch.rand(4), np.random.randn(3), random.random(), torch.rand(4, generator=run[4]))
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    fresh = make_run(5)
    load_checkpoint(path, fresh[0], rng_generators={"data": fresh[4]})
    got = (torch.rand(4), np.random.randn(3), random.random(), torch.rand(4, generator=fresh[4]))
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
    assert torch.equal(expected[3], got[3])
    with pytest.raises(ValueError, match="noise"):
        load_checkpoint(path, fresh[0], rng_generators={"noise": torch.Generator()})


def test_keep_last_pruning(tmp_path: Path) -> None:
    run = make_run(0)
    for step in range(1, 6):
        save(tmp_path, step, run, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.endswith(".json")] == ["ckpt_00000004.json", "ckpt_00000005.json"]
    tensors = [n for n in names if n.endswith(".safetensors")]
    assert len(tensors) == 2 and tensors[0].startswith("ckpt_00000004.") and tensors[1].startswith("ckpt_00000005.")
    assert not [n for n in names if n.endswith(".tmp")]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "ckpt_00000005.json"
    # keep_last=1 while saving an older step keeps the one just written
    save(tmp_path, 3, run, keep_last=1)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["ckpt_00000003.json"]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def _tensors_file(manifest: Path) -> Path:
    return manifest.parent / json.loads(manifest.read_text())["tensors_file"]


def test_truncated_missing_or_garbage_checkpoints_are_skipped(tmp_path: Path) -> None:
    run = make_run(0)
    first = save(tmp_path, 1, run)
    train(*run, steps=1)
    second = save(tmp_path, 2, run)
    assert find_latest_checkpoint(tmp_path) == second

    tensors = _tensors_file(second)
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    assert find_latest_checkpoint(tmp_path) == first
    with pytest.raises(ValueError, match=tensors.name):
        load_checkpoint(second, make_run(0)[0])

    tensors.write_bytes(data)
    assert find_latest_checkpoint(tmp_path) == second
    second.write_text('{"format": "discrete_diffusion.chec')  # torn manifest
    assert find_latest_checkpoint(tmp_path) == first
    with pytest.raises(ValueError, match=second.name):
        load_checkpoint(second, make_run(0)[0])
    second.unlink()
    assert find_latest_checkpoint(tmp_path) == first
    _tensors_file(first).unlink()
    assert find_latest_checkpoint(tmp_path) is None
    assert find_latest_checkpoint(tmp_path / "nope") is None


@pytest.mark.parametrize("fail_on", [".safetensors", ".json"])
def test_crash_mid_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch, fail_on: str) -> None:
    run = make_run(0)
    first = save(tmp_path, 1, run)
    saved_weights = {k: v.clone() for k, v in run[0].state_dict().items()}
    train(*run, steps=2)

    real_replace = os.replace

    def crashing_replace(src, dst):
        if str(dst).endswith(fail_on):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save(tmp_path, 3, run)
    monkeypatch.setattr(os, "replace", real_replace)

    assert not list(tmp_path.glob(".*.tmp"))
    assert find_latest_checkpoint(tmp_path) == first
    fresh = make_run(9)[0]
    assert load_checkpoint(tmp_path, fresh)["step"] == 1
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved_weights[k]), k
    # a later save succeeds and clears the orphaned tensors file of the crashed one
    third = save(tmp_path, 3, run)
    assert find_latest_checkpoint(tmp_path) == third
    assert len(list(tmp_path.glob("ckpt_00000003.*.safetensors"))) == 1


def test_crash_while_resaving_same_step_keeps_old_version(tmp_path: Path, monkeypatch) -> None:
    run = make_run(0)
    path = save(tmp_path, 4, run)
    old = {k: v.clone() for k, v in run[0].state_dict().items()}
    train(*run, steps=1)
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("boom")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="boom"):
        save(tmp_path, 4, run)
    monkeypatch.undo()
    assert find_latest_checkpoint(tmp_path) == path
    fresh = make_run(1)[0]
    load_checkpoint(path, fresh)
    assert all(torch.equal(v, old[k]) for k, v in fresh.state_dict().items())


def test_expected_config_mismatch_names_keys(tmp_path: Path) -> None:
    run = make_run(0)
    cfg = {"model": {"dim": DIM, "vocab": VOCAB, "act": "tanh"}, "train": {"lr": 0.1}}
    path = save(tmp_path, 1, run, extra={"config": cfg})
    load_checkpoint(path, make_run(1)[0], expected_config={"model": cfg["model"]})  # matches
    with pytest.raises(ValueError) as err:
        load_checkpoint(path, make_run(1)[0], expected_config={"model": {"dim": 16, "vocab": VOCAB, "act": "gelu"}})
    msg = str(err.value)
    assert "model.dim" in msg and "16" in msg and "model.act" in msg and "'gelu'" in msg and "model.vocab" not in msg
    with pytest.raises(ValueError, match="model.layers"):
        load_checkpoint(path, make_run(1)[0], expected_config={"model": {"layers": 2}})
    no_cfg = save(tmp_path / "b", 1, run)
    with pytest.raises(ValueError, match="no config"):
        load_checkpoint(no_cfg, make_run(1)[0], expected_config={"model": {"dim": DIM}})


def test_wrong_shapes_or_names_raise(tmp_path: Path) -> None:
    path = save(tmp_path, 1, make_run(0))
    bigger = make_run(0, dim=16)
    before = {k: v.clone() for k, v in bigger[0].state_dict().items()}
    with pytest.raises(ValueError, match=r"hidden\.weight"):
        load_checkpoint(path, *bigger[:4])
    assert all(torch.equal(v, before[k]) for k, v in bigger[0].state_dict().items())  # untouched
    extended = TinyNet()
    extended.register_buffer("extra_buf", torch.zeros(2))
    with pytest.raises(ValueError, match=r"missing tensors \['extra_buf'\]"):
        load_checkpoint(path, extended)
    with pytest.raises(ValueError, match=r"unexpected tensors \['calls'"):
        smaller = TinyNet()
        del smaller.calls
        load_checkpoint(path, smaller)
    with pytest.raises(ValueError, match=r"EMA.*hidden\.weight"):
        load_checkpoint(path, TinyNet(), ema=EMA(TinyNet(16)))
    model_only = save_checkpoint(tmp_path / "model_only", 1, TinyNet())
    with pytest.raises(ValueError, match="no optimizer state"):
        run = make_run(0)
        load_checkpoint(model_only, run[0], run[1])


def test_load_model_weights_prefers_ema(tmp_path: Path) -> None:
    run = make_run(0)
    np.random.seed(0)
    random.seed(0)
    train(*run, steps=3)
    path = save(tmp_path, 3, run)
    model = make_run(4)[0]
    assert load_model_weights(path, model)["weights"] == "ema"
    for name, t in model.state_dict().items():
        want = run[3].shadow[name] if name in run[3].shadow else run[0].state_dict()[name]
        assert torch.equal(t, want), name
    assert load_model_weights(tmp_path, model, use_ema=False)["weights"] == "model"
    for (name, t), want in zip(model.state_dict().items(), run[0].state_dict().values()):
        assert torch.equal(t, want), name


def test_no_pickle_anywhere(tmp_path: Path, monkeypatch) -> None:
    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    for mod, names in ((pickle, ("dump", "dumps", "load", "loads")), (torch, ("save", "load"))):
        for n in names:
            monkeypatch.setattr(mod, n, forbidden)
    run = make_run(0)
    train(*run, steps=1)
    path = save(tmp_path, 1, run, extra={"config": {"a": 1}})
    fresh = make_run(1)
    load_checkpoint(path, *fresh[:4], rng_generators={"data": fresh[4]})
    load_model_weights(path, fresh[0])
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".json", ".safetensors")]
