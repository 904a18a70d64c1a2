"""Fully sharded data parallel training (train.sharding=fsdp, FSDP2 on gloo; issue 24): each rank holds its half of
every sharded parameter; two processes train what one process trains (loss, full parameters, Adam moments, EMA;
catches FSDP2-on-gloo summing gradients instead of averaging them, PyTorch issue #162338); kill -9 at a random step
and --resume equal the uninterrupted run bit for bit; a 2-process checkpoint resumes on 1 process and samples and
evaluates there; every task of the one loop trains sharded; the run directory holds no pickle."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import read_metrics
from safetensors.torch import load_file

from discrete_diffusion.config import load_config
from discrete_diffusion.distributed import DistContext
from discrete_diffusion.nn.transformer import SequenceTransformer
from discrete_diffusion.runs.weights import find_latest_checkpoint
from discrete_diffusion.train.checkpoint import checkpoint_state, load_checkpoint, write_checkpoint
from discrete_diffusion.train.checks import check_train_config
from discrete_diffusion.train.ema import EMA
from discrete_diffusion.train.optim import build_optimizer
from discrete_diffusion.train.sharding import block_modules, fully_shard_available, is_sharded, shard_module
from discrete_diffusion.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not fully_shard_available(),
                                reason=f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2)")

HERE = Path(__file__).parent
#: A 2-block transformer on the bundled 8x8 digits, masking noise, 6 steps of 16 (checkpoints every 2, warmup 2 then
#: cosine: a resume that lost the scheduler would change the learning rate). Dropout off: masks are drawn per rank.
RUN = ["model.backbone=transformer", "model.depth=2", "model.dim=16", "model.heads=2", "model.dropout=0.0",
       "process.name=masking", "train.steps=6", "train.batch_size=16", "train.eval_every=3",
       "train.checkpoint_every=2", "train.sample_every=100", "train.warmup_steps=2", "train.eval_t_samples=1",
       "train.keep_last=10", "train.device=cpu", "sample.steps=2", "evaluate.t_samples=1"]
FSDP = [*RUN, "train.sharding=fsdp"]
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")   # pickle protocols, torch.save zip


def torchrun(*args: str, nproc: int = 2, timeout: int = 400) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N tests/sharding_child.py ARGS`` on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(HERE / "sharding_child.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def one_process(out: Path, *overrides: str, resume: bool = False) -> None:
    Trainer(load_config(None, [*RUN, *overrides]), out, progress=False, log=lambda _m: None).fit(resume=resume)


def checkpoint(out: Path, step: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    manifest = find_latest_checkpoint(out / "checkpoints") if step is None else \
        out / "checkpoints" / f"ckpt_{step:08d}.json"
    meta = json.loads(manifest.read_text())
    return meta, load_file(str(manifest.parent / meta["tensors_file"]))


def trained(out: Path) -> dict[str, torch.Tensor]:
    meta, tensors = checkpoint(out)
    assert meta["step"] == 6
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim.", "rng.generators."))}


def metric_lines(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(out)]


def assert_no_pickle(run: Path) -> int:
    """Every file under ``run`` is JSON, safetensors, YAML, PNG or the lock; none starts like a pickle or a
    torch.save zip; every safetensors file parses. Returns how many files were scanned."""
    files = [p for p in run.rglob("*") if p.is_file()]
    for p in files:
        head = p.read_bytes()[:8]
        assert not head.startswith(PICKLE_MAGIC), p
        assert p.suffix in {".json", ".jsonl", ".safetensors", ".yaml", ".png", ""} and p.name != "", p
        if p.suffix == ".safetensors":
            load_file(str(p))
        elif p.suffix == ".json":
            json.loads(p.read_text())
    assert any(p.suffix == ".safetensors" for p in files)
    return len(files)


# ----- default suite: one process, a one-rank gloo group -------------------------------------------------------------
@pytest.fixture
def one_rank_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistContext(0, 1, 0, "gloo")
    finally:
        dist.destroy_process_group()


def test_fully_shard_state_round_trips_through_a_pickle_free_checkpoint(one_rank_group, tmp_path):
    """fully_shard per block then the root: every parameter, Adam moment and EMA tensor is a DTensor; a checkpoint
    gathers full tensors (the weights of the unsharded model after the same steps) and loads back into a sharded
    model exactly; its files hold no pickle."""
    torch.manual_seed(0)
    net = SequenceTransformer(3, 5, (6,), dim=8, depth=2, heads=2, dropout=0.0)
    torch.manual_seed(0)
    plain = SequenceTransformer(3, 5, (6,), dim=8, depth=2, heads=2, dropout=0.0)
    assert block_modules(net) == list(net.blocks)
    root = shard_module(net, one_rank_group, torch.device("cpu"))
    assert root is net and all(is_sharded(p) for p in net.parameters())
    models = (net, plain)
    optimizers = [build_optimizer(m, lr=1e-2, weight_decay=0.1) for m in models]
    emas = [EMA(m, decay=0.9) for m in models]
    assert all(is_sharded(t) for t in emas[0].shadow.values())
    x, lam = torch.randn(4, 3, 6), torch.rand(4)
    for _ in range(3):
        for m, opt, ema in zip(models, optimizers, emas):
            opt.zero_grad()
            m(x, lam).square().mean().backward()
            opt.step()
            ema.update(m)
    state = checkpoint_state(net, optimizers[0], None, emas[0], full=True)
    assert not any(is_sharded(t) for t in state.model.values())
    for name, t in plain.state_dict().items():
        torch.testing.assert_close(state.model[name], t, rtol=1e-5, atol=1e-6)
    manifest = write_checkpoint(tmp_path / "ck", 3, state, {}, keep_last=1)
    assert assert_no_pickle(tmp_path / "ck") == 2

    torch.manual_seed(1)   # other weights: the load must overwrite them
    fresh = SequenceTransformer(3, 5, (6,), dim=8, depth=2, heads=2, dropout=0.0)
    shard_module(fresh, one_rank_group, torch.device("cpu"))
    opt, ema = build_optimizer(fresh, lr=1e-2, weight_decay=0.1), EMA(fresh, decay=0.9)
    load_checkpoint(manifest, fresh, opt, None, ema)
    again = checkpoint_state(fresh, opt, None, ema, full=True)
    assert all(is_sharded(p) for p in fresh.parameters())
    for name in state.model:
        assert torch.equal(again.model[name], state.model[name]), name
    for name in state.ema["shadow"]:
        assert torch.equal(again.ema["shadow"][name], state.ema["shadow"][name]), name
    moments = [(i, k) for i, s in state.optimizer[1]["state"].items() for k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(torch.equal(again.optimizer[1]["state"][i][k], state.optimizer[1]["state"][i][k])
                           for i, k in moments)


def test_sharding_setting_is_checked():
    with pytest.raises(ValueError, match="unknown train.sharding 'zero'; valid: none, fsdp"):
        check_train_config(load_config(None, [*RUN, "train.sharding=zero"]))
    with pytest.raises(ValueError, match="train.compile=true is not supported with train.sharding=fsdp"):
        check_train_config(load_config(None, [*FSDP, "train.compile=true"]))
    assert load_config(None, []).train.sharding == "none"


# ----- slow: two gloo processes ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, unsharded, 6 steps."""
    out = tmp_path_factory.mktemp("sharding") / "one"
    one_process(out)
    return out


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, Path]:
    """Two processes, FSDP, 6 steps (uninterrupted); and the per-rank shard shapes."""
    root = tmp_path_factory.mktemp("sharding")
    proc = torchrun(str(root / "two"), "--shards", str(root / "shards.json"), *FSDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "two", root / "shards.json"


def assert_matches(one: Path, two: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    a, b = trained(one), trained(two)
    assert sorted(a) == sorted(b)
    for key in a:
        if key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key      # every rank drew the global batch of one process
        else:
            torch.testing.assert_close(b[key], a[key], rtol=rtol, atol=atol, msg=key)
    rec_1, rec_2 = ([r for r in read_metrics(d) if "loss" in r] for d in (one, two))
    assert [r["step"] for r in rec_2] == [r["step"] for r in rec_1] == [6]
    assert rec_2[0]["loss"] == pytest.approx(rec_1[0]["loss"], rel=1e-5)
    # A summed (not averaged) gradient doubles this norm, measured before clipping. Clipping (the norm is 2.2 > 1
    # at step 6) and Adam's normalisation hide the scale from the weights and moments: simulating the sum (the
    # reduced gradients times W) left every tensor within tolerance and failed here.
    assert rec_2[0]["grad_norm"] == pytest.approx(rec_1[0]["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_two_processes_hold_half_of_each_parameter_and_train_what_one_process_trains(reference, sharded, tmp_path):
    two, shards = sharded
    ranks = [json.loads(Path(f"{shards}.rank{r}").read_text()) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and any(".blocks.1." in k or k.startswith("blocks.1.") for k in ranks[0])
    for name, rec in ranks[0].items():
        assert rec["sharded"] and ranks[1][name]["sharded"], name
        rows = rec["global"][0]
        assert [r[name]["local"][0] for r in ranks] == [(rows + 1) // 2, rows // 2], name   # torch.chunk(p, 2, 0)
        assert rec["local"][1:] == rec["global"][1:], name
    assert_matches(reference, two)
    a, b = trained(reference), trained(two)
    moved = [k for k in a if k.startswith("model.") and not torch.allclose(a[k], checkpoint(reference, 2)[1][k])]
    assert moved   # the weights moved after step 2: the comparison is not trivially true
    exp_avg = [k for k in a if k.endswith(".exp_avg")]
    assert exp_avg and all(torch.allclose(b[k], a[k], rtol=1e-4, atol=1e-6) for k in exp_avg)
    assert_no_pickle(two)


@pytest.mark.slow
def test_gradient_accumulation_and_bf16_under_fsdp(reference, tmp_path):
    """Two processes x two micro-batches equal one process; bf16 blocks (fp32 reduction) train with finite loss
    and keep float32 master weights, Adam moments and EMA, close to the fp32 run."""
    proc = torchrun(str(tmp_path / "accum"), *FSDP, "train.grad_accumulation=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches(reference, tmp_path / "accum")
    proc = torchrun(str(tmp_path / "bf16"), *FSDP, "train.precision=bf16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors = trained(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.startswith(("model.", "ema.", "optim."))
               and t.is_floating_point())
    fp32 = trained(reference)
    lines = [r for r in read_metrics(tmp_path / "bf16") if "loss" in r]
    ref = [r for r in read_metrics(reference) if "loss" in r]
    loss = lines[0]["loss"]
    assert torch.isfinite(torch.tensor(loss)) and loss == pytest.approx(ref[0]["loss"], rel=0.05)
    drift = max(float((tensors[k] - fp32[k]).abs().max()) for k in fp32 if k.startswith("model."))
    assert 0 < drift < 0.05   # bf16 rounding changed the weights a little, not a lot


@pytest.mark.slow
def test_sigkill_at_a_random_step_and_resume_equal_the_uninterrupted_run(sharded, tmp_path):
    two, _ = sharded
    kill_at = random.Random().randint(2, 5)   # kill -9 at the start of step kill_at + 1 (a checkpoint every 2)
    killed = tmp_path / "killed"
    proc = torchrun(str(killed), "--kill-at", str(kill_at), *FSDP)
    assert proc.returncode != 0, f"the run was not killed at step {kill_at}"
    latest = find_latest_checkpoint(killed / "checkpoints")
    assert latest is not None and int(latest.stem.split("_")[1]) == kill_at - kill_at % 2, (kill_at, latest)
    proc = torchrun(str(killed), "--resume", *FSDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = trained(two), trained(killed)
    assert sorted(a) == sorted(b)
    assert not [k for k in a if not torch.equal(a[k], b[k])], f"killed at step {kill_at}"
    assert metric_lines(killed) == metric_lines(two)
    assert_no_pickle(killed)


def copy_run_at(run: Path, step: int, out: Path) -> Path:
    """A copy of ``run`` holding only its checkpoint of ``step`` (what a run killed after that step leaves)."""
    (out / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "data.json", "metrics.jsonl"):
        (out / name).write_bytes((run / name).read_bytes())
    meta, _ = checkpoint(run, step)
    for name in (f"ckpt_{step:08d}.json", meta["tensors_file"]):
        (out / "checkpoints" / name).write_bytes((run / "checkpoints" / name).read_bytes())
    return out


@pytest.mark.slow
def test_resume_from_one_process_on_two_sharded_processes(reference, sharded, tmp_path):
    """The resharding rule the other way: one unsharded process's step-2 checkpoint resumes under FSDP on two
    processes (each rank cuts its rows from the full tensors) and reaches what the 2-process run trains."""
    two, _ = sharded
    moved = copy_run_at(reference, 2, tmp_path / "moved")
    proc = torchrun(str(moved), "--resume", *FSDP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches(two, moved)


@pytest.mark.slow
def test_resume_from_two_processes_on_one_then_sample_and_evaluate_there(reference, sharded, tmp_path):
    """The step-2 checkpoint of the 2-process FSDP run resumes in one plain process (every tensor is full) and
    reaches what one process trains straight through; the sharded run's checkpoint samples and evaluates on one
    CPU process."""
    from discrete_diffusion.builders import build_sampler_from
    from discrete_diffusion.pipeline import evaluate_run, generate_samples, load_run

    two, _ = sharded
    moved = copy_run_at(two, 2, tmp_path / "moved")
    one_process(moved, "train.sharding=fsdp", resume=True)   # one process: the plain loop reads the full tensors
    assert_matches(reference, moved)
    run = load_run(two, "latest", "cpu")
    x = generate_samples(run, build_sampler_from(run.config, steps=2), 4, seed=0, progress=False)
    assert x.shape == (4, 8, 8) and 0 <= int(x.min()) and int(x.max()) < run.dataset.num_states
    result = evaluate_run(run, "val", t_samples=1, progress=False)
    assert 0 < result.nll_bits_per_dim < 10


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["exact", "planner", "classifier"])
def test_every_task_trains_sharded_like_one_process(kind, tmp_path):
    """The exact-NLL baseline (an AR transformer), the planner and the classifier (MLP backbones) under FSDP on two
    processes train what one process trains."""
    from task_child import make_trainer
    from test_tasks import RUN as TASK_RUN
    from test_tasks import assert_matches_one_process

    from discrete_diffusion.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--out", str(run_dir), "--no-progress", *TASK_RUN]) == 0
    make_trainer(kind, run_dir, tmp_path / "one").fit()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(HERE / "task_child.py"), kind, str(run_dir), str(tmp_path / "two"),
                           "train.sharding=fsdp"], capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches_one_process(tmp_path / "one", tmp_path / "two")
    assert_no_pickle(tmp_path / "two")


@pytest.mark.slow
def test_a_unet_under_fsdp_matches_one_process(tmp_path):
    """The default image model (a U-Net: down / up stages sharded one by one, the middle block with the root) on
    the Blackout process: two FSDP processes train what one process trains, and draw a sample grid."""
    unet = ["model.backbone=unet", "model.base_channels=16", "model.channel_mults=[1,2]", "process.name=blackout",
            "process.schedule=null", "train.sample_every=6"]
    one_process(tmp_path / "one", *unet)
    proc = torchrun(str(tmp_path / "two"), "--shards", str(tmp_path / "shards.json"), *FSDP, *unet)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = json.loads(Path(f"{tmp_path / 'shards.json'}.rank1").read_text())
    assert any("down_blocks" in k for k in shards) and all(rec["sharded"] for rec in shards.values())
    assert_matches(tmp_path / "one", tmp_path / "two")
    assert (tmp_path / "two" / "samples" / "step_00000006.png").is_file()   # a grid drawn on gathered parameters


@pytest.mark.slow
def test_block_diffusion_under_fsdp_matches_one_process(tmp_path):
    """A block-diffusion transformer (model.block_size=4: the vectorised [x_t ; x_0] forward) trains sharded like
    one process."""
    from test_block_cli import TEXT

    corpus = tmp_path / "genesis.txt"
    corpus.write_text(TEXT)
    block = ["data.name=text", f"data.path={corpus}", "data.seq_len=16", "model.block_size=4",
             "model.time_conditioning=false", "train.t_draws=antithetic", "train.mask_rate_clip=[0.3,0.8]"]
    one_process(tmp_path / "one", *block)
    proc = torchrun(str(tmp_path / "two"), *FSDP, *block)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_matches(tmp_path / "one", tmp_path / "two")
