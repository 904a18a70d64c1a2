"""A noise-conditioned classifier p(c | x_t, lam) for classifier guidance, trained on the forward process.

Reference: Nisonoff et al., "Unlocking Guidance for Discrete State-Space Diffusion and Flow Models", ICLR 2025
(the predictor p(c | x_t) trained on noised data); Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
Synthesis", 2021 (noise-conditioned classifiers).

``NoisyClassifierNet``: any library backbone with C output channels per site, averaged over the sites into class
logits (B, C). Trained by cross-entropy on pairs (x_t ~ q_t(. | x0), c) with t ~ U(0, 1) mapped through the run's
schedule (the sampling grid's law of t):

    L = E_{t, (x0, c)} [ -log softmax(logits(x_t, lam))_c ],

whose minimiser is the exact p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0). The loop is ``baselines.fit_model``'s
(the Trainer's recipe: AdamW, warm-up and cosine, EMA, best EMA weights on validation), as the DDPD planner's.

``train_classifier`` (``ddiff train-classifier RUN_DIR``) writes ``config.yaml``, ``classifier.safetensors``,
``data.json`` (the run's data checksums) and ``metrics.json`` (validation accuracy and cross-entropy at a few noise
levels) into ``RUN_DIR/classifier/`` through the library's safe writers; ``load_classifier`` checks a directory
against a run (config sections, data checksums, tensor names and shapes, finite weights).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..baselines.fit import FitResult, FitSettings, fit_model
from ..builders import build_backbone
from ..config import load_config, save_config, to_dict
from ..data.manifest import check_data_manifest, write_data_manifest
from ..denoiser import backbone_input, noise_level_input
from ..processes import ForwardProcess
from ..schedules import Schedule
from ..train.atomic_io import ensure_dir, user_dir
from ..train.ema import compare_tensors

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

    def logits(self, xt: Tensor, lam: Tensor) -> Tensor:
        """Class logits (B, C) float32."""
        return self._pool(self.backbone(backbone_input(self.process, self.backbone, xt, lam), noise_level_input(lam)))

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
                      t: float | None = None, batch_size: int = 256) -> tuple[float, float]:
    """(cross-entropy in bits, accuracy) of ``classifier`` on draws x_t of ``data`` (N, *sites) with ``labels``
    (N,), at t ~ U(0, 1) or at the given t; the draws depend on ``seed`` only."""
    generator = torch.Generator(device=data.device).manual_seed(seed)
    nll, correct = 0.0, 0
    for start in range(0, data.shape[0], batch_size):
        xt, lam = draw_noisy(classifier.process, schedule, data[start:start + batch_size], generator, t)
        log_p = classifier(xt, lam)
        target = labels[start:start + batch_size]
        nll += float(-log_p.gather(1, target[:, None]).sum())
        correct += int((log_p.argmax(1) == target).sum())
    return nll / (data.shape[0] * math.log(2.0)), correct / data.shape[0]


def fit_classifier(classifier: NoisyClassifierNet, schedule: Schedule, train: Tensor, train_labels: Tensor,
                   val: Tensor, val_labels: Tensor, settings: FitSettings, weights_path: str | Path,
                   progress: bool = False, log: Callable[[str], None] = lambda _message: None) -> FitResult:
    """Train ``classifier`` (already on its device) by cross-entropy on forward draws (``baselines.fit_model``);
    validation scores the EMA weights' cross-entropy (bits) on fixed draws from ``val``."""
    if train.shape[0] == 0 or val.shape[0] == 0:
        raise ValueError(f"a classifier needs non-empty train and val splits, got {train.shape[0]} and {val.shape[0]}")
    device = next(classifier.parameters()).device
    train, val = train.to(device), val.to(device)
    train_labels, val_labels = train_labels.to(device), val_labels.to(device)
    generator = torch.Generator(device=device).manual_seed(settings.seed + 2)

    def batch_loss(index: Tensor) -> Tensor:
        xt, lam = draw_noisy(classifier.process, schedule, train[index], generator)
        return F.cross_entropy(classifier.logits(xt, lam), train_labels[index])

    def validate() -> float:
        return classifier_scores(classifier, schedule, val, val_labels, settings.seed + 3)[0]

    return fit_model(classifier, batch_loss, validate, train.shape[0], settings, weights_path, progress, log,
                     desc="train classifier (CE)")


def run_labels(run) -> tuple[Tensor, Tensor, int]:
    """(train labels, val labels, C) of a loaded run's data set; ValueError when it has none."""
    data = run.dataset
    if data.train_labels is None or data.val_labels is None:
        raise ValueError(f"the data set {data.name!r} of this run has no class labels: a classifier needs labelled "
                         "data (an .npz with x and y, a labelled data set such as digits, or class subfolders)")
    count = int(torch.cat([data.train_labels, data.val_labels]).max()) + 1
    return data.train_labels.long(), data.val_labels.long(), max(count, 2)


def train_classifier(run_dir: str | Path, overrides: list[str] | None = None, out_dir: str | Path | None = None,
                     device: str = "auto", progress: bool = True) -> dict:
    """Train a noisy classifier for the run at ``run_dir`` on its data, labels, process and schedule, and write it
    to ``out_dir`` (default ``RUN_DIR/classifier``). ``overrides``: ``model.*`` and ``train.*`` only (the run's
    model section is the architecture unless overridden). Returns the metrics written to ``metrics.json``."""
    from ..pipeline import load_run, write_json

    run_dir = Path(run_dir)
    run = load_run(run_dir, "best", device)
    train_labels, val_labels, num_classes = run_labels(run)
    config = load_config(run_dir / "config.yaml", overrides)
    for section in to_dict(config):
        if section not in ("model", "train") and to_dict(config)[section] != to_dict(run.config)[section]:
            raise ValueError(f"a classifier is trained on its run's data and process: override only model.* and "
                             f"train.* keys, not {section}.*")
    out = user_dir(run_dir) / "classifier" if out_dir is None else user_dir(out_dir)
    ensure_dir(out)  # a symbolic link at the folder (or at a file in it) is never written through
    save_config(config, out / "config.yaml")
    write_data_manifest(out, run.dataset)
    torch.manual_seed(config.train.seed)
    backbone = build_backbone(config, run.process, run.dataset.site_shape, out_channels=num_classes)
    classifier = NoisyClassifierNet(backbone, run.process, num_classes).to(run.device)
    settings = FitSettings.from_train_config(config.train)
    result = fit_classifier(classifier, run.schedule, run.dataset.train, train_labels, run.dataset.val, val_labels,
                            settings, out / CLASSIFIER_WEIGHTS, progress,
                            log=print if progress else (lambda _message: None))
    classifier.eval()
    val = run.dataset.val.to(run.device)
    at_levels = {}
    for t in METRIC_TIMES:
        ce, acc = classifier_scores(classifier, run.schedule, val, val_labels.to(run.device), settings.seed + 4, t)
        at_levels[f"t={t:g}"] = {"val_ce_bits": ce, "val_accuracy": acc}
    metrics = {"num_classes": num_classes, "val_ce_bits": result.best_val_bits_per_dim, "at_noise_levels": at_levels,
               "best_step": result.best_step, "steps_done": result.steps_done,
               "train_seconds": round(result.train_seconds, 1), "val_curve": result.val_curve,
               "parameters": sum(p.numel() for p in classifier.parameters()), "run_dir": str(run_dir.resolve()),
               "weights": str(out / CLASSIFIER_WEIGHTS)}
    write_json(out / "metrics.json", metrics)
    return metrics


def load_classifier(classifier_dir: str | Path, run) -> NoisyClassifierNet:
    """The classifier written by ``train_classifier`` into ``classifier_dir``, for ``run`` (a ``pipeline.LoadedRun``
    with the same data and process sections (the schedule is in process) and the same data checksums), on the run's device in eval
    mode. Reads YAML, JSON and safetensors only; ValueError (one line) for anything that does not match."""
    classifier_dir = Path(classifier_dir)
    weights = classifier_dir / CLASSIFIER_WEIGHTS
    if not (classifier_dir / "config.yaml").is_file() or not weights.is_file() or weights.is_symlink():
        raise ValueError(f"{classifier_dir} is not a classifier directory (expected config.yaml and "
                         f"{CLASSIFIER_WEIGHTS}, written by `ddiff train-classifier RUN_DIR`)")
    config = load_config(classifier_dir / "config.yaml")
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
