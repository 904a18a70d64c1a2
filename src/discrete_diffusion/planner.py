"""A trained noise planner for planned denoising (DDPD) under uniform noise.

Reference: Liu, Nie, Nagar, Cheng, Zhang, Wang, Jaakkola, Gómez-Bombarelli, "Think While You Generate:
Discrete Diffusion with Planned Denoising", 2024 (the planner and its cross-entropy loss).

Under uniform noise every site of x_t is, independently, noise (z = 1: a uniform value, which may equal x0)
with probability 1 - alpha, else clean (x_t = x0, z = 0); ``UniformProcess.sample_marginal_with_noise`` draws
both. The planner is a network (x_t, lam) -> logit P(z^d = 1 | x_t) for every site d, trained by binary
cross-entropy on (x_t, z) with t ~ U(0, 1) mapped through the run's schedule (the sampling grid's law of t):

    L = E_{t, x0, (x_t, z)} sum_d BCE(sigmoid(logit_d(x_t, lam)), z^d),

whose minimiser is the exact P(z^d = 1 | x_t), the quantity ``UniformProcess.noise_probability`` derives from
a denoiser. A trained planner estimates it with a network of its own, and the ``ddpd`` sampler
(``samplers/ddpd.py``) picks the sites to denoise from it.

:class:`PlannerTask` is this objective as a task of the library's one training loop
(:class:`~discrete_diffusion.train.trainer.Trainer`): per example the BCE summed over the sites, validation the
mean BCE (bits per site) of the EMA weights on fixed draws from the validation split (``val_bce_bits_per_site``).
``train_planner`` (``ddiff train-planner RUN_DIR [--out DIR] [--resume]``) trains one for a uniform-noise run on the
run's data, splits and schedule, with the run's ``model`` section as the architecture unless overridden, into a
run-like directory (default ``RUN_DIR/planner/``: config.yaml, data.json, metrics.jsonl, checkpoints/, best/;
``train/companion.py``), then writes ``planner.safetensors`` (the best EMA weights) and ``metrics.json``, which
compares its validation BCE with that of the planner derived from the run's denoiser, on the same draws.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from .baselines.fit import FitResult, FitSettings, fit_task
from .builders import build_backbone
from .config import load_run_config, to_dict
from .data import DiscreteDataset
from .denoiser import Denoiser, backbone_input, noise_level_input
from .distributed import DistContext, setup
from .processes import ForwardProcess
from .runs.results import export_weights, load_best_weights, validation_curve
from .runs.tensors import compare_tensors
from .schedules import Schedule
from .train.companion import companion_config, companion_dir, train_companion
from .train.task import Task, TaskLoss, TaskSetup, model_config, module_record, reduce_over_batches, tensor_dataset

#: ``planner(x_t (B, *sites) long, lam (B,)) -> P(site is noise | x_t) (B, *sites)``, as the ddpd sampler takes it.
Planner = Callable[[Tensor, Tensor], Tensor]

PLANNER_WEIGHTS = "planner.safetensors"
#: The run's sections a planner must share: it models the noise of that data under that process.
SHARED_SECTIONS = ("data", "process")


class NoisePlanner(nn.Module):
    """A backbone (features (B, C_in, *sites), noise level (B,)) -> (B, 1, *sites) on the uniform process's
    input features; ``forward`` returns P(site is noise | x_t)."""

    def __init__(self, backbone: nn.Module, process: ForwardProcess) -> None:
        super().__init__()
        if process.name != "uniform":
            raise ValueError(f"a trained planner is for uniform noise, got process {process.name!r} (under masking "
                             "the noisy sites are the masked ones: the ddpd sampler needs no planner there)")
        self.backbone = backbone
        self.process = process

    def logits(self, xt: Tensor, lam: Tensor, autocast: str | None = None) -> Tensor:
        """logit P(z = 1 | x_t) per site: (B, *sites) float32; with ``autocast`` (a device type) the backbone
        runs under bf16 autocast."""
        inputs = (backbone_input(self.process, self.backbone, xt, lam), noise_level_input(lam))
        with torch.autocast(autocast, dtype=torch.bfloat16) if autocast else nullcontext():
            output = self.backbone(*inputs)
        return output[:, 0].float()

    def forward(self, xt: Tensor, lam: Tensor) -> Tensor:
        """P(site is noise | x_t): (B, *sites) float64."""
        return torch.sigmoid(self.logits(xt, lam).double())


def denoiser_planner(process: ForwardProcess, denoiser: Denoiser) -> Planner:
    """The ddpd sampler's default planner: P(noise | x_t) derived from the denoiser's p(x0 | x_t)."""
    return lambda xt, lam: process.noise_probability(xt, denoiser(xt, lam), lam)


def draw_noise_indicators(process: ForwardProcess, schedule: Schedule, x0: Tensor,
                          generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """t ~ U(0, 1) per example, lam = logit alpha(t), and (x_t, z) ~ q_t(. | x0): ((B, *sites), (B, *sites) bool,
    (B,) float64)."""
    t = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=x0.device)
    lam = torch.logit(schedule.alpha(t).clamp(0.0, 1.0))
    xt, is_noise = process.sample_marginal_with_noise(x0, lam, generator)
    return xt, is_noise, lam


@torch.no_grad()
def planner_bits_per_site(planner: Planner, process: ForwardProcess, schedule: Schedule, data: Tensor, seed: int,
                          batch_size: int = 256, ctx: DistContext | None = None) -> float:
    """Mean BCE of ``planner`` on the noise indicators of (x_t, z) drawn from ``data`` (N, *sites), in bits per
    site. The draws depend on ``seed`` only, so two planners scored with one seed see the same draws; with a
    ``ctx`` the batches are split over its ranks (each draws every batch, scores its own) and the sums pooled."""
    generator = torch.Generator(device=data.device).manual_seed(seed)

    def draw(i: int) -> tuple[Tensor, Tensor, Tensor]:
        return draw_noise_indicators(process, schedule, data[i * batch_size:(i + 1) * batch_size], generator)

    def score(item: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        xt, is_noise, lam = item
        p = planner(xt, lam).double().clamp(1e-12, 1.0 - 1e-12)
        return -torch.where(is_noise, p.log(), (-p).log1p()).sum().reshape(1)

    total = reduce_over_batches(ctx or DistContext(), math.ceil(data.shape[0] / batch_size), draw, score, 1)
    return float(total[0]) / (data.numel() * math.log(2.0))


class PlannerLogits(nn.Module):
    """``forward(x_t, lam) = planner.logits(x_t, lam)``: the module the loss calls (DDP wraps it); with a
    ``device_type`` the backbone runs under bf16 autocast. Holds no weights of its own."""

    def __init__(self, planner: NoisePlanner, device_type: str | None = None) -> None:
        super().__init__()
        self.planner, self.device_type = planner, device_type

    def forward(self, xt: Tensor, lam: Tensor) -> Tensor:
        return self.planner.logits(xt, lam, self.device_type)


@dataclass
class PlannerBatch:
    """x_t (B, *sites) long, z (B, *sites) bool (site is noise), lam (B,)."""

    xt: Tensor
    is_noise: Tensor
    lam: Tensor


class PlannerTask(Task):
    """The planner's BCE as a task of the Trainer, on ``dataset``'s train and val splits under ``process`` and
    ``schedule`` (a run's). The planner is built from the run config's ``model`` section, or is ``planner``."""

    name = "planner"
    val_key = "val_bce_bits_per_site"
    command = "ddiff train-planner"

    def __init__(self, process: ForwardProcess, schedule: Schedule, dataset: DiscreteDataset,
                 planner: NoisePlanner | None = None) -> None:
        super().__init__()
        if process.name != "uniform":
            raise ValueError(f"a trained planner is for uniform noise, got process {process.name!r} (under masking "
                             "the noisy sites are the masked ones)")
        if dataset.train.shape[0] == 0 or dataset.val.shape[0] == 0:
            raise ValueError(f"a planner needs non-empty train and val splits, got {dataset.train.shape[0]} and "
                             f"{dataset.val.shape[0]} examples")
        self.process, self.schedule, self.dataset, self.given = process, schedule, dataset, planner

    def setup(self, setup: TaskSetup) -> None:
        super().setup(setup)
        self.place_splits(setup)

    def build_module(self) -> nn.Module:
        if self.given is None:
            backbone = build_backbone(self.env.config, self.process, self.dataset.site_shape, out_channels=1)
            self.planner = NoisePlanner(backbone, self.process)
        else:
            self.planner = self.given
        return self.planner.to(self.device)

    def forward_module(self, bf16: bool) -> nn.Module:
        return PlannerLogits(self.planner, self.device.type if bf16 else None)

    def draw_batch(self) -> PlannerBatch:
        """Examples uniformly without replacement (data generator), then t, lam and (x_t, z) (noise generator)."""
        n = self.train_data.shape[0]
        index = torch.randperm(n, generator=self.env.data_generator)[:min(self.env.config.train.batch_size, n)]
        return PlannerBatch(*draw_noise_indicators(self.process, self.schedule, self.train_data[index.to(self.device)],
                                                   self.env.noise_generator))

    def batch_size(self, batch: PlannerBatch) -> int:
        return batch.xt.shape[0]

    def loss(self, model: nn.Module, batch: PlannerBatch, part: slice) -> TaskLoss:
        logits = model(batch.xt[part], batch.lam[part])
        bce = F.binary_cross_entropy_with_logits(logits, batch.is_noise[part].float(), reduction="none")
        return TaskLoss(bce.flatten(1).sum(1))

    def validate(self) -> dict[str, float]:
        """BCE (bits per site) on draws from the validation split seeded with train.seed + 3 (fixed draws)."""
        bits = planner_bits_per_site(self.planner, self.process, self.schedule, self.val_data,
                                     self.env.config.train.seed + 3, ctx=self.env.ctx)
        return {"val_bce_bits_per_site": bits}

    def describe(self, metrics: dict) -> str:
        return f"val BCE (EMA) {metrics['val_bce_bits_per_site']:.4f} bits/site"

    def checkpoint_config(self) -> dict:
        """The run config's data, process and model sections (a planner built by the caller: its class and size,
        and the data's checksum)."""
        if self.given is not None:
            return module_record(self, self.given)
        return {"task": self.name, **model_config(self.env.config)}


def fit_planner(planner: NoisePlanner, schedule: Schedule, train: Tensor, val: Tensor, settings: FitSettings,
                weights_path: str | Path, progress: bool = False,
                log: Callable[[str], None] = lambda _message: None, run_dir: str | Path | None = None,
                resume: bool = False) -> FitResult:
    """Train ``planner`` (already on its device) by BCE on draws from ``train`` (N, *sites) through the Trainer
    (``baselines.fit_task``: a run directory next to ``weights_path``, the best EMA weights loaded into
    ``planner`` and written at ``weights_path``); validation scores the EMA weights on fixed draws from ``val``."""
    dataset = tensor_dataset(train, val, planner.process.num_states, "planner data")
    device = next(planner.parameters()).device
    return fit_task(PlannerTask(planner.process, schedule, dataset, planner), settings, weights_path, device,
                    progress, log, run_dir, resume)


def train_planner(run_dir: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
                  device: str = "auto", progress: bool = True, resume: bool = False) -> dict | None:
    """Train a planner for the uniform-noise run at ``run_dir`` into ``out_dir`` (default ``RUN_DIR/planner``;
    ``resume``: continue the training there). ``overrides`` (``model.*`` and ``train.*`` only) change the run's
    config for the planner. Under torchrun every rank calls this; rank 0 returns the metrics written to
    ``metrics.json``, the others None."""
    from .runs.load import load_run, write_json

    run_dir = Path(run_dir)
    out = companion_dir(run_dir, out_dir, "planner")
    config = companion_config(run_dir, overrides, out, resume, device, "planner", "ddiff train-planner")
    if config.process.name != "uniform":
        raise ValueError(f"run {run_dir} uses the {config.process.name!r} process; a trained planner is for uniform "
                         "noise (under masking the noisy sites are the masked ones)")
    _, local = setup(config.train.device)
    run = load_run(run_dir, "best", str(local))
    task = PlannerTask(run.process, run.schedule, run.dataset)

    def finish(done) -> dict:
        load_best_weights(out, task.planner, task.checkpoint_config())
        task.planner.eval()
        export_weights(task.planner, out / PLANNER_WEIGHTS)
        derived = planner_bits_per_site(denoiser_planner(run.process, run.denoiser), run.process, run.schedule,
                                        run.dataset.val.to(run.device), config.train.seed + 3)
        best = done.result
        metrics = {"val_bce_bits_per_site": best.best_val_nll_bits_per_dim,
                   "denoiser_planner_val_bce_bits_per_site": derived, "best_step": best.best_step,
                   "steps_done": best.step, "train_seconds": round(done.seconds, 1),
                   "val_curve": validation_curve(out, task.val_key),
                   "parameters": sum(p.numel() for p in task.planner.parameters()), "run_dir": str(run_dir.resolve()),
                   "run_checkpoint": str(run.checkpoint), "weights": str(out / PLANNER_WEIGHTS)}
        write_json(out / "metrics.json", metrics)
        return metrics

    return train_companion(task, config, out, resume, progress, finish)


def load_planner(planner_dir: str | Path, run) -> NoisePlanner:
    """The planner written by ``train_planner`` into ``planner_dir`` (``planner.safetensors``: the best EMA
    weights of its training), for ``run`` (a ``pipeline.LoadedRun`` with the same data and process sections), on
    the run's device in eval mode. Reads YAML and safetensors only."""
    planner_dir = Path(planner_dir)
    weights = planner_dir / PLANNER_WEIGHTS
    if not (planner_dir / "config.yaml").is_file() or not weights.is_file():
        raise ValueError(f"{planner_dir} is not a planner directory (expected config.yaml and {PLANNER_WEIGHTS}, "
                         "written by `ddiff train-planner RUN_DIR`)")
    config = load_run_config(planner_dir / "config.yaml")
    for section in SHARED_SECTIONS:
        if to_dict(config)[section] != to_dict(run.config)[section]:
            raise ValueError(f"the planner in {planner_dir} was trained for another run: its {section} section "
                             f"differs from the run's")
    planner = NoisePlanner(build_backbone(config, run.process, run.dataset.site_shape, out_channels=1), run.process)
    try:
        state = load_file(str(weights))
    except Exception as err:  # a truncated or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read planner weights {weights}: {first}") from None
    problems = compare_tensors(planner.state_dict(), state)
    if problems:
        raise ValueError(f"planner weights {weights} do not match its config.yaml: " + "; ".join(problems))
    planner.load_state_dict(state)
    return planner.to(run.device).eval()
