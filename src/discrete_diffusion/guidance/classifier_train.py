"""A noise-conditioned classifier p(c | x_t, lam) for classifier guidance, trained on the forward process.

Reference: Nisonoff et al., "Unlocking Guidance for Discrete State-Space Diffusion and Flow Models", ICLR 2025
(the predictor p(c | x_t) trained on noised data); Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
Synthesis", 2021 (noise-conditioned classifiers).

``NoisyClassifierNet``: any library backbone with C output channels per site, averaged over the sites into class
logits (B, C). Trained by cross-entropy on pairs (x_t ~ q_t(. | x0), c) with t ~ U(0, 1) mapped through the run's
schedule (the sampling grid's law of t):

    L = E_{t, (x0, c)} [ -log softmax(logits(x_t, lam))_c ],

whose minimiser is the exact p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0). :class:`ClassifierTask` is this
objective as a task of the library's one training loop (:class:`~discrete_diffusion.train.trainer.Trainer`, as the
DDPD planner's): per example the cross-entropy in nats, validation the cross-entropy in bits (``val_ce_bits``,
which selects best/) and the accuracy of the EMA weights on fixed draws from the validation split.

``train_classifier`` (``ddiff train-classifier RUN_DIR [--out DIR] [--resume]``) trains one into a run-like
directory (default ``RUN_DIR/classifier/``: config.yaml, data.json with the run's data checksums, metrics.jsonl,
checkpoints/, best/; ``train/companion.py``), then writes ``classifier.safetensors`` (the best EMA weights) and
``metrics.json`` (validation accuracy and cross-entropy at a few noise levels) through the library's safe writers;
``load_classifier`` checks a directory against a run (config sections, data checksums, tensor names and shapes,
finite weights).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..builders import build_backbone
from ..config import load_run_config, to_dict
from ..data import DiscreteDataset
from ..denoiser import backbone_input, noise_level_input
from ..distributed import DistContext, setup
from ..processes import ForwardProcess
from ..runs.data_record import check_data_manifest
from ..runs.results import export_weights, load_best_weights, validation_curve
from ..runs.tensors import compare_tensors
from ..schedules import Schedule
from ..train.companion import companion_config, companion_dir, train_companion
from ..train.task import Task, TaskLoss, TaskSetup, model_config, reduce_over_batches

CLASSIFIER_WEIGHTS = "classifier.safetensors"
#: The run's sections a classifier must share: it classifies noised data of that data set under that process.
SHARED_SECTIONS = ("data", "process")
#: The noise levels (t) at which metrics.json reports accuracy and cross-entropy.
METRIC_TIMES = (0.1, 0.5, 0.9)


class NoisyClassifierNet(nn.Module):
    """A backbone (features (B, C_in, *sites), noise level (B,)) -> (B, C, *sites), averaged over the sites:
    ``logits(x_t, lam)`` (B, C); calling it gives log p_t(c | x_t) (B, C) float64 (``guidance.ClassifierGuidance``'s
    classifier). ``onehot_log_probs`` takes one_hot(x_t) (B, *sites, M) instead, differentiably (the Taylor form;
    processes whose input is one_hot(x_t) only)."""

    noise_level_free = False

    def __init__(self, backbone: nn.Module, process: ForwardProcess, num_classes: int) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone, self.process, self.num_classes = backbone, process, int(num_classes)

    def _pool(self, output: Tensor) -> Tensor:
        return output.float().reshape(output.shape[0], output.shape[1], -1).mean(-1)

    def logits(self, xt: Tensor, lam: Tensor, autocast: str | None = None) -> Tensor:
        """Class logits (B, C) float32; with ``autocast`` (a device type) the backbone runs under bf16 autocast."""
        inputs = (backbone_input(self.process, self.backbone, xt, lam), noise_level_input(lam))
        with torch.autocast(autocast, dtype=torch.bfloat16) if autocast else nullcontext():
            output = self.backbone(*inputs)
        return self._pool(output)

    def forward(self, xt: Tensor, lam: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(xt, lam).double(), dim=-1)

    def onehot_log_probs(self, onehot: Tensor, lam: Tensor) -> Tensor:
        """onehot (B, *sites, M) float -> log p_t(c | x_t) (B, C) float64, differentiable in ``onehot``."""
        if self.process.input_kind != "tokens" or self.process.feature_channels != onehot.shape[-1]:
            raise ValueError(f"the taylor guidance form needs a process whose input is one_hot(x_t); "
                             f"{self.process.name!r}'s is not: use --guidance-form exact")
        features = onehot.float().movedim(-1, 1)
        return torch.log_softmax(self._pool(self.backbone(features, noise_level_input(lam))).double(), dim=-1)


def draw_noisy(process: ForwardProcess, schedule: Schedule, x0: Tensor, generator: torch.Generator,
               t: float | None = None) -> tuple[Tensor, Tensor]:
    """t ~ U(0, 1) per example (or the given t), lam = logit alpha(t), x_t ~ q_t(. | x0): ((B, *sites), (B,))."""
    if t is None:
        times = torch.rand(x0.shape[0], generator=generator, dtype=torch.float64, device=x0.device)
    else:
        times = torch.full((x0.shape[0],), float(t), dtype=torch.float64, device=x0.device)
    lam = torch.logit(schedule.alpha(times).clamp(0.0, 1.0))
    return process.sample_marginal(x0, lam, generator), lam


@torch.no_grad()
def classifier_scores(classifier: NoisyClassifierNet, schedule: Schedule, data: Tensor, labels: Tensor, seed: int,
                      t: float | None = None, batch_size: int = 256, ctx: DistContext | None = None
                      ) -> tuple[float, float]:
    """(cross-entropy in bits, accuracy) of ``classifier`` on draws x_t of ``data`` (N, *sites) with ``labels``
    (N,), at t ~ U(0, 1) or at the given t; the draws depend on ``seed`` only. With a ``ctx`` the batches are split
    over its ranks (each draws every batch, scores its own) and the sums pooled."""
    generator = torch.Generator(device=data.device).manual_seed(seed)

    def draw(i: int) -> tuple[Tensor, Tensor, Tensor]:
        part = slice(i * batch_size, (i + 1) * batch_size)
        return (*draw_noisy(classifier.process, schedule, data[part], generator, t), labels[part])

    def score(item: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        xt, lam, target = item
        log_p = classifier(xt, lam)
        return torch.stack([-log_p.gather(1, target[:, None]).sum(), (log_p.argmax(1) == target).sum().double()])

    nll, correct = reduce_over_batches(ctx or DistContext(), math.ceil(data.shape[0] / batch_size), draw, score, 2)
    return float(nll) / (data.shape[0] * math.log(2.0)), float(correct) / data.shape[0]


def run_labels(run) -> tuple[Tensor, Tensor, int]:
    """(train labels, val labels, C) of a loaded run's data set; ValueError when it has none."""
    data = run.dataset
    if data.train_labels is None or data.val_labels is None:
        raise ValueError(f"the data set {data.name!r} of this run has no class labels: a classifier needs labelled "
                         "data (an .npz with x and y, a labelled data set such as digits, or class subfolders)")
    count = int(torch.cat([data.train_labels, data.val_labels]).max()) + 1
    return data.train_labels.long(), data.val_labels.long(), max(count, 2)


class ClassifierLogits(nn.Module):
    """``forward(x_t, lam) = classifier.logits(x_t, lam)`` (B, C): the module the loss calls (DDP wraps it); with
    a ``device_type`` the backbone runs under bf16 autocast. Holds no weights of its own."""

    def __init__(self, classifier: NoisyClassifierNet, device_type: str | None = None) -> None:
        super().__init__()
        self.classifier, self.device_type = classifier, device_type

    def forward(self, xt: Tensor, lam: Tensor) -> Tensor:
        return self.classifier.logits(xt, lam, self.device_type)


@dataclass
class ClassifierBatch:
    """x_t (B, *sites) long, lam (B,), the classes c (B,) long."""

    xt: Tensor
    lam: Tensor
    labels: Tensor


class ClassifierTask(Task):
    """The noisy classifier's cross-entropy as a task of the Trainer, on ``dataset``'s labelled train and val splits
    under ``process`` and ``schedule`` (a run's), with ``num_classes`` classes; the network is the run config's
    ``model`` section with C output channels."""

    name = "classifier"
    val_key = "val_ce_bits"
    command = "ddiff train-classifier"

    def __init__(self, process: ForwardProcess, schedule: Schedule, dataset: DiscreteDataset, num_classes: int) -> None:
        super().__init__()
        if dataset.train_labels is None or dataset.val_labels is None:
            raise ValueError(f"the data set {dataset.name!r} has no class labels: a classifier needs labelled data")
        if dataset.train.shape[0] == 0 or dataset.val.shape[0] == 0:
            raise ValueError(f"a classifier needs non-empty train and val splits, got {dataset.train.shape[0]} and "
                             f"{dataset.val.shape[0]}")
        self.process, self.schedule, self.dataset, self.num_classes = process, schedule, dataset, int(num_classes)

    def setup(self, setup: TaskSetup) -> None:
        super().setup(setup)
        self.place_splits(setup)
        self.train_labels = self.dataset.train_labels.long().to(self.device)
        self.val_labels = self.dataset.val_labels.long().to(self.device)
        self.dims = 1   # one label per example: the loss is per example

    def build_module(self) -> nn.Module:
        backbone = build_backbone(self.env.config, self.process, self.dataset.site_shape,
                                  out_channels=self.num_classes)
        self.classifier = NoisyClassifierNet(backbone, self.process, self.num_classes).to(self.device)
        return self.classifier

    def forward_module(self, bf16: bool) -> nn.Module:
        return ClassifierLogits(self.classifier, self.device.type if bf16 else None)

    def draw_batch(self) -> ClassifierBatch:
        """Labelled examples uniformly without replacement (data generator), then t, lam and x_t (noise generator)."""
        n = self.train_data.shape[0]
        index = torch.randperm(n, generator=self.env.data_generator)[:min(self.env.config.train.batch_size, n)]
        index = index.to(self.device)
        xt, lam = draw_noisy(self.process, self.schedule, self.train_data[index], self.env.noise_generator)
        return ClassifierBatch(xt, lam, self.train_labels[index])

    def batch_size(self, batch: ClassifierBatch) -> int:
        return batch.xt.shape[0]

    def loss(self, model: nn.Module, batch: ClassifierBatch, part: slice) -> TaskLoss:
        logits, target = model(batch.xt[part], batch.lam[part]), batch.labels[part]
        return TaskLoss(F.cross_entropy(logits, target, reduction="none"),
                        {"correct": (logits.detach().argmax(1) == target).float()})

    def train_record(self, stats: dict[str, float]) -> dict[str, float]:
        return {"train_accuracy": stats["correct"]}

    def validate(self) -> dict[str, float]:
        """Cross-entropy (bits) and accuracy on draws from the validation split seeded with train.seed + 3."""
        ce, accuracy = classifier_scores(self.classifier, self.schedule, self.val_data, self.val_labels,
                                         self.env.config.train.seed + 3, ctx=self.env.ctx)
        return {"val_ce_bits": ce, "val_accuracy": accuracy}

    def describe(self, metrics: dict) -> str:
        return f"val CE (EMA) {metrics['val_ce_bits']:.4f} bits, accuracy {metrics['val_accuracy']:.3f}"

    def checkpoint_config(self) -> dict:
        return {"task": self.name, **model_config(self.env.config)}


def train_classifier(run_dir: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
                     device: str = "auto", progress: bool = True, resume: bool = False) -> dict | None:
    """Train a noisy classifier for the run at ``run_dir`` on its data, labels, process and schedule into
    ``out_dir`` (default ``RUN_DIR/classifier``; ``resume``: continue the training there). ``overrides``:
    ``model.*`` and ``train.*`` only (the run's model section is the architecture unless overridden). Under
    torchrun every rank calls this; rank 0 returns the metrics written to ``metrics.json``, the others None."""
    from ..runs.load import load_run, write_json

    run_dir = Path(run_dir)
    out = companion_dir(run_dir, out_dir, "classifier")
    config = companion_config(run_dir, overrides, out, resume, device, "classifier", "ddiff train-classifier")
    _, local = setup(config.train.device)
    run = load_run(run_dir, "best", str(local))
    _, val_labels, num_classes = run_labels(run)
    task = ClassifierTask(run.process, run.schedule, run.dataset, num_classes)

    def finish(done) -> dict:
        classifier = task.classifier
        load_best_weights(out, classifier, task.checkpoint_config())
        classifier.eval()
        export_weights(classifier, out / CLASSIFIER_WEIGHTS)
        val = run.dataset.val.to(run.device)
        at_levels = {}
        for t in METRIC_TIMES:
            ce, acc = classifier_scores(classifier, run.schedule, val, val_labels.to(run.device),
                                        config.train.seed + 4, t)
            at_levels[f"t={t:g}"] = {"val_ce_bits": ce, "val_accuracy": acc}
        best = done.result
        metrics = {"num_classes": num_classes, "val_ce_bits": best.best_val_nll_bits_per_dim,
                   "at_noise_levels": at_levels, "best_step": best.best_step, "steps_done": best.step,
                   "train_seconds": round(done.seconds, 1), "val_curve": validation_curve(out, task.val_key),
                   "parameters": sum(p.numel() for p in classifier.parameters()), "run_dir": str(run_dir.resolve()),
                   "weights": str(out / CLASSIFIER_WEIGHTS)}
        write_json(out / "metrics.json", metrics)
        return metrics

    return train_companion(task, config, out, resume, progress, finish)


def load_classifier(classifier_dir: str | Path, run) -> NoisyClassifierNet:
    """The classifier written by ``train_classifier`` into ``classifier_dir`` (``classifier.safetensors``: the best
    EMA weights of its training), for ``run`` (a ``pipeline.LoadedRun`` with the same data and process sections (the
    schedule is in process) and the same data checksums), on the run's device in eval mode. Reads YAML, JSON and
    safetensors only; ValueError (one line) for anything that does not match."""
    classifier_dir = Path(classifier_dir)
    weights = classifier_dir / CLASSIFIER_WEIGHTS
    if not (classifier_dir / "config.yaml").is_file() or not weights.is_file() or weights.is_symlink():
        raise ValueError(f"{classifier_dir} is not a classifier directory (expected config.yaml and "
                         f"{CLASSIFIER_WEIGHTS}, written by `ddiff train-classifier RUN_DIR`)")
    config = load_run_config(classifier_dir / "config.yaml")
    for section in SHARED_SECTIONS:
        if to_dict(config)[section] != to_dict(run.config)[section]:
            raise ValueError(f"the classifier in {classifier_dir} was trained for another run: its {section} section "
                             f"differs from the run's")
    if not (classifier_dir / "data.json").is_file():
        raise ValueError(f"{classifier_dir} records no data checksums (data.json): not a classifier of this run")
    check_data_manifest(classifier_dir, run.dataset)          # DataChangedError: trained on other data
    _, _, num_classes = run_labels(run)
    classifier = NoisyClassifierNet(build_backbone(config, run.process, run.dataset.site_shape,
                                                   out_channels=num_classes), run.process, num_classes)
    try:
        state = load_file(str(weights))
    except Exception as err:  # a truncated or foreign file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read classifier weights {weights}: {first}") from None
    problems = compare_tensors(classifier.state_dict(), state)
    if problems:
        raise ValueError(f"classifier weights {weights} do not match its config.yaml: " + "; ".join(problems))
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise ValueError(f"classifier weights {weights} hold non-finite values")
    classifier.load_state_dict(state)
    return classifier.to(run.device).eval()
