"""The training loop: AdamW with warmup and clipping, EMA, periodic validation, sample grids, checkpoints
with exact resume, and best-checkpoint selection on the validation NLL.

Run directory layout (DESIGN.md section 5):
    config.yaml            the resolved config
    metrics.jsonl          one JSON line per logged step / evaluation
    checkpoints/           ckpt_XXXXXXXX.{safetensors,json}: model, EMA, optimizer, scheduler, RNG, step
    best/                  the checkpoint with the lowest validation NLL so far (EMA weights evaluated)
    samples/               sample grids during training (images)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..builders import (build_dataset, build_denoiser, build_process_from, build_proposal, build_sampler_from,
                        build_schedule_from, build_weighting_from, resolve_device)
from ..config import MODEL_SECTIONS, save_config, to_dict
from ..evaluate.likelihood import evaluate_nll
from ..losses import training_loss
from ..visualize import save_image_grid
from .augment import build_augmentation
from .checkpoint import find_latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA
from .optim import build_optimizer, clip_gradients, warmup_cosine_schedule


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_nll_bits_per_dim: float | None
    best_step: int | None


def model_config(config: DictConfig) -> dict:
    """The config sections a checkpoint must match (data, process, model)."""
    full = to_dict(config)
    return {k: full[k] for k in MODEL_SECTIONS}


class Trainer:
    """Builds everything from a config and trains it into ``run_dir``."""

    def __init__(self, config: DictConfig, run_dir: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.log = log
        tc = config.train
        if tc.steps < 1 or tc.batch_size < 1:
            raise ValueError(f"train.steps and train.batch_size must be >= 1, got {tc.steps} and {tc.batch_size}")
        self.device = resolve_device(tc.device)
        self.dataset = build_dataset(config)
        self.process = build_process_from(config, self.dataset.num_states)
        self.schedule = build_schedule_from(config)
        self.proposal = build_proposal(config)
        self.weighting = build_weighting_from(config)
        self.augment = build_augmentation(tc.augment, self.dataset.kind)
        torch.manual_seed(tc.seed)
        self.denoiser = build_denoiser(config, self.process, self.dataset.site_shape).to(self.device)
        self.optimizer = build_optimizer(self.denoiser, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = warmup_cosine_schedule(self.optimizer, min(tc.warmup_steps, tc.steps), tc.steps,
                                                tc.min_lr_ratio)
        self.ema = EMA(self.denoiser, decay=tc.ema_decay)
        self.data_generator = torch.Generator().manual_seed(tc.seed + 1)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(tc.seed + 2)
        self.train_data = self.dataset.train.to(self.device)
        self.step = 0
        self.best: tuple[float, int] | None = None

    # ----- run directory -------------------------------------------------------------------------
    @property
    def generators(self) -> dict[str, torch.Generator]:
        return {"data": self.data_generator, "noise": self.noise_generator}

    def _prepare_run_dir(self, resume: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        probe = self.run_dir / ".write_test"
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise ValueError(f"run directory {self.run_dir} is not writable: {err}") from None
        if not resume and find_latest_checkpoint(self.run_dir / "checkpoints") is not None:
            raise ValueError(f"{self.run_dir} already holds checkpoints; resume it (--resume) or use a new --out")

    def _resume(self) -> None:
        latest = find_latest_checkpoint(self.run_dir / "checkpoints")
        if latest is None:
            return
        meta = load_checkpoint(latest, self.denoiser, self.optimizer, self.scheduler, self.ema, self.generators,
                               expected_config=model_config(self.config))
        self.step = int(meta["step"])
        best = meta.get("extra", {}).get("best")
        self.best = (float(best[0]), int(best[1])) if best else None
        self._truncate_metrics(self.step)
        self.log(f"resumed from {latest.name} at step {self.step}")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))

    def _write_metrics(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _save(self, directory: Path, keep_last: int) -> None:
        save_checkpoint(directory, self.step, self.denoiser, self.optimizer, self.scheduler, self.ema,
                        self.generators, extra={"config": model_config(self.config), "best": list(self.best or [])},
                        keep_last=keep_last)

    # ----- the loop ------------------------------------------------------------------------------------
    def _next_batch(self) -> torch.Tensor:
        n = self.train_data.shape[0]
        batch = min(self.config.train.batch_size, n)
        index = torch.randperm(n, generator=self.data_generator)[:batch].to(self.device)
        x0 = self.train_data[index]
        return self.augment(x0, self.data_generator) if self.augment is not None else x0

    def train_step(self) -> dict:
        self.denoiser.train()
        x0 = self._next_batch()
        out = training_loss(self.process, self.denoiser, x0, self.schedule, self.proposal, self.weighting,
                            self.noise_generator)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"loss is {out.loss.item()} at step {self.step + 1}; the last checkpoint in "
                                     f"{self.run_dir / 'checkpoints'} is intact")
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = clip_gradients(self.denoiser, self.config.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.denoiser)
        self.step += 1
        bits = float(out.elbo_diffusion.mean()) / (x0[0].numel() * math.log(2.0))
        return {"step": self.step, "loss": float(out.loss.detach()), "train_elbo_diffusion_bpd": bits,
                "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}

    def validate(self) -> dict:
        """Validation NLL (bits/dim) of the EMA weights, with a fixed seed so evaluations compare."""
        split = self.dataset.val if self.dataset.val.shape[0] else self.dataset.test
        generator = torch.Generator(device=self.device).manual_seed(self.config.train.seed + 3)
        self.denoiser.eval()
        with self.ema.swap_into(self.denoiser):
            result = evaluate_nll(self.process, self.denoiser, self.schedule, split, self.proposal,
                                  self.config.train.eval_t_samples, self.config.evaluate.batch_size, generator,
                                  self.device)
        return {"step": self.step, "val_nll_bits_per_dim": result.nll_bits_per_dim,
                "val_nll_bits_per_dim_stderr": result.nll_bits_per_dim_stderr}

    def sample_grid(self) -> Path | None:
        if self.dataset.kind != "image":
            return None
        generator = torch.Generator(device=self.device).manual_seed(self.config.train.seed + 4)
        sampler = build_sampler_from(self.config)
        self.denoiser.eval()
        with self.ema.swap_into(self.denoiser):
            x = sampler.sample(self.process, self.denoiser, self.schedule, (64, *self.dataset.site_shape),
                               generator, self.device)
        return save_image_grid(x.cpu(), self.dataset.num_states, self.run_dir / "samples" / f"step_{self.step:08d}.png")

    def fit(self, resume: bool = False) -> TrainResult:
        self._prepare_run_dir(resume)
        if resume:
            self._resume()  # validates the config against the checkpoint before anything is written
        save_config(self.config, self.run_dir / "config.yaml")
        tc = self.config.train
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", disable=not self.progress, dynamic_ncols=True)
        start = time.time()
        deadline = None if tc.time_limit_minutes is None else start + 60.0 * tc.time_limit_minutes
        while self.step < tc.steps:
            record = self.train_step()
            bar.update(1)
            last = self.step == tc.steps or (deadline is not None and time.time() > deadline)
            if last and self.step < tc.steps:
                bar.write(f"time limit of {tc.time_limit_minutes} min reached at step {self.step}; stopping")
            if self.step % 10 == 0 or last:
                record["elapsed_s"] = round(time.time() - start, 2)
                self._write_metrics(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", bpd=f"{record['train_elbo_diffusion_bpd']:.3f}")
            if self.step % tc.eval_every == 0 or last:
                metrics = self.validate()
                self._write_metrics(metrics)
                bar.write(f"step {self.step}: val NLL {metrics['val_nll_bits_per_dim']:.4f} "
                          f"± {metrics['val_nll_bits_per_dim_stderr']:.4f} bits/dim")
                if self.best is None or metrics["val_nll_bits_per_dim"] < self.best[0]:
                    self.best = (metrics["val_nll_bits_per_dim"], self.step)
                    self._save(self.run_dir / "best", keep_last=1)
            if self.step % tc.sample_every == 0:
                self.sample_grid()
            if self.step % tc.checkpoint_every == 0 or last:
                self._save(self.run_dir / "checkpoints", keep_last=tc.keep_last)
            if last:
                break
        bar.close()
        return TrainResult(self.run_dir, self.step, self.best[0] if self.best else None,
                           self.best[1] if self.best else None)
