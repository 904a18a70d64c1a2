"""Exact-likelihood baselines trained through the library's one training loop, in one call.

:func:`fit_exact_model` trains an autoregressive baseline (:class:`~discrete_diffusion.baselines.ARTransformer`,
:class:`~discrete_diffusion.baselines.GatedPixelCNN`) by its exact NLL with
:class:`~discrete_diffusion.train.trainer.Trainer` and
:class:`~discrete_diffusion.baselines.exact_task.ExactLikelihoodTask`, so a likelihood table compares models, not
recipes: the run goes into a run directory (config.yaml, checkpoints/, best/, metrics.jsonl, data.json) that
``resume=True`` continues, and the best EMA weights are also written as one safetensors file.
:func:`fit_task` does the same for any task whose module the caller built (``planner.fit_planner``).
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ..config import load_config
from ..runs.results import export_weights, load_best_weights, validation_curve
from ..train.task import Task
from ..train.trainer import Trainer
from .exact_task import ExactLikelihoodModel, ExactLikelihoodTask

__all__ = ["ExactLikelihoodModel", "FitSettings", "FitResult", "bits_per_dim", "fit_exact_model", "fit_task"]


@dataclass
class FitSettings:
    """The optimisation recipe (defaults: :class:`~discrete_diffusion.config.TrainConfig`'s)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    eval_every: int = 500
    seed: int = 0
    wall_budget: Optional[float] = None     # seconds; stop (after a validation) at the first step past it

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"FitSettings.lr must be > 0, got {self.lr}")

    @classmethod
    def from_train_config(cls, train: DictConfig, **overrides) -> "FitSettings":
        """The recipe of a run config's ``train`` section (``overrides`` replace single fields)."""
        keys = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip",
                "ema_decay", "eval_every", "seed")
        return cls(**{**{k: train[k] for k in keys}, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    def train_config(self, device: torch.device | str = "cpu") -> DictConfig:
        """A run config whose ``train`` section is this recipe on ``device``: checkpoints at every validation
        (the newest one kept), no sample grids, fp32, one micro-batch."""
        keys = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip",
                "ema_decay", "eval_every", "seed")
        overrides = [f"train.{k}={getattr(self, k)}" for k in keys] + [
            f"train.checkpoint_every={self.eval_every}", "train.keep_last=1", f"train.sample_every={self.steps + 1}",
            f"train.device={torch.device(device)}"]
        if self.wall_budget is not None:
            overrides.append(f"train.time_limit_minutes={self.wall_budget / 60.0}")
        return load_config(None, overrides)


@dataclass
class FitResult:
    best_val_bits_per_dim: float
    best_step: int
    steps_done: int
    train_seconds: float
    val_curve: list[list[float]] = field(default_factory=list)   # [step, val bits/dim]
    run_dir: Optional[Path] = None


@torch.no_grad()
def bits_per_dim(model: nn.Module, data: Tensor, device: torch.device | str, batch_size: int = 512) -> Tensor:
    """Exact ``-log2 p(x) / dims`` per example of ``data`` (N, *sites), in eval mode: (N,) float64 on the CPU."""
    was_training = model.training
    model.eval()
    try:
        dims = data[0].numel()
        parts = [-model.log_likelihood(data[i:i + batch_size].to(device)).double().cpu()
                 for i in range(0, data.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) / (dims * math.log(2.0))


@contextmanager
def _caller_rng_kept(device: torch.device) -> Iterator[None]:
    """The Trainer seeds torch, ``random`` and numpy with train.seed; a library call leaves the caller's alone."""
    state_py, state_np = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state_py)
        np.random.set_state(state_np)


def fit_task(task: Task, settings: FitSettings, weights_path: str | Path, device: torch.device | str = "cpu",
             progress: bool = False, log: Callable[[str], None] = lambda _message: None,
             run_dir: str | Path | None = None, resume: bool = False) -> FitResult:
    """Train ``task`` with ``settings`` on ``device`` through the Trainer into ``run_dir`` (default: ``weights_path``
    without its suffix plus ``.run``; ``resume`` continues it), then load the best EMA weights into the task's
    module (eval mode) and write them as safetensors at ``weights_path``. The caller's global RNG states are left
    as they were; ``log`` receives one line per validation."""
    weights_path = Path(weights_path)
    run_dir = Path(run_dir) if run_dir is not None else weights_path.with_name(weights_path.stem + ".run")
    device = torch.device(device)
    start = time.time()
    with _caller_rng_kept(device):
        trainer = Trainer(settings.train_config(device), run_dir, progress=progress, log=log, task=task)
        result = trainer.fit(resume=resume)
    seconds = time.time() - start
    load_best_weights(run_dir, task.module, task.checkpoint_config())
    task.module.eval()
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    export_weights(task.module, weights_path)
    assert result.best_step is not None and result.best_val_nll_bits_per_dim is not None
    return FitResult(result.best_val_nll_bits_per_dim, result.best_step, result.step, seconds,
                     validation_curve(run_dir, task.val_key), run_dir)


def fit_exact_model(model: nn.Module, train: Tensor, val: Tensor, settings: FitSettings, weights_path: str | Path,
                    device: torch.device | str = "cpu", progress: bool = False,
                    log: Callable[[str], None] = lambda _message: None, run_dir: str | Path | None = None,
                    resume: bool = False) -> FitResult:
    """Train ``model`` (on ``device``) on ``train`` (N, *sites) long by exact NLL, validating the EMA weights on
    ``val`` every ``eval_every`` steps and at the end (:func:`fit_task` with
    :class:`~discrete_diffusion.baselines.exact_task.ExactLikelihoodTask`); ``model`` ends with the best EMA
    weights, which are also written at ``weights_path``."""
    return fit_task(ExactLikelihoodTask(model, train, val), settings, weights_path, device, progress, log, run_dir,
                    resume)
