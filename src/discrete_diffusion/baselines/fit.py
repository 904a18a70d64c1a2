"""Training loop for the exact-likelihood baselines (autoregressive models), with the diffusion Trainer's recipe.

The baselines in this package (:class:`~discrete_diffusion.baselines.ARTransformer`,
:class:`~discrete_diffusion.baselines.GatedPixelCNN`) give an exact ``log p(x)``, so training minimises the
exact NLL per dimension. Everything else follows :class:`~discrete_diffusion.train.trainer.Trainer`, so that a
likelihood table compares models, not recipes: batches drawn uniformly without replacement per step, AdamW
with the same no-decay groups, linear warmup then cosine decay, gradient clipping, EMA with warmup, and
validation of the EMA weights every ``eval_every`` steps keeping the best one (written as safetensors).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..train.atomic_io import atomic_write
from ..train.ema import EMA
from ..train.optim import build_optimizer, clip_gradients, warmup_cosine_schedule

__all__ = ["ExactLikelihoodModel", "FitSettings", "FitResult", "bits_per_dim", "fit_exact_model", "fit_model"]


class ExactLikelihoodModel(Protocol):
    """An ``nn.Module`` with ``log_likelihood(x) -> (B,)`` nats, for x ``(B, *sites)`` long."""

    def log_likelihood(self, x: Tensor) -> Tensor: ...


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


@dataclass
class FitResult:
    best_val_bits_per_dim: float
    best_step: int
    steps_done: int
    train_seconds: float
    val_curve: list[list[float]] = field(default_factory=list)   # [step, val bits/dim, seconds]


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


def fit_exact_model(model: nn.Module, train: Tensor, val: Tensor, settings: FitSettings, weights_path: str | Path,
                    device: torch.device | str = "cpu", progress: bool = False,
                    log: Callable[[str], None] = lambda _message: None) -> FitResult:
    """Train ``model`` (already on ``device``) on ``train`` (N, *sites) long by exact NLL; validate the EMA
    weights on ``val`` every ``eval_every`` steps and at the end; save the best as safetensors at
    ``weights_path`` and load them into ``model`` before returning."""
    if train.shape[0] == 0 or val.shape[0] == 0:
        raise ValueError(f"fit_exact_model needs non-empty train and val splits, got {train.shape[0]} and "
                         f"{val.shape[0]} examples")
    train = train.to(device)
    dims = train[0].numel()
    return fit_model(model, lambda index: -model.log_likelihood(train[index]).mean() / dims,
                     lambda: float(bits_per_dim(model, val, device).mean()), train.shape[0], settings, weights_path,
                     progress=progress, log=log, desc="train (exact NLL)")


def fit_model(model: nn.Module, batch_loss: Callable[[Tensor], Tensor], validate: Callable[[], float],
              num_train: int, settings: FitSettings, weights_path: str | Path, progress: bool = False,
              log: Callable[[str], None] = lambda _message: None, desc: str = "train") -> FitResult:
    """The loop behind ``fit_exact_model``, for any loss. ``batch_loss(index)`` is the training loss (nats per
    dimension) of the training examples at ``index`` (a (batch,) long tensor on the model's device);
    ``validate()`` scores the model as it is (called with the EMA weights swapped in, in bits per dimension,
    lower is better). The best EMA weights are saved at ``weights_path`` and loaded into ``model``."""
    s = settings
    weights_path = Path(weights_path)
    device = next(model.parameters()).device
    optimizer = build_optimizer(model, lr=s.lr, weight_decay=s.weight_decay)
    scheduler = warmup_cosine_schedule(optimizer, min(s.warmup_steps, s.steps), s.steps, s.min_lr_ratio)
    ema = EMA(model, decay=s.ema_decay)
    data_generator = torch.Generator().manual_seed(s.seed + 1)
    best: tuple[float, int] | None = None
    curve: list[list[float]] = []
    start = time.time()
    bar = tqdm(total=s.steps, desc=desc, disable=not progress, dynamic_ncols=True)
    step = 0
    while step < s.steps:
        model.train()
        index = torch.randperm(num_train, generator=data_generator)[:min(s.batch_size, num_train)].to(device)
        loss = batch_loss(index)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model, s.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(model)
        step += 1
        bar.update(1)
        out_of_time = s.wall_budget is not None and time.time() - start > s.wall_budget
        if step % s.eval_every == 0 or step == s.steps or out_of_time:
            with ema.swap_into(model):
                model.eval()
                val_bits = validate()
                if best is None or val_bits < best[0]:
                    best = (val_bits, step)
                    weights_path.parent.mkdir(parents=True, exist_ok=True)
                    blob = save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
                    atomic_write(weights_path, lambda f: f.write(blob))  # never through a symbolic link
            curve.append([step, val_bits, round(time.time() - start, 1)])
            log(f"step {step}: train {loss.item() / math.log(2):.4f} bits/dim, val (EMA) {val_bits:.4f} bits/dim, "
                f"{time.time() - start:.0f} s")
        if out_of_time:
            break
    bar.close()
    model.eval()
    assert best is not None
    model.load_state_dict(load_file(str(weights_path)))
    return FitResult(best[0], best[1], step, time.time() - start, curve)
