"""The training loop, one for every task: AdamW with warmup and clipping, EMA, periodic validation, optional
sample grids, checkpoints with exact resume, best-checkpoint selection on validation, and data-parallel training
under ``torchrun`` (DistributedDataParallel, or FSDP2 with ``train.sharding=fsdp``: train/sharding.py; see
docs/distributed.md). What is trained comes from a
:class:`~discrete_diffusion.train.task.Task`: the diffusion objective (the default,
train/diffusion_task.py), the exact NLL of an autoregressive baseline (baselines/exact_task.py), the DDPD
planner's BCE (planner.py) or the noisy classifier's cross-entropy (guidance/classifier_train.py).

Run directory layout (DESIGN.md section 5):
    config.yaml            the resolved config
    data.json              SHA-256 of the data files and splits (checked by evaluate / sample / --resume)
    tokenizer.json         BPE text only: the trained tokenizer (its SHA-256 is in data.json; data/tokenizer.py)
    metrics.jsonl          one JSON line per logged step / evaluation
    checkpoints/           ckpt_XXXXXXXX.{safetensors,json}: model, EMA, optimizer, scheduler, RNG, step
    best/                  the checkpoint with the lowest validation value so far (EMA weights evaluated)
    samples/               sample grids during training (images)
    .lock                  held (flock) by the training that owns the directory (runs/lock.py)

Every file is written through runs/atomic_io.py (temp file created O_EXCL | O_NOFOLLOW, fsync, os.replace;
appends O_NOFOLLOW): a symbolic link planted in a run directory is never written through.

Batches. ``train.batch_size`` is the *global* batch of one optimizer step. Every rank draws the whole
global batch from identically seeded generators (the task's ``draw_batch``) and keeps its contiguous chunk; the
chunk is split again into ``train.grad_accumulation`` micro-batches. Each micro-batch contributes
``sum(per-example loss) * world_size / (global_batch * dims)`` to the gradient, so DDP's averaging over ranks and
the accumulation over micro-batches give exactly the gradient of the mean over the global batch: one process,
two processes and two micro-batches train the same model up to float rounding (tests/test_distributed.py,
tests/test_tasks.py). With one process, one micro-batch and fp32 the step is ``loss.mean() / dims`` (for the
diffusion task :func:`~discrete_diffusion.losses.training_loss` itself).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..distributed import env_world, setup, shard_bounds
from ..runs.atomic_io import (
    append_text,
    atomic_write_text,
    ensure_dir,
    probe_writable,
    read_text_nofollow,
    refuse_link,
    user_dir,
)
from ..runs.config_file import save_config
from ..runs.data_record import MANIFEST_NAME, DataChangedError, check_data_manifest, write_data_manifest
from ..runs.json_reader import loads_bounded
from ..runs.lock import RunLock
from ..runs.tokenizer_file import write_run_tokenizer
from ..runs.weights import find_latest_checkpoint
from .checkpoint import checkpoint_state, load_checkpoint, write_checkpoint
from .checks import check_train_config
from .diffusion_task import AutocastDenoiser, DiffusionTask
from .ema import EMA
from .optim import build_optimizer, clip_gradients, warmup_cosine_schedule
from .sharding import clip_sharded_gradients, gathered, shard_module
from .task import Task, TaskSetup, model_config, seed_everything

__all__ = ["Trainer", "TrainResult", "resumable_checkpoint", "best_record", "model_config", "check_train_config",
           "AutocastDenoiser"]


@dataclass
class TrainResult:
    """Where and how far a run trained. ``best_val_nll_bits_per_dim`` is the best validation value of the
    task's ``val_key`` (for the diffusion task the NLL bound in bits/dim), ``best_step`` its step."""

    run_dir: Path
    step: int
    best_val_nll_bits_per_dim: float | None
    best_step: int | None


def _listing(directory: Path, show: int = 5, limit: int = 1000) -> str:
    """A short description of what ``directory`` holds: "nothing" or "N entries: a, b, ..." (bounded)."""
    try:
        with os.scandir(directory) as it:
            names = sorted(entry.name for entry in itertools.islice(it, limit))
    except OSError as err:
        return f"unreadable: {err.strerror}"
    if not names:
        return "nothing"
    count = f"{len(names)}{'+' if len(names) == limit else ''} {'entry' if len(names) == 1 else 'entries'}"
    return f"{count}: {', '.join(names[:show])}{', ...' if len(names) > show else ''}"


def resumable_checkpoint(run_dir: str | Path, command: str = "ddiff train") -> Path:
    """The newest complete checkpoint of ``run_dir``, the one ``--resume`` continues from.

    Raises a one-line ``ValueError`` saying what the directory holds and what is missing when there is nothing
    to resume: no directory, no ``config.yaml``, or no complete checkpoint in ``checkpoints/``. Reads only.
    ``command`` starts a new run (named in the message)."""
    run_dir = Path(run_dir)
    anew = f"start a new run with `{command} --out {run_dir}` (without --resume)"
    if not run_dir.exists():
        raise ValueError(f"cannot resume {run_dir}: the directory does not exist; {anew}")
    if not run_dir.is_dir():
        raise ValueError(f"cannot resume {run_dir}: it is not a directory")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"cannot resume {run_dir}: it has no config.yaml, so no run was started there (it holds "
                         f"{_listing(run_dir)}); {anew}")
    checkpoints = run_dir / "checkpoints"
    latest = find_latest_checkpoint(checkpoints)
    if latest is None:
        held = _listing(checkpoints) if checkpoints.is_dir() else "no checkpoints/ folder"
        raise ValueError(f"cannot resume {run_dir}: it has config.yaml but no complete checkpoint in {checkpoints} "
                         f"({held}); {anew}")
    return latest


def best_record(extra: dict, step: int) -> tuple[float, int] | None:
    """The checkpoint's ``extra["best"]``: ``[]`` (no validation yet) or ``[value, step <= step]``."""
    best = extra.get("best", []) if isinstance(extra, dict) else None
    if best == []:
        return None
    if (not isinstance(best, list) or len(best) != 2 or isinstance(best[0], bool)
            or not isinstance(best[0], (int, float)) or isinstance(best[1], bool)
            or not isinstance(best[1], int) or not 0 <= best[1] <= step):
        raise ValueError(f"extra.best is {str(best)[:60]}; expected [] or [NLL, step <= {step}]")
    return float(best[0]), best[1]


class Trainer:
    """Builds ``task`` (default: the diffusion task of the config) and trains it into ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) it joins the process group, wraps the task's forward module in
    DistributedDataParallel (or, with ``train.sharding=fsdp``, shards the task's network with FSDP2 before the
    optimizer and the EMA are built) and lets rank 0 alone write the run directory. Attributes of the task (the
    diffusion task's ``denoiser``, ``process``, ``dataset``, ``schedule``, ...) read through the trainer."""

    def __init__(self, config: DictConfig, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print, task: Task | None = None) -> None:
        self.config = config
        self.run_dir = user_dir(run_dir)  # a link the user typed is followed; links inside it never are
        tc = config.train
        check_train_config(config, env_world()[1])
        self.ctx, self.device = setup(tc.device)
        self.progress = progress and self.ctx.is_main
        self.log = log if self.ctx.is_main else (lambda _message: None)
        if tc.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"train.precision=bf16 is not supported on {torch.cuda.get_device_name(self.device)}; "
                             "use train.precision=fp32")
        self.task = DiffusionTask() if task is None else task
        self.ctx.agree(self._build, "building the run")
        self.model = self._training_module()
        self.step = 0
        self.best: tuple[float, int] | None = None

    def __getattr__(self, name: str) -> Any:
        task = self.__dict__.get("task")
        if task is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            return getattr(task, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object (and its {task.name} task) has no attribute "
                                 f"{name!r}") from None

    def _build(self) -> None:
        tc = self.config.train
        self.data_generator = torch.Generator().manual_seed(tc.seed + 1)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(tc.seed + 2)
        self.task.setup(TaskSetup(self.config, self.run_dir, self.device, self.ctx, self.data_generator,
                                  self.noise_generator))
        seed_everything(tc.seed)  # same on every rank: identical initial weights
        self.task.module = self.module = self.task.build_module()
        #: train.sharding=fsdp under torchrun: the network FSDP2 shards (train/sharding.py), else None
        self.sharded = None
        if tc.get("sharding", "none") == "fsdp" and self.ctx.enabled:
            self.sharded = shard_module(self.module, self.ctx, self.device, bf16=tc.precision == "bf16",
                                        methods=self.task.sharded_methods)
        if tc.compile:
            self.task.compile(self.device)
        self.optimizer = build_optimizer(self.module, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = warmup_cosine_schedule(self.optimizer, min(tc.warmup_steps, tc.steps), tc.steps,
                                                tc.min_lr_ratio)
        self.ema = EMA(self.module, decay=tc.ema_decay)

    def _training_module(self) -> nn.Module:
        module = self.task.forward_module(self.config.train.precision == "bf16")
        if self.ctx.enabled and self.sharded is None:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        return module

    @property
    def _plain_step(self) -> bool:
        """One process, one micro-batch, fp32: the step's loss is ``loss.mean() / dims`` on the whole batch."""
        tc = self.config.train
        return not self.ctx.enabled and tc.grad_accumulation == 1 and tc.precision == "fp32"

    # ----- run directory -------------------------------------------------------------------------
    @property
    def generators(self) -> dict[str, torch.Generator]:
        return {"data": self.data_generator, "noise": self.noise_generator}

    def _prepare_run_dir(self, resume: bool, lock: RunLock) -> None:
        """Check (``--resume``: that there is a checkpoint to resume), create the directory, take its lock,
        check that it and ``checkpoints/`` are writable real directories (no symbolic links) and that the disk
        has room. A fresh run starts ``metrics.jsonl`` anew. Nothing is written before every check passed
        (except the lock file)."""
        if resume:
            resumable_checkpoint(self.run_dir, self.task.command)
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            for name in ("best", "samples", "metrics.jsonl", "config.yaml"):
                refuse_link(self.run_dir / name)
            ensure_dir(self.run_dir / "checkpoints", root=self.run_dir)
            for directory in (self.run_dir, self.run_dir / "checkpoints"):
                probe_writable(directory)
        except OSError as err:
            raise ValueError(f"run directory {self.run_dir} is not writable: {err}") from None
        if not resume and find_latest_checkpoint(self.run_dir / "checkpoints") is not None:
            raise ValueError(f"{self.run_dir} already holds checkpoints; resume it (--resume) or use a new --out")
        self._check_free_space()
        if not resume and os.path.lexists(self.run_dir / "metrics.jsonl"):  # lines of an earlier, unfinished start
            atomic_write_text(self.run_dir / "metrics.jsonl", "")

    def checkpoint_bytes(self) -> int:
        """About how many bytes one checkpoint takes: weights, EMA and two Adam moments."""
        weights = sum(t.numel() * t.element_size() for t in self.module.state_dict().values())
        return 4 * weights + 64 * 1024

    def _check_free_space(self) -> None:
        """Refuse to start when the disk cannot hold the checkpoints the run will keep."""
        keep = self.config.train.keep_last
        each = self.checkpoint_bytes()
        need = (keep + 3) * each  # kept ones + the one being written + best/ (old and new)
        free = shutil.disk_usage(self.run_dir).free
        if free < need:
            mb = 1024 * 1024
            raise ValueError(f"not enough free disk space in {self.run_dir}: the run keeps {keep} checkpoints of "
                             f"about {each / mb:.1f} MB each plus best/ (about {need / mb:.1f} MB), but only "
                             f"{free / mb:.1f} MB are free; free some space, lower train.keep_last "
                             f"or use another --out")

    def _resume(self) -> None:
        latest = find_latest_checkpoint(self.run_dir / "checkpoints")
        if latest is not None:
            meta = load_checkpoint(latest, self.module, self.optimizer, self.scheduler, self.ema, self.generators,
                                   expected_config=self.task.checkpoint_config(), absent_ok=True,
                                   max_step=self.config.train.steps, check_extra=best_record)
            self.step = int(meta["step"])
            self.best = best_record(meta["extra"], self.step)
        if self.ctx.enabled:  # every rank must resume from the same step (shared run directory)
            steps = torch.tensor([self.step, -self.step], dtype=torch.float64, device=self.ctx.collective_device())
            steps = self.ctx.all_reduce(steps, "max")
            if int(steps[0]) != -int(steps[1]):
                raise ValueError(f"ranks found different checkpoints in {self.run_dir} (rank {self.ctx.rank}: step "
                                 f"{self.step}); the run directory must be on a filesystem shared by all nodes")
        if latest is not None and self.ctx.is_main:
            self._truncate_metrics(self.step)
            self.log(f"resumed from {latest.name} at step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again), and a
        line torn by a crash mid-write. Rewritten atomically."""
        path = self.run_dir / "metrics.jsonl"
        text = read_text_nofollow(path)
        if text is None:
            return
        kept = []
        for line in text.splitlines():
            try:
                record = loads_bounded(line, "metrics.jsonl line")
            except ValueError:  # a torn, corrupt, deeply nested or huge-number line: dropped
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _write_metrics(self, record: dict) -> None:
        path = self.run_dir / "metrics.jsonl"
        try:
            append_text(path, json.dumps(record) + "\n")
        except OSError as err:
            latest = find_latest_checkpoint(self.run_dir / "checkpoints")
            kept = f"the last checkpoint {latest} is intact" if latest is not None else "no checkpoint was written yet"
            reason = "the disk is full (No space left on device)" if err.errno == errno.ENOSPC else str(err)
            raise OSError(f"could not append to {path}: {reason}; training stopped at step {self.step}, {kept}") \
                from None

    def _save(self, directory: Path, keep_last: int, what: str) -> None:
        """Rank 0 writes the checkpoint; under FSDP every rank first gathers the full tensors (collectives), so
        the files are those of one process (train/sharding.py: the resharding rule)."""
        state = checkpoint_state(self.module, self.optimizer, self.scheduler, self.ema, full=self.sharded is not None,
                                 keep=self.ctx.is_main)
        self._on_main(lambda: write_checkpoint(directory, self.step, state, self.generators,
                                               extra={"config": self.task.checkpoint_config(),
                                                      "best": list(self.best or [])},
                                               keep_last=keep_last), what)

    def _on_main(self, fn: Callable[[], object], what: str) -> None:
        self.ctx.on_main(fn, what)

    # ----- the loop ------------------------------------------------------------------------------------
    def _non_finite(self, value: float) -> FloatingPointError:
        latest = find_latest_checkpoint(self.run_dir / "checkpoints")
        kept = (f"the last good checkpoint {latest} is intact" if latest is not None
                else "no checkpoint had been written yet")
        return FloatingPointError(f"loss is {value} at step {self.step + 1}; training stopped, {kept}")

    def train_step(self) -> dict:
        """One optimizer step on one global batch; returns its metrics line."""
        self.model.train()
        batch = self.task.draw_batch()
        if self._plain_step:
            out = self.task.loss(self.model, batch, slice(0, self.task.batch_size(batch)))
            loss_tensor = out.per_example.mean() / self.task.dims
            if not torch.isfinite(loss_tensor):
                raise self._non_finite(loss_tensor.item())
            self.optimizer.zero_grad(set_to_none=True)
            loss_tensor.backward()
            loss, stats = float(loss_tensor.detach()), {k: float(v.detach().mean()) for k, v in out.stats.items()}
        else:
            loss, stats = self._sharded_backward(batch)
        grad_norm = clip_gradients(self.module, self.config.train.grad_clip) if self.sharded is None else \
            clip_sharded_gradients(self.module.parameters(), self.config.train.grad_clip, self.ctx)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.module)
        self.step += 1
        return {"step": self.step, "loss": loss, **self.task.train_record(stats), "grad_norm": grad_norm,
                "lr": self.scheduler.get_last_lr()[0]}

    def _sharded_backward(self, batch: Any) -> tuple[float, dict[str, float]]:
        """Accumulate this rank's share of the gradient of the global-batch loss; returns the global mean loss
        (per dimension) and the global means of the task's per-example statistics."""
        ctx, accum, dims = self.ctx, self.config.train.grad_accumulation, self.task.dims
        size = self.task.batch_size(batch)
        if size < ctx.world_size * accum:
            raise ValueError(f"the training split has {size} examples, fewer than world size x "
                             f"train.grad_accumulation = {ctx.world_size * accum}")
        start, stop = shard_bounds(size, ctx.rank, ctx.world_size)
        scale = ctx.world_size / (size * dims)
        sums: Tensor | None = None  # loss * dims, then each statistic: summed over examples
        names: list[str] = []
        self.optimizer.zero_grad(set_to_none=True)
        for m in range(accum):
            a, b = shard_bounds(stop - start, m, accum)
            sync = m == accum - 1 or not ctx.enabled or self.sharded is not None   # FSDP reduce-scatters each
            with nullcontext() if sync else self.model.no_sync():
                out = self.task.loss(self.model, batch, slice(start + a, start + b))
                micro_loss = out.per_example.sum() * scale
                self._check_finite(micro_loss)
                micro_loss.backward()
            names = list(out.stats)
            part = torch.stack([out.per_example.detach().sum().double()]
                               + [out.stats[k].detach().sum().double() for k in names])
            sums = part if sums is None else sums + part
        sums = ctx.all_reduce(sums.to(ctx.collective_device(sums.device))).cpu()
        return float(sums[0]) / (size * dims), {k: float(sums[1 + i]) / size for i, k in enumerate(names)}

    def _check_finite(self, micro_loss: Tensor) -> None:
        """Stop every rank together (before any backward) when the loss is NaN or infinite on any rank."""
        value = micro_loss.detach().double().reshape(1)
        if self.ctx.enabled:
            value = self.ctx.all_reduce(value.to(self.ctx.collective_device(value.device)))
        if not torch.isfinite(value).all():
            raise self._non_finite(float(value[0]))

    def validate(self) -> dict:
        """The task's validation of the EMA weights (in eval mode; the raw weights are restored afterwards)."""
        self.module.eval()
        with self.ema.swap_into(self.module), self._gathered():
            return {"step": self.step, **self.task.validate()}

    def _gathered(self) -> AbstractContextManager:
        """FSDP: the full (EMA) parameters on every rank while evaluating (train/sharding.py ``gathered``)."""
        return nullcontext() if self.sharded is None else gathered(self.sharded)

    def sample_grid(self) -> Path | None:
        """The task's sample grid from the EMA weights, if it draws one (rank 0 writes it)."""
        self.module.eval()
        with self.ema.swap_into(self.module), self._gathered():
            return self.task.sample_grid(self.step)

    def _record_data(self, resume: bool) -> None:
        """data.json: checksums of the data files and splits (runs/data_record.py). A resumed run must find the
        data it was trained on; evaluate and sample compare against this record."""
        dataset = self.task.dataset
        if resume and (self.run_dir / MANIFEST_NAME).exists():
            try:
                check_data_manifest(self.run_dir, dataset)
            except DataChangedError as err:
                raise DataChangedError(f"{str(err).split('; restore')[0]}; a resumed run must train on the data it "
                                       f"started with: restore the data or train into a new --out") from None
        else:
            if dataset.metadata.get("tokenizer_json") is not None:  # BPE text: the trained tokenizer
                write_run_tokenizer(self.run_dir, dataset.metadata["tokenizer_json"])
            write_data_manifest(self.run_dir, dataset)

    def fit(self, resume: bool = False) -> TrainResult:
        """Train to ``train.steps`` (``resume``: from the newest complete checkpoint, which must exist), holding
        the run directory's lock (rank 0) throughout."""
        lock = RunLock(self.run_dir)
        try:
            return self._fit(resume, lock)
        finally:
            lock.release()

    def _fit(self, resume: bool, lock: RunLock) -> TrainResult:
        self._on_main(lambda: self._prepare_run_dir(resume, lock), "preparing the run directory")
        if resume:  # validates the config against the checkpoint before anything is written
            self.ctx.agree(self._resume, "resuming")
        self._on_main(lambda: self._record_data(resume), "recording the data checksums")
        self._on_main(lambda: save_config(self.task.run_config(self.config), self.run_dir / "config.yaml"),
                      "writing config.yaml")
        tc, task = self.config.train, self.task
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        say = bar.write if self.progress else self.log
        start = time.time()
        deadline = None if tc.time_limit_minutes is None else start + 60.0 * tc.time_limit_minutes
        while self.step < tc.steps:
            record = self.train_step()
            bar.update(1)
            out_of_time = deadline is not None and self.ctx.any_true(time.time() > deadline)
            last = self.step == tc.steps or out_of_time
            if last and self.step < tc.steps:
                say(f"time limit of {tc.time_limit_minutes} min reached at step {self.step}; stopping")
            if self.step % 10 == 0 or last:
                record["elapsed_s"] = round(time.time() - start, 2)
                self._on_main(lambda: self._write_metrics(record), "writing metrics")
                bar.set_postfix(loss=f"{record['loss']:.4f}", **task.postfix(record))
            if self.step % tc.eval_every == 0 or last:
                metrics = self.validate()
                self._on_main(lambda: self._write_metrics(metrics), "writing metrics")
                say(f"step {self.step}: {task.describe(metrics)}")
                if self.best is None or metrics[task.val_key] < self.best[0]:
                    self.best = (metrics[task.val_key], self.step)
                    self._save(self.run_dir / "best", keep_last=1, what="saving best/")
            if self.step % tc.sample_every == 0:
                self.sample_grid()
            if self.step % tc.checkpoint_every == 0 or last:
                self._save(self.run_dir / "checkpoints", keep_last=tc.keep_last, what="saving a checkpoint")
            if last:
                break
        bar.close()
        return TrainResult(self.run_dir, self.step, self.best[0] if self.best else None,
                           self.best[1] if self.best else None)
