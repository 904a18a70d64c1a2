"""The training loop: AdamW with warmup and clipping, EMA, periodic validation, sample grids, checkpoints
with exact resume, best-checkpoint selection on the validation NLL, and data-parallel training under
``torchrun`` (DistributedDataParallel; see docs/distributed.md).

Run directory layout (DESIGN.md section 5):
    config.yaml            the resolved config
    data.json              SHA-256 of the data files and splits (checked by evaluate / sample / --resume)
    tokenizer.json         BPE text only: the trained tokenizer (its SHA-256 is in data.json; data/tokenizer.py)
    metrics.jsonl          one JSON line per logged step / evaluation
    checkpoints/           ckpt_XXXXXXXX.{safetensors,json}: model, EMA, optimizer, scheduler, RNG, step
    best/                  the checkpoint with the lowest validation NLL so far (EMA weights evaluated)
    samples/               sample grids during training (images)
    .lock                  held (flock) by the training that owns the directory (train/run_lock.py)

Every file is written through train/atomic_io.py (temp file created O_EXCL | O_NOFOLLOW, fsync, os.replace;
appends O_NOFOLLOW): a symbolic link planted in a run directory is never written through.

Batches. ``train.batch_size`` is the *global* batch of one optimizer step. Every rank draws the whole
global batch from identically seeded generators (example indices, augmentation, lam and x_t) and keeps
its contiguous chunk; the chunk is split again into ``train.grad_accumulation`` micro-batches. Each
micro-batch contributes ``sum(per-example loss) * world_size / global_batch`` to the gradient, so DDP's
averaging over ranks and the accumulation over micro-batches give exactly the gradient of the mean over the
global batch: one process, two processes and two micro-batches train the same model up to float rounding
(tests/test_distributed.py). With one process, one micro-batch and fp32 the step is
:func:`~discrete_diffusion.losses.training_loss` itself.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..builders import (
    build_dataset,
    build_denoiser,
    build_objective_from,
    build_process_from,
    build_proposal,
    build_sampler_from,
    build_schedule_from,
    build_weighting_from,
    resolve_num_classes,
)
from ..config import MODEL_SECTIONS, save_config, to_dict
from ..data.manifest import MANIFEST_NAME, DataChangedError, check_data_manifest, write_data_manifest
from ..data.tokenizer import run_tokenizer_json, write_run_tokenizer
from ..denoiser import ConditionalDenoiser, NetworkDenoiser, backbone_input, noise_level_input
from ..losses import diffusion_terms, draw_noise, training_loss
from ..processes.base import Prediction
from ..visualize import save_image_grid
from .atomic_io import (append_text, atomic_write_text, ensure_dir, probe_writable, read_text_nofollow, refuse_link,
                        user_dir)
from .augment import build_augmentation
from .checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from .checks import check_train_config
from .distributed import (
    env_world,
    evaluate_nll_sharded,
    sample_sharded,
    setup,
    shard_bounds,
)
from .ema import EMA
from .optim import build_optimizer, clip_gradients, warmup_cosine_schedule
from .run_lock import RunLock


@dataclass
class TrainResult:
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


def resumable_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of ``run_dir``, the one ``--resume`` continues from.

    Raises a one-line ``ValueError`` saying what the directory holds and what is missing when there is nothing
    to resume: no directory, no ``config.yaml``, or no complete checkpoint in ``checkpoints/``. Reads only."""
    run_dir = Path(run_dir)
    anew = f"start a new run with `ddiff train --out {run_dir}` (without --resume)"
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


def model_config(config: DictConfig) -> dict:
    """The config sections a checkpoint must match (data, process, model)."""
    full = to_dict(config)
    return {k: full[k] for k in MODEL_SECTIONS}


class AutocastDenoiser(nn.Module):
    """Runs a :class:`NetworkDenoiser`'s backbone under bf16 autocast; its input features and everything after
    the backbone (the parameterisation and the loss) stay in float32. Holds no weights of its own."""

    def __init__(self, denoiser: NetworkDenoiser, device_type: str) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.device_type = device_type

    @property
    def num_classes(self) -> int:
        return self.denoiser.num_classes

    def forward(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None) -> Prediction:
        d = self.denoiser
        inputs = (backbone_input(d.process, d.backbone, xt, lam), noise_level_input(lam))
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            output = d.backbone(*inputs) if labels is None else d.backbone(*inputs, labels)
        return d.process.prediction_from_output(output.float(), xt, lam, d.parameterization)


def compile_backbone(denoiser: NetworkDenoiser, device: torch.device) -> None:
    """``train.compile=true``: compile the backbone's forward in place with ``torch.compile``
    (``nn.Module.compile``), so parameter names, and so checkpoints, stay those of the eager model (no
    ``_orig_mod.`` prefix) and a compiled run resumes, samples and evaluates like an eager one. Only the
    backbone is compiled; the parameterisation and the loss stay eager. On CPU the inductor backend builds
    C++ kernels: without a C++ compiler (``$CXX`` or ``g++``) this raises ValueError before training starts."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            raise ValueError(f"train.compile=true on CPU needs a C++ compiler (torch.compile builds C++ kernels), "
                             f"and {cxx!r} is not on PATH: install g++ (or set $CXX) or use train.compile=false")
    denoiser.backbone.compile()


def best_record(extra: dict, step: int) -> tuple[float, int] | None:
    """The checkpoint's ``extra["best"]``: ``[]`` (no validation yet) or ``[NLL, step <= step]``."""
    best = extra.get("best", []) if isinstance(extra, dict) else None
    if best == []:
        return None
    if (not isinstance(best, list) or len(best) != 2 or isinstance(best[0], bool)
            or not isinstance(best[0], (int, float)) or isinstance(best[1], bool)
            or not isinstance(best[1], int) or not 0 <= best[1] <= step):
        raise ValueError(f"extra.best is {str(best)[:60]}; expected [] or [NLL, step <= {step}]")
    return float(best[0]), best[1]


class Trainer:
    """Builds everything from a config and trains it into ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE > 1``) it joins the process group, wraps the denoiser in
    DistributedDataParallel and lets rank 0 alone write the run directory."""

    def __init__(self, config: DictConfig, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
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
        self.ctx.agree(self._build, "building the run")
        self.model = self._training_module()
        self.step = 0
        self.best: tuple[float, int] | None = None

    def _build(self) -> None:
        config, tc = self.config, self.config.train
        self.dataset = build_dataset(config, self._cached_tokenizer())
        if self.dataset.val.shape[0] == 0 and self.dataset.test.shape[0] == 0:  # validation needs one of them
            raise ValueError(f"the dataset has {self.dataset.train.shape[0]} training examples and none left for "
                             "validation or test (each split takes about 10% of a user array); validation and "
                             "best-checkpoint selection need at least one: use a larger dataset")
        self.process = build_process_from(config, self.dataset.num_states)
        self.schedule = build_schedule_from(config)
        self.proposal = build_proposal(config)
        self.weighting = build_weighting_from(config)
        self.objective = build_objective_from(config)
        self.augment = build_augmentation(tc.augment, self.dataset.kind)
        torch.manual_seed(tc.seed)  # same on every rank: identical initial weights
        random.seed(tc.seed)  # unused by the library, but checkpointed: a resumed run must match a straight one
        np.random.seed(tc.seed % 2**32)
        self.num_classes = resolve_num_classes(config, self.dataset)
        self.denoiser = build_denoiser(config, self.process, self.dataset.site_shape,
                                       self.num_classes).to(self.device)
        if tc.compile:
            compile_backbone(self.denoiser, self.device)
        self.optimizer = build_optimizer(self.denoiser, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = warmup_cosine_schedule(self.optimizer, min(tc.warmup_steps, tc.steps), tc.steps,
                                                tc.min_lr_ratio)
        self.ema = EMA(self.denoiser, decay=tc.ema_decay)
        self.data_generator = torch.Generator().manual_seed(tc.seed + 1)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(tc.seed + 2)
        self.train_data = self.dataset.train.to(self.device)
        self.train_labels = self.dataset.train_labels.to(self.device) if self.num_classes else None

    def _cached_tokenizer(self) -> str | None:
        """A BPE run that holds checkpoints (which only --resume continues) keeps the tokenizer it was trained
        with: ``RUN_DIR/tokenizer.json``, checked against data.json; otherwise None (one is trained)."""
        if self.config.data.tokenizer != "bpe" or find_latest_checkpoint(self.run_dir / "checkpoints") is None:
            return None
        return run_tokenizer_json(self.run_dir)

    def _training_module(self) -> nn.Module:
        module: nn.Module = self.denoiser
        if self.config.train.precision == "bf16":
            module = AutocastDenoiser(self.denoiser, self.device.type)
        if self.ctx.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        return module

    @property
    def _plain_step(self) -> bool:
        """One process, one micro-batch, fp32: the step is ``training_loss`` on the whole batch."""
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
            resumable_checkpoint(self.run_dir)
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
        weights = sum(t.numel() * t.element_size() for t in self.denoiser.state_dict().values())
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
                             f"{free / mb:.1f} MB are free; free some space, lower train.keep_last or use another --out")

    def _resume(self) -> None:
        latest = find_latest_checkpoint(self.run_dir / "checkpoints")
        if latest is not None:
            meta = load_checkpoint(latest, self.denoiser, self.optimizer, self.scheduler, self.ema, self.generators,
                                   expected_config=model_config(self.config), absent_ok=True,
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
                record = json.loads(line)
            except json.JSONDecodeError:
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

    def _save(self, directory: Path, keep_last: int) -> None:
        save_checkpoint(directory, self.step, self.denoiser, self.optimizer, self.scheduler, self.ema,
                        self.generators, extra={"config": model_config(self.config), "best": list(self.best or [])},
                        keep_last=keep_last)

    def _on_main(self, fn: Callable[[], object], what: str) -> None:
        self.ctx.on_main(fn, what)

    # ----- the loop ------------------------------------------------------------------------------------
    def _next_batch(self) -> tuple[Tensor, Tensor | None]:
        """The global batch (identical on every rank) and, for a conditional model, its labels (B,), each replaced
        by the null class (index num_classes) with probability train.cond_dropout. Every draw comes from the data
        generator (after the permutation and the augmentation), so resume stays bit-exact; an unconditional run
        draws exactly what it drew before labels existed."""
        n = self.train_data.shape[0]
        batch = min(self.config.train.batch_size, n)
        index = torch.randperm(n, generator=self.data_generator)[:batch].to(self.device)
        x0 = self.train_data[index]
        x0 = self.augment(x0, self.data_generator) if self.augment is not None else x0
        if self.train_labels is None:
            return x0, None
        labels = self.train_labels[index]
        if self.config.train.cond_dropout > 0:
            drop = torch.rand(batch, generator=self.data_generator) < self.config.train.cond_dropout
            labels = labels.masked_fill(drop.to(self.device), self.num_classes)
        return x0, labels

    def _non_finite(self, value: float) -> FloatingPointError:
        latest = find_latest_checkpoint(self.run_dir / "checkpoints")
        kept = (f"the last good checkpoint {latest} is intact" if latest is not None
                else "no checkpoint had been written yet")
        return FloatingPointError(f"loss is {value} at step {self.step + 1}; training stopped, {kept}")

    def train_step(self) -> dict:
        self.model.train()
        x0, labels = self._next_batch()
        if self._plain_step:
            model = self.denoiser if labels is None else ConditionalDenoiser(self.denoiser, labels, self.num_classes)
            out = training_loss(self.process, model, x0, self.schedule, self.proposal, self.weighting,
                                self.noise_generator, objective=self.objective)
            if not torch.isfinite(out.loss):
                raise self._non_finite(out.loss.item())
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            loss, elbo_mean = float(out.loss.detach()), float(out.elbo_diffusion.mean())
        else:
            loss, elbo_mean = self._sharded_backward(x0, labels)
        grad_norm = clip_gradients(self.denoiser, self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.denoiser)
        self.step += 1
        bits = elbo_mean / (x0[0].numel() * math.log(2.0))
        return {"step": self.step, "loss": loss, "train_elbo_diffusion_bpd": bits,
                "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}

    def _sharded_backward(self, x0: Tensor, labels: Tensor | None = None) -> tuple[float, float]:
        """Accumulate this rank's share of the gradient of the global-batch loss; returns the global mean
        loss and mean ELBO diffusion term. The noise is drawn for the global batch exactly as
        ``training_loss`` draws it, so the per-example randomness does not depend on the split."""
        ctx, accum = self.ctx, self.config.train.grad_accumulation
        batch, sites = x0.shape[0], x0[0].numel()
        if batch < ctx.world_size * accum:
            raise ValueError(f"the training split has {batch} examples, fewer than world size x "
                             f"train.grad_accumulation = {ctx.world_size * accum}")
        noise = draw_noise(self.process, x0, self.schedule, self.proposal, self.noise_generator)
        start, stop = shard_bounds(batch, ctx.rank, ctx.world_size)
        scale = ctx.world_size / (batch * sites)
        sums = torch.zeros(2, dtype=torch.float64, device=x0.device)  # loss * sites, ELBO term: over examples
        self.optimizer.zero_grad(set_to_none=True)
        for m in range(accum):
            a, b = shard_bounds(stop - start, m, accum)
            part = slice(start + a, start + b)
            sync = m == accum - 1 or not ctx.enabled
            with nullcontext() if sync else self.model.no_sync():
                model = self.model if labels is None else ConditionalDenoiser(self.model, labels[part], self.num_classes)
                per_example, elbo = diffusion_terms(self.process, model, x0[part], noise[part], self.weighting,
                                                     self.objective)
                micro_loss = per_example.sum() * scale
                self._check_finite(micro_loss)
                micro_loss.backward()
            sums += torch.stack([per_example.detach().sum(), elbo.detach().sum()]).double()
        sums = ctx.all_reduce(sums.to(ctx.collective_device(x0.device))).cpu()
        return float(sums[0]) / (batch * sites), float(sums[1]) / batch

    def _check_finite(self, micro_loss: Tensor) -> None:
        """Stop every rank together (before any backward) when the loss is NaN or infinite on any rank."""
        value = micro_loss.detach().double().reshape(1)
        if self.ctx.enabled:
            value = self.ctx.all_reduce(value.to(self.ctx.collective_device(value.device)))
        if not torch.isfinite(value).all():
            raise self._non_finite(float(value[0]))

    def validate(self) -> dict:
        """Validation NLL (bits/dim) of the EMA weights on one fixed set of noise draws: the generator is seeded
        with train.seed + 3 at every validation and the ``train.eval_t_samples`` lam draws of each example are
        stratified (``losses.estimate_elbo``), so two validations of the same weights agree exactly and
        checkpoints differ by their weights, not the noise. The training generators are not touched. Under
        torchrun every rank evaluates its shard of the split and the statistics are all-reduced. A conditional model
        is scored by the bound on -log p(x | c), each class's examples with their class bound, pooled by count."""
        name = "val" if self.dataset.val.shape[0] else "test"
        split, labels = self.dataset.split(name), self.dataset.labels(name)
        self.denoiser.eval()
        parts = [(split, self.denoiser)] if not self.num_classes else [  # conditional: -log p(x | c), class by class
            (split[labels == c], ConditionalDenoiser(self.denoiser, int(c))) for c in torch.unique(labels).tolist()
        ] if labels is not None else [(split, ConditionalDenoiser(self.denoiser, self.num_classes))]   # unlabelled: null
        mean = var = 0.0
        with self.ema.swap_into(self.denoiser):
            for data, denoiser in parts:
                result = evaluate_nll_sharded(self.ctx, self.process, denoiser, self.schedule, data, self.proposal,
                                              self.config.train.eval_t_samples, self.config.evaluate.batch_size,
                                              self.config.train.seed + 3, self.device)
                weight = data.shape[0] / split.shape[0]
                mean, var = mean + weight * result.nll_bits_per_dim, var + (weight * result.nll_bits_per_dim_stderr) ** 2
        return {"step": self.step, "val_nll_bits_per_dim": mean, "val_nll_bits_per_dim_stderr": math.sqrt(var)}

    def sample_grid(self) -> Path | None:
        """A grid of 64 samples from the EMA weights (split over ranks; rank 0 writes it)."""
        if self.dataset.kind != "image":
            return None
        sampler = build_sampler_from(self.config)
        shape = tuple(self.dataset.site_shape)

        def draw(n: int, seed: int) -> Tensor:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            if not self.num_classes:
                return sampler.sample(self.process, self.denoiser, self.schedule, (n, *shape), generator, self.device)
            labels, x = torch.arange(n) % self.num_classes, torch.empty((n, *shape), dtype=torch.long)
            for c in torch.unique(labels).tolist():   # classes cycle over rows; one sampler call per class
                x[labels == c] = sampler.sample(self.process, ConditionalDenoiser(self.denoiser, c), self.schedule,
                                                (int((labels == c).sum()), *shape), generator, self.device).cpu()
            return x

        self.denoiser.eval()
        with self.ema.swap_into(self.denoiser):
            x = sample_sharded(self.ctx, draw, 64, shape, self.config.train.seed + 4)
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"

        def write() -> None:
            ensure_dir(path.parent, root=self.run_dir)
            save_image_grid(x.cpu(), self.dataset.num_states, path)

        self._on_main(write, "writing a sample grid")
        return path if self.ctx.is_main else None

    def _record_data(self, resume: bool) -> None:
        """data.json: checksums of the data files and splits (data/manifest.py). A resumed run must find the
        data it was trained on; evaluate and sample compare against this record."""
        if resume and (self.run_dir / MANIFEST_NAME).exists():
            try:
                check_data_manifest(self.run_dir, self.dataset)
            except DataChangedError as err:
                raise DataChangedError(f"{str(err).split('; restore')[0]}; a resumed run must train on the data it "
                                       f"started with: restore the data or train into a new --out") from None
        else:
            if self.dataset.metadata.get("tokenizer_json") is not None:  # BPE text: the trained tokenizer
                write_run_tokenizer(self.run_dir, self.dataset.metadata["tokenizer_json"])
            write_data_manifest(self.run_dir, self.dataset)

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
        self._on_main(lambda: save_config(self.config, self.run_dir / "config.yaml"), "writing config.yaml")
        tc = self.config.train
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        start = time.time()
        deadline = None if tc.time_limit_minutes is None else start + 60.0 * tc.time_limit_minutes
        while self.step < tc.steps:
            record = self.train_step()
            bar.update(1)
            out_of_time = deadline is not None and self.ctx.any_true(time.time() > deadline)
            last = self.step == tc.steps or out_of_time
            if last and self.step < tc.steps:
                if self.ctx.is_main:
                    bar.write(f"time limit of {tc.time_limit_minutes} min reached at step {self.step}; stopping")
            if self.step % 10 == 0 or last:
                record["elapsed_s"] = round(time.time() - start, 2)
                self._on_main(lambda: self._write_metrics(record), "writing metrics")
                bar.set_postfix(loss=f"{record['loss']:.4f}", bpd=f"{record['train_elbo_diffusion_bpd']:.3f}")
            if self.step % tc.eval_every == 0 or last:
                metrics = self.validate()
                self._on_main(lambda: self._write_metrics(metrics), "writing metrics")
                if self.ctx.is_main:
                    bar.write(f"step {self.step}: val NLL {metrics['val_nll_bits_per_dim']:.4f} "
                              f"± {metrics['val_nll_bits_per_dim_stderr']:.4f} bits/dim")
                if self.best is None or metrics["val_nll_bits_per_dim"] < self.best[0]:
                    self.best = (metrics["val_nll_bits_per_dim"], self.step)
                    self._on_main(lambda: self._save(self.run_dir / "best", keep_last=1), "saving best/")
            if self.step % tc.sample_every == 0:
                self.sample_grid()
            if self.step % tc.checkpoint_every == 0 or last:
                self._on_main(lambda: self._save(self.run_dir / "checkpoints", keep_last=tc.keep_last),
                              "saving a checkpoint")
            if last:
                break
        bar.close()
        return TrainResult(self.run_dir, self.step, self.best[0] if self.best else None,
                           self.best[1] if self.best else None)
