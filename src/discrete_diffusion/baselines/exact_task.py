"""The exact-likelihood task of the Trainer: an autoregressive baseline trained by its exact NLL.

References: van den Oord, Kalchbrenner, Kavukcuoglu, "Pixel Recurrent Neural Networks", ICML 2016 (training an
autoregressive image model by its exact log-likelihood); Radford et al., GPT-2, 2019 (the same for sequences).

The baselines of this package (:class:`~discrete_diffusion.baselines.ARTransformer`,
:class:`~discrete_diffusion.baselines.GatedPixelCNN`) give an exact ``log p(x) = sum_i log p(x_i | x_<i)``, so the
per-example loss is ``-log p(x)`` (nats, summed over the ``dims`` sites) and the Trainer minimises
``-(1 / (B dims)) sum_b log p(x_b)``, the NLL per dimension, with the diffusion model's recipe (batches drawn
uniformly without replacement per step, AdamW, warmup and cosine decay, clipping, EMA): a likelihood table then
compares models, not recipes. Validation is the exact NLL of the EMA weights on the validation split, in bits
per dimension (``val_bits_per_dim``, which selects best/).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ..train.task import Task, TaskLoss, TaskSetup, module_record, reduce_over_batches, tensor_dataset

__all__ = ["ExactLikelihoodModel", "ExactLikelihoodTask", "LogLikelihood"]

#: Examples per network call in validation.
VAL_BATCH = 512


class ExactLikelihoodModel(Protocol):
    """An ``nn.Module`` with ``log_likelihood(x) -> (B,)`` nats, for x ``(B, *sites)`` long."""

    def log_likelihood(self, x: Tensor) -> Tensor: ...


class LogLikelihood(nn.Module):
    """``forward(x) = model.log_likelihood(x)`` (B,) float32: the module the loss calls (DDP wraps it). With a
    ``device_type`` the whole likelihood runs under bf16 autocast, whose op list keeps the log-softmax and the
    cross-entropy in float32. Holds no weights of its own."""

    def __init__(self, model: nn.Module, device_type: str | None = None) -> None:
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, x: Tensor) -> Tensor:
        if self.device_type is None:
            return self.model.log_likelihood(x)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model.log_likelihood(x).float()


class ExactLikelihoodTask(Task):
    """Train ``model`` (an :class:`ExactLikelihoodModel`) on ``train`` (N, *sites) long by exact NLL; validate on
    ``val`` (M, *sites). ``name`` names the data in data.json."""

    name = "exact-nll"
    val_key = "val_bits_per_dim"
    command = "fit_exact_model"
    sharded_methods = ("log_likelihood",)   # what LogLikelihood and validate call (FSDP gathers around it)

    def __init__(self, model: nn.Module, train: Tensor, val: Tensor, name: str = "tensors") -> None:
        super().__init__()
        states = getattr(model, "num_states", None)
        if states is None:   # a model that does not say: the largest value seen + 1
            states = 1 + max((int(x.max()) for x in (train, val) if x.numel()), default=1)
        self.model = model
        self.dataset = tensor_dataset(train, val, states, name)

    def setup(self, setup: TaskSetup) -> None:
        super().setup(setup)
        self.place_splits(setup)

    def build_module(self) -> nn.Module:
        return self.model.to(self.device)

    def compile(self, device: torch.device) -> None:
        raise ValueError("train.compile applies to the diffusion, planner and classifier tasks; exact-likelihood "
                         "baselines train eagerly: use train.compile=false")

    def forward_module(self, bf16: bool) -> nn.Module:
        return LogLikelihood(self.model, self.device.type if bf16 else None)

    def draw_batch(self) -> Tensor:
        """Examples drawn uniformly without replacement from the training split (data generator): (B, *sites)."""
        n = self.train_data.shape[0]
        index = torch.randperm(n, generator=self.env.data_generator)[:min(self.env.config.train.batch_size, n)]
        return self.train_data[index.to(self.device)]

    def batch_size(self, batch: Tensor) -> int:
        return batch.shape[0]

    def loss(self, model: nn.Module, batch: Tensor, part: slice) -> TaskLoss:
        return TaskLoss(-model(batch[part]))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Exact NLL of the validation split in bits per dimension (split over ranks by batches)."""
        data = self.val_data
        count = math.ceil(data.shape[0] / VAL_BATCH)
        total = reduce_over_batches(self.env.ctx, count, lambda i: data[i * VAL_BATCH:(i + 1) * VAL_BATCH],
                                    lambda x: -self.model.log_likelihood(x).double().sum().reshape(1), 1)
        return {"val_bits_per_dim": float(total[0]) / (data.shape[0] * self.dims * math.log(2.0))}

    def describe(self, metrics: dict) -> str:
        return f"val (EMA) {metrics['val_bits_per_dim']:.4f} bits/dim"

    def checkpoint_config(self) -> dict:
        """The model class and size, and the data's checksum: a resume must continue the same model on the same
        data (the tensor names and shapes are checked as well)."""
        return module_record(self, self.model)

    def run_config(self, config: DictConfig) -> DictConfig:
        """config.yaml of an exact-likelihood run: this task's checkpoint config and the train section."""
        return OmegaConf.create({**self.checkpoint_config(), "train": OmegaConf.to_container(config.train)})
