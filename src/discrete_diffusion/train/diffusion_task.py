"""The diffusion task of the Trainer: the continuous-time ELBO (or a reweighted objective) of a denoiser.

References: Santos et al., "Blackout Diffusion: Generative Diffusion Models in Discrete-State Spaces", ICML 2023,
and Lou, Meng, Ermon, "Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution", ICML 2024
(the continuous-time bound; DESIGN.md section 3 and ``losses.py``).

Each step draws a global batch x0 (B, *sites) of training examples (indices, then the augmentation, then the
labels' dropout to the null class, all from the data generator) and, from the noise generator, one (lam, x_t)
per example (``losses.draw_noise``); the per-example loss is ``losses.diffusion_terms``' objective, so with one
process, one micro-batch and fp32 the step is :func:`~discrete_diffusion.losses.training_loss` on the batch.
Validation is the NLL bound (bits/dim) of the EMA weights on the validation split (else the test split) on one
fixed set of noise draws; image runs draw sample grids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

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
    resolve_process_options,
)
from ..config import validation_t_samples
from ..denoiser import ConditionalDenoiser, NetworkDenoiser, backbone_input, noise_level_input
from ..distributed import sample_sharded
from ..likelihood import evaluate_nll_sharded
from ..losses import NoiseDraw, diffusion_terms, draw_noise
from ..processes.base import Prediction
from ..report.grids import save_image_grid
from ..runs.atomic_io import ensure_dir
from ..runs.tokenizer_file import run_tokenizer_json
from ..runs.weights import find_latest_checkpoint
from .augment import build_augmentation
from .task import Task, TaskLoss, TaskSetup

__all__ = ["DiffusionTask", "DiffusionBatch", "AutocastDenoiser"]


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

    @property
    def block_size(self) -> int | None:
        return getattr(self.denoiser, "block_size", None)

    def forward(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None, clean: Tensor | None = None) -> Prediction:
        d = self.denoiser
        if clean is not None:       # block diffusion: the whole vectorised forward under autocast, the loss in float32
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                prediction = d(xt, lam, labels, clean=clean)
            return Prediction(x0_log_probs=d.process.x0_log_probs(prediction, xt).float())
        inputs = (backbone_input(d.process, d.backbone, xt, lam), noise_level_input(lam))
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            output = d.backbone(*inputs) if labels is None else d.backbone(*inputs, labels)
        return d.process.prediction_from_output(output.float(), xt, lam, d.parameterization)


@dataclass
class DiffusionBatch:
    """x0 (B, *sites) long; labels (B,) long or None (unconditional); noise: one (lam, x_t) per example."""

    x0: Tensor
    labels: Tensor | None
    noise: NoiseDraw


class DiffusionTask(Task):
    """The denoiser of a ``ddiff train`` run (module docstring)."""

    name = "diffusion"
    val_key = "val_nll_bits_per_dim"
    command = "ddiff train"

    def setup(self, setup: TaskSetup) -> None:
        super().setup(setup)
        config, tc = setup.config, setup.config.train
        self.config, self.device, self.ctx, self.run_dir = config, setup.device, setup.ctx, setup.run_dir
        self.data_generator, self.noise_generator = setup.data_generator, setup.noise_generator
        self.dataset = build_dataset(config, self._cached_tokenizer())
        if self.dataset.val.shape[0] == 0 and self.dataset.test.shape[0] == 0:  # validation needs one of them
            raise ValueError(f"the dataset has {self.dataset.train.shape[0]} training examples and none left for "
                             "validation or test (each split takes about 10% of a user array); validation and "
                             "best-checkpoint selection need at least one: use a larger dataset")
        resolve_process_options(config, self.dataset)        # recorded in config.yaml (jump: mean_scale)
        self.process = build_process_from(config, self.dataset.num_states)
        self.schedule = build_schedule_from(config)
        self.proposal = build_proposal(config)
        self.weighting = build_weighting_from(config)
        self.objective = build_objective_from(config)
        self.augment = build_augmentation(tc.augment, self.dataset.kind)
        self.num_classes = resolve_num_classes(config, self.dataset)
        self.train_data = self.dataset.train.to(self.device)
        self.train_labels = self.dataset.train_labels.to(self.device) if self.num_classes else None
        self.dims = math.prod(self.dataset.site_shape)
        self.block_size = config.model.get("block_size", None)     # block diffusion: one lam per block

    def _cached_tokenizer(self) -> str | None:
        """A BPE run that holds checkpoints (which only --resume continues) keeps the tokenizer it was trained
        with: ``RUN_DIR/tokenizer.json``, checked against data.json; otherwise None (one is trained)."""
        if self.config.data.tokenizer != "bpe" or find_latest_checkpoint(self.run_dir / "checkpoints") is None:
            return None
        return run_tokenizer_json(self.run_dir)

    def build_module(self) -> nn.Module:
        self.denoiser = build_denoiser(self.config, self.process, self.dataset.site_shape,
                                       self.num_classes).to(self.device)
        return self.denoiser

    def forward_module(self, bf16: bool) -> nn.Module:
        return AutocastDenoiser(self.denoiser, self.device.type) if bf16 else self.denoiser

    # ----- batches and the loss ----------------------------------------------------------------------------
    def _next_batch(self) -> tuple[Tensor, Tensor | None]:
        """The global batch's examples (identical on every rank) and, for a conditional model, its labels (B,),
        each replaced by the null class (index num_classes) with probability train.cond_dropout. Every draw comes
        from the data generator (after the permutation and the augmentation), so resume stays bit-exact; an
        unconditional run draws exactly what it drew before labels existed."""
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

    def draw_batch(self) -> DiffusionBatch:
        """The examples (data generator), then (lam, x_t) for the whole global batch from the noise generator,
        exactly as ``training_loss`` draws them: the per-example randomness does not depend on the split."""
        x0, labels = self._next_batch()
        clip = self.config.train.mask_rate_clip
        return DiffusionBatch(x0, labels, draw_noise(self.process, x0, self.schedule, self.proposal,
                                                     self.noise_generator, block_size=self.block_size,
                                                     mask_rate_clip=None if clip is None else tuple(clip)))

    def batch_size(self, batch: DiffusionBatch) -> int:
        return batch.x0.shape[0]

    def loss(self, model: nn.Module, batch: DiffusionBatch, part: slice) -> TaskLoss:
        if batch.labels is not None:
            model = ConditionalDenoiser(model, batch.labels[part], self.num_classes)
        per_example, elbo = diffusion_terms(self.process, model, batch.x0[part], batch.noise[part], self.weighting,
                                            self.objective)
        return TaskLoss(per_example, {"elbo": elbo})

    def train_record(self, stats: dict[str, float]) -> dict[str, float]:
        return {"train_elbo_diffusion_bpd": stats["elbo"] / (self.dims * math.log(2.0))}

    def postfix(self, record: dict) -> dict[str, str]:
        return {"bpd": f"{record['train_elbo_diffusion_bpd']:.3f}"}

    # ----- validation and samples --------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Validation NLL (bits/dim) on one fixed set of noise draws: the generator is seeded with train.seed + 3
        at every validation and the lam draws of each example are stratified (``losses.estimate_elbo``); their number
        is ``train.eval_t_samples``, or when null ``config.validation_t_samples`` (more draws for a small split: 4
        draws on a few hundred 4-site examples read 0.06 bits/dim below the bound that 64 draws give, hiding a
        plateau; issue 19), recorded as ``val_t_samples``. The stderr pools the spread over examples and over
        draws. So two validations of the same weights agree exactly and checkpoints differ by
        their weights, not the noise. The training generators are not touched. Under torchrun every rank evaluates
        its shard of the split and the statistics are all-reduced. A conditional model is scored by the bound on
        -log p(x | c), each class's examples with their class bound, pooled by count."""
        name = "val" if self.dataset.val.shape[0] else "test"
        split, labels = self.dataset.split(name), self.dataset.labels(name)
        parts = [(split, self.denoiser)] if not self.num_classes else [  # conditional: -log p(x | c), class by class
            (split[labels == c], ConditionalDenoiser(self.denoiser, int(c))) for c in torch.unique(labels).tolist()
        ] if labels is not None else [(split, ConditionalDenoiser(self.denoiser, self.num_classes))]  # unlabelled
        mean = var = 0.0
        draws = validation_t_samples(self.config.train.eval_t_samples, split.shape[0], self.dims)
        for data, denoiser in parts:
            result = evaluate_nll_sharded(self.ctx, self.process, denoiser, self.schedule, data, self.proposal,
                                          draws, self.config.evaluate.batch_size,
                                          self.config.train.seed + 3, self.device)
            weight = data.shape[0] / split.shape[0]
            mean, var = mean + weight * result.nll_bits_per_dim, var + (weight * result.nll_bits_per_dim_stderr) ** 2
        return {"val_nll_bits_per_dim": mean, "val_nll_bits_per_dim_stderr": math.sqrt(var), "val_t_samples": draws}

    def describe(self, metrics: dict) -> str:
        return (f"val NLL {metrics['val_nll_bits_per_dim']:.4f} ± {metrics['val_nll_bits_per_dim_stderr']:.4f} "
                "bits/dim")

    def sample_grid(self, step: int) -> Path | None:
        """A grid of 64 samples (split over ranks; rank 0 writes it), for image data of a bounded process only."""
        if self.dataset.kind != "image" or self.process.unbounded:
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

        x = sample_sharded(self.ctx, draw, 64, shape, self.config.train.seed + 4)
        path = self.run_dir / "samples" / f"step_{step:08d}.png"

        def write() -> None:
            ensure_dir(path.parent, root=self.run_dir)
            save_image_grid(x.cpu(), self.dataset.num_states, path)

        self.ctx.on_main(write, "writing a sample grid")
        return path if self.ctx.is_main else None
