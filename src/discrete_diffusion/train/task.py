"""What the :class:`~discrete_diffusion.train.trainer.Trainer` trains: the task contract.

One loop trains every model of the library (the diffusion denoiser, the exact-likelihood baselines, the DDPD
planner, the noisy classifier), so each gets the same run directory, checkpoints, exact resume, best/ selection,
metrics, time limit, DDP, gradient accumulation and bf16. The Trainer owns all of that, plus the optimizer, the
learning-rate schedule, the EMA and two seeded generators:

    data  = torch.Generator("cpu").manual_seed(train.seed + 1)      example indices, augmentation, label dropout
    noise = torch.Generator(device).manual_seed(train.seed + 2)     t, x_t and other per-example noise

A :class:`Task` supplies the rest, in this order:

1. ``setup(TaskSetup)``: its data and everything but the module (no global random draws needed).
2. ``build_module()``: the module to optimise (EMA'd and checkpointed), called right after the Trainer seeded
   torch, ``random`` and numpy with ``train.seed``: every rank and every resume start from the same weights.
3. ``forward_module(bf16)``: the module the loss calls (DistributedDataParallel wraps it). The task decides which
   part runs under bf16 autocast; parameters stay float32 and the loss is computed in float32.
4. ``draw_batch()``: the *global* batch of one optimizer step, drawn from the Trainer's generators only, so that
   it is identical on every rank and the generators stay equal across ranks (one checkpoint serves all).
5. ``loss(model, batch, part)``: per-example losses (b,) of the examples ``part`` (a slice) of the batch, each
   summed over the example's ``dims`` dimensions (nats), and per-example statistics for the metrics line.
   The Trainer optimises

       L = (1 / (B * dims)) * sum_{i < B} loss_i

   over the B examples of the global batch. One process, one micro-batch and fp32 take it as
   ``loss.mean() / dims``; otherwise rank r's micro-batch m contributes ``sum(loss_part) * world / (B * dims)``,
   and DDP's mean over ranks with the accumulation over micro-batches gives the same gradient up to rounding.
6. ``validate()``: called in eval mode with the EMA weights in place; a dict of floats with ``val_key``
   (lower is better), which selects best/.
7. ``sample_grid(step)``: optional (image grids of the diffusion task), with the EMA weights in place.
8. ``checkpoint_config()``: the config a checkpoint must match to be resumed (checked key by key), and
   ``run_config(config)``: what config.yaml records (default: the run config).
"""

from __future__ import annotations

import os
import random
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from ..config import MODEL_SECTIONS, to_dict
from ..data import DiscreteDataset
from ..distributed import DistContext

__all__ = ["Task", "TaskSetup", "TaskLoss", "model_config", "seed_everything", "compile_in_place",
           "reduce_over_batches", "tensor_dataset", "module_record"]


def model_config(config: DictConfig) -> dict:
    """The config sections a checkpoint must match (data, process, model)."""
    full = to_dict(config)
    return {k: full[k] for k in MODEL_SECTIONS}


def seed_everything(seed: int) -> None:
    """Seed torch, ``random`` and numpy (the same on every rank: identical initial weights). ``random`` and numpy
    are unused by the library but checkpointed: a resumed run must match a straight one."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def compile_in_place(module: nn.Module, device: torch.device) -> None:
    """``train.compile=true``: compile ``module``'s forward in place (``nn.Module.compile``), so parameter names,
    and so checkpoints, stay those of the eager model (no ``_orig_mod.`` prefix). On CPU the inductor backend
    builds C++ kernels: without a C++ compiler (``$CXX`` or ``g++``) this raises ValueError before training."""
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if shutil.which(cxx) is None:
            raise ValueError(f"train.compile=true on CPU needs a C++ compiler (torch.compile builds C++ kernels), "
                             f"and {cxx!r} is not on PATH: install g++ (or set $CXX) or use train.compile=false")
    module.compile()


@dataclass
class TaskSetup:
    """What the Trainer hands a task: the run config, where it trains, on which device and rank, and the
    generators every batch is drawn from (the Trainer seeds, checkpoints and restores them)."""

    config: DictConfig
    run_dir: Path
    device: torch.device
    ctx: DistContext
    data_generator: torch.Generator
    noise_generator: torch.Generator


@dataclass
class TaskLoss:
    """``per_example``: (b,) float, each example's loss summed over its ``dims`` dimensions (nats).
    ``stats``: name -> (b,) per-example values averaged over the global batch for the metrics line."""

    per_example: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


class Task(ABC):
    """One training objective for the Trainer (module docstring: the contract and its order of calls)."""

    #: What the task trains, for messages and the progress bar.
    name: str = "task"
    #: The validation key that selects best/ (lower is better).
    val_key: str = "val_loss"
    #: The command that starts a run of this task, for messages ("start a new run with `COMMAND --out DIR`").
    command: str = "ddiff train"
    #: Methods of the network other than ``forward`` that ``loss`` / ``validate`` call on it directly; under
    #: ``train.sharding=fsdp`` they gather the parameters like ``forward`` does (train/sharding.py).
    sharded_methods: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.module: nn.Module | None = None   # set by the Trainer to what build_module returned
        self.dims = 1                          # dimensions per example: the loss is per dimension
        self.dataset: DiscreteDataset | None = None   # set by setup: its checksums go to data.json
        self.env: TaskSetup | None = None

    def setup(self, setup: TaskSetup) -> None:
        """Load the data and build everything but the module; set ``self.dataset`` (the data trained on, whose
        checksums go to data.json and are checked by ``--resume``) and ``self.dims``. Subclasses call this first
        (it keeps ``setup`` as ``self.env``)."""
        self.env = setup

    def place_splits(self, setup: TaskSetup) -> None:
        """For tasks on a ready dataset: keep the device, put the train and val splits on it (``train_data``,
        ``val_data``) and count the dimensions per example (``dims``, the sites)."""
        self.device = setup.device
        self.train_data, self.val_data = self.dataset.train.to(self.device), self.dataset.val.to(self.device)
        self.dims = self.dataset.num_sites

    @abstractmethod
    def build_module(self) -> nn.Module:
        """The module to optimise (on the task's device), after the Trainer seeded everything with train.seed."""

    def compile(self, device: torch.device) -> None:
        """``train.compile=true``: compile the module's network in place (its ``backbone`` when it has one)."""
        compile_in_place(getattr(self.module, "backbone", self.module), device)

    @abstractmethod
    def forward_module(self, bf16: bool) -> nn.Module:
        """The module ``loss`` calls (wrapped in DDP under torchrun); with ``bf16`` its network runs under
        autocast and what it returns is float32."""

    @abstractmethod
    def draw_batch(self) -> Any:
        """The global batch of one optimizer step, drawn from the setup's generators alone."""

    @abstractmethod
    def batch_size(self, batch: Any) -> int:
        """The number B of examples in ``batch``."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, part: slice) -> TaskLoss:
        """Per-example losses of the examples ``part`` of ``batch``, computed through ``model``."""

    def train_record(self, stats: dict[str, float]) -> dict[str, float]:
        """The metrics-line entries of the batch means of ``TaskLoss.stats`` (default: none)."""
        return {}

    def postfix(self, record: dict) -> dict[str, str]:
        """Extra progress-bar entries for a metrics line (default: none)."""
        return {}

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Validation metrics of the module as it is (the Trainer swaps the EMA weights in): ``val_key`` and more."""

    def describe(self, metrics: dict) -> str:
        """One line for a validation result."""
        return f"{self.val_key} {metrics[self.val_key]:.4f}"

    def sample_grid(self, step: int) -> Path | None:
        """Optional: draw and write a sample grid (EMA weights in place); the default draws none."""
        return None

    def checkpoint_config(self) -> dict:
        """The config a checkpoint must match to be resumed (default: the data, process and model sections)."""
        return model_config(self.env.config)

    def run_config(self, config: DictConfig) -> DictConfig:
        """What config.yaml records (default: the whole run config, which ``--resume`` reads back)."""
        return config


def reduce_over_batches(ctx: DistContext, count: int, draw: Callable[[int], Any], score: Callable[[Any], Tensor],
                        width: int) -> Tensor:
    """``sum_i score(draw(i))`` over batches ``i < count``, split over ranks: every rank calls ``draw(i)`` for every
    batch (its random draws, so that each batch gets the draws one process gives it), and ``score`` only for its
    batches (``i % world_size == rank``). The (width,) float64 sums are all-reduced: every rank returns the total
    of one process, up to the order of the additions."""
    total = torch.zeros(width, dtype=torch.float64)
    for i in range(count):
        item = draw(i)
        if i % ctx.world_size == ctx.rank:
            total += score(item).double().cpu()
    return ctx.all_reduce(total.to(ctx.collective_device())).cpu()


def tensor_dataset(train: Tensor, val: Tensor, num_states: int, name: str = "tensors",
                   train_labels: Tensor | None = None, val_labels: Tensor | None = None) -> DiscreteDataset:
    """Splits given as tensors (N, *sites) long as a DiscreteDataset (no test split): what a task trained on
    in-memory data records in data.json. ValueError for an empty split or values outside 0..num_states-1."""
    if train.shape[0] == 0 or val.shape[0] == 0:
        raise ValueError(f"{name}: training needs non-empty train and val splits, got {train.shape[0]} and "
                         f"{val.shape[0]} examples")
    train, val = train.cpu(), val.cpu()
    return DiscreteDataset(train=train, val=val, test=train[:0], num_states=int(num_states), name=name,
                           kind="image" if train.dim() == 3 else "sequence",
                           train_labels=None if train_labels is None else train_labels.cpu(),
                           val_labels=None if val_labels is None else val_labels.cpu(),
                           test_labels=None if train_labels is None else train_labels[:0].cpu())


def module_record(task: Task, module: nn.Module) -> dict:
    """The checkpoint config of a task whose module was built by the caller (not from the run config): the task,
    the module's class and size, and the data's checksum."""
    from ..runs.data_record import data_manifest

    return {"task": task.name, "model": {"class": type(module).__name__,
                                         "parameters": sum(p.numel() for p in module.parameters())},
            "data": {"splits_sha256": data_manifest(task.dataset)["splits_sha256"]}}
