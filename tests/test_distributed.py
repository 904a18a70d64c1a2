"""Scale out: two gloo processes under torchrun train the same weights as one process on the same global
batch; sampling and evaluation split over ranks; gradient accumulation and bf16 autocast."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, with_overrides
from safetensors.torch import load_file

from discrete_diffusion import distributed
from discrete_diffusion.builders import build_sampler_from
from discrete_diffusion.cli import main
from discrete_diffusion.config import load_config
from discrete_diffusion.distributed import env_world, pool_mean_stderr, rank_seed, sample_sharded, shard_bounds
from discrete_diffusion.likelihood import LikelihoodResult, likelihood_stats, pooled_likelihood
from discrete_diffusion.pipeline import evaluate_run, generate_samples, load_run
from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.train.trainer import Trainer, check_train_config

# Dropout off: dropout masks are drawn per rank, so they cannot match a single process.
DDP = with_overrides("train.steps=3", "train.eval_every=3", "train.checkpoint_every=3", "train.sample_every=3",
                     "model.dropout=0.0", "sample.steps=2")


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m discrete_diffusion.cli ARGS`` on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "discrete_diffusion.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def checkpoint_tensors(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = find_latest_checkpoint(run_dir / "checkpoints")
    meta = json.loads(manifest.read_text())
    return meta, load_file(str(manifest.parent / meta["tensors_file"]))


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "single"
    assert main(["train", "--out", str(run), "--no-progress", *DDP]) == 0
    return run


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    run = tmp_path_factory.mktemp("ddp") / "two"
    proc = torchrun("train", "--out", str(run), "--no-progress", *DDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


def test_two_gloo_processes_match_one_process(single_run, two_process_run):
    run, proc = two_process_run
    meta_1, one = checkpoint_tensors(single_run)
    meta_2, two = checkpoint_tensors(run)
    assert meta_1["step"] == meta_2["step"] == 3
    assert sorted(one) == sorted(two)
    compared = [k for k in one if k.startswith(("model.", "ema.", "optim."))]
    assert any(k.startswith("model.") for k in compared) and any(".exp_avg" in k for k in compared)
    for key in compared:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # every rank drew the same global batch: the data and noise generators advanced exactly alike
    for key in ("rng.generators.data", "rng.generators.noise"):
        assert torch.equal(one[key], two[key]), key
    # the weights moved: the comparison is not trivially true
    init = Trainer(load_config(None, DDP), run.parent / "unused", progress=False).denoiser.state_dict()
    assert any(not torch.allclose(one[f"model.{k}"], v) for k, v in init.items() if v.is_floating_point())
    # only rank 0 reports and writes; the logged loss is the all-reduced global mean
    assert proc.stdout.count("trained to step 3") == 1
    rec_1 = [r for r in read_metrics(single_run) if "loss" in r]
    rec_2 = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rec_2] == [r["step"] for r in rec_1] == [3]
    assert rec_2[0]["loss"] == pytest.approx(rec_1[0]["loss"], rel=1e-5)
    assert rec_2[0]["train_elbo_diffusion_bpd"] == pytest.approx(rec_1[0]["train_elbo_diffusion_bpd"], rel=1e-5)
    assert rec_2[0]["grad_norm"] == pytest.approx(rec_1[0]["grad_norm"], rel=1e-4)  # Adam hides a gradient scale
    vals = [r for r in read_metrics(run) if "val_nll_bits_per_dim" in r]
    assert len(vals) == 1 and math.isfinite(vals[0]["val_nll_bits_per_dim"])
    assert (run / "samples" / "step_00000003.png").is_file()  # 32 + 32 samples gathered on rank 0
    assert not list(run.glob("**/*.tmp"))


def test_evaluate_split_over_two_processes(single_run):
    """`ddiff evaluate` under torchrun pools both ranks' shards: all 150 validation images, printed once."""
    proc = torchrun("evaluate", str(single_run), "--json", "--split", "val", "--t-samples", "1",
                    "--checkpoint", "latest", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout)  # printed once, by rank 0
    assert payload["num_examples"] == 150 and payload["split"] == "val"
    run = load_run(single_run, "latest", "cpu")
    one = evaluate_run(run, "val", t_samples=1, progress=False)
    assert abs(payload["nll_bits_per_dim"] - one.nll_bits_per_dim) < 5 * one.nll_bits_per_dim_stderr
    assert payload["nll_bits_per_dim_stderr"] == pytest.approx(one.nll_bits_per_dim_stderr, rel=0.5)


@pytest.mark.slow
def test_sample_split_over_two_processes(single_run, tmp_path):
    """`ddiff sample` under torchrun: each rank draws its share from its own stream; rank 0 gathers and writes."""
    out = tmp_path / "samples"
    proc = torchrun("sample", str(single_run), "--num-samples", "5", "--steps", "3", "--seed", "7",
                    "--checkpoint", "latest", "--out", str(out), "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    x = torch.from_numpy(np.load(out / "bridge_3steps_seed7.npy"))
    run = load_run(single_run, "latest", "cpu")
    sampler = build_sampler_from(run.config, steps=3)
    rank0 = generate_samples(run, sampler, 3, seed=7, progress=False)  # shard_bounds(5, 0, 2) = (0, 3)
    rank1 = generate_samples(run, sampler, 2, seed=rank_seed(7, 1), progress=False)
    assert torch.equal(x, torch.cat([rank0, rank1]))


def test_sample_sharding_splits_counts_and_streams(monkeypatch):
    """What each of 3 ranks draws for 7 samples (the gather itself runs in the two-process training test,
    whose sample grid is drawn over both ranks)."""
    calls = {}
    monkeypatch.setattr(distributed, "gather_shards", lambda ctx, local, total: local)
    for rank in range(3):
        ctx = distributed.DistContext(rank=rank, world_size=3)
        got = sample_sharded(ctx, lambda n, seed: calls.setdefault(rank, (n, seed)) and torch.zeros((n, 2)), 7, (2,), 5)
        assert got.shape == (calls[rank][0], 2)
    assert calls == {0: (3, 5), 1: (2, rank_seed(5, 1)), 2: (2, rank_seed(5, 2))}
    assert len({rank_seed(5, r) for r in range(100)}) == 100


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    """Two micro-batches of 4 train the same weights as one batch of 8 (the same 8 examples and noise)."""
    def train(name: str, *extra: str) -> dict[str, torch.Tensor]:
        config = load_config(None, with_overrides("train.eval_every=100", "train.sample_every=100", *extra, base=DDP))
        trainer = Trainer(config, tmp_path / name, progress=False, log=lambda _m: None)
        trainer.fit()
        return {**trainer.denoiser.state_dict(), **{f"ema.{k}": v for k, v in trainer.ema.shadow.items()},
                "gen": trainer.noise_generator.get_state()}

    one, two = train("one"), train("two", "train.grad_accumulation=2")
    assert torch.equal(one.pop("gen"), two.pop("gen"))
    norms = [[r["grad_norm"] for r in read_metrics(tmp_path / name) if "grad_norm" in r] for name in ("one", "two")]
    assert norms[0] and norms[1] == pytest.approx(norms[0], rel=1e-4)  # Adam alone would hide a gradient scale
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_bf16_autocast_runs_backbone_in_bf16_and_keeps_fp32_weights(tmp_path):
    config = load_config(None, with_overrides("train.precision=bf16", "train.eval_every=100", "train.sample_every=100",
                                              base=DDP))
    trainer = Trainer(config, tmp_path / "bf16", progress=False, log=lambda _m: None)
    dtypes = []
    conv = next(m for m in trainer.denoiser.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    record = trainer.train_step()
    handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
    assert all(p.dtype == torch.float32 for p in trainer.denoiser.parameters())
    trainer.fit()  # continues to step 3 and checkpoints float32 weights
    _, tensors = checkpoint_tensors(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.startswith("model.") and t.is_floating_point())


def test_shard_bounds_partition_like_tensor_split():
    for n in range(0, 23):
        for world in range(1, 6):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            parts = torch.tensor_split(torch.arange(n), world)
            assert [b - a for a, b in bounds] == [len(p) for p in parts]
            assert [list(range(a, b)) for a, b in bounds] == [p.tolist() for p in parts]


def test_pooled_likelihood_equals_one_process_statistics():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.5, size=37)

    def result(x: np.ndarray) -> LikelihoodResult:
        stderr = float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
        return LikelihoodResult(float(x.mean()), stderr, float(x.mean()) * 0.9, float(x.mean()) * 0.1, 0.0,
                                len(x), 1, "prior")

    whole = result(values)
    for cuts in ([20], [1, 36], [5, 6, 30]):
        stats = sum(likelihood_stats(result(part)) for part in np.split(values, cuts))
        pooled = pooled_likelihood(stats + likelihood_stats(None), 1, "prior")
        assert pooled.num_examples == 37
        assert pooled.nll_bits_per_dim == pytest.approx(whole.nll_bits_per_dim, rel=1e-12)
        assert pooled.nll_bits_per_dim_stderr == pytest.approx(whole.nll_bits_per_dim_stderr, rel=1e-9)
        assert pooled.diffusion_bits_per_dim == pytest.approx(whole.diffusion_bits_per_dim, rel=1e-12)
    assert math.isnan(pool_mean_stderr(1, 2.0, 4.0)[1])


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert env_world() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="inconsistent torchrun environment"):
        env_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="malformed torchrun environment"):
        env_world()


def test_global_batch_must_split_over_ranks_and_micro_batches():
    config = load_config(None, with_overrides("train.batch_size=6", "train.grad_accumulation=2", base=DDP))
    check_train_config(config, world_size=1)
    with pytest.raises(ValueError, match=r"batch_size \(6\) must be divisible by world size x "
                                         r"train.grad_accumulation \(2 x 2 = 4\)"):
        check_train_config(config, world_size=2)


def test_demo_refuses_to_run_under_torchrun(ddiff, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = ddiff("demo", "--out", tmp_path / "demo", "--no-progress")
    assert res.rc == 2 and "ddiff train" in res.err and not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_error_on_rank_0_stops_every_rank(single_run):
    """Rank 0 refuses the run directory (it holds checkpoints); rank 1 must not wait in a collective."""
    proc = torchrun("train", "--out", str(single_run), "--no-progress", *DDP, timeout=120)
    assert proc.returncode != 0
    assert "ddiff train (rank 0): error:" in proc.stderr and "already holds checkpoints" in proc.stderr
    assert "ddiff train (rank 1): error: preparing the run directory failed on another rank" in proc.stderr


@pytest.mark.slow
def test_two_process_resume_is_bit_identical(tmp_path):
    flat = with_overrides("train.min_lr_ratio=1.0", "train.checkpoint_every=1", "train.sample_every=100", base=DDP)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert torchrun("train", "--out", str(straight), "--no-progress", *flat).returncode == 0
    assert torchrun("train", "--out", str(resumed), "--no-progress",
                    *with_overrides("train.steps=2", base=flat)).returncode == 0
    proc = torchrun("train", "--out", str(resumed), "--resume", "--no-progress", "train.steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, a = checkpoint_tensors(straight)
    _, b = checkpoint_tensors(resumed)
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
