"""Sample quality of labelled images: a small CNN classifier trained on the data, and metrics on its features.

References: Heusel et al., NeurIPS 2017 (FID; here the Frechet distance of the features of a classifier trained
on the dataset itself instead of Inception-v3, as done for MNIST-like data in many discrete diffusion papers);
Binkowski et al., ICLR 2018 (KID); Naeem et al., ICML 2020 (precision / recall / density / coverage, k = 5).
The metric formulas live in :mod:`~discrete_diffusion.evaluate.feature_metrics`.

The classifier (:class:`SmallCNN`) is trained once per run on the clean labelled training split and cached under
``cache_dir/classifier/``: ``weights.safetensors`` (never unpickled) and ``meta.json`` with its config, the
SHA-256 of the data it was trained on (train and test splits and labels), the SHA-256 of the weights file and its
test accuracy. A later call reuses it when all of these agree; a changed config, changed data, a missing, edited
or corrupt file make it retrain (the reason is reported in ``status``). Writes are atomic and never follow a
symlink.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.base import DiscreteDataset, sha256_of_arrays
from ..runs.atomic_io import atomic_write
from ..runs.json_reader import read_run_json
from .count_quality import MAX_TARGET_ROWS, fixed_subset
from .feature_metrics import class_entropy_bits, frechet_distance_of, kid, prdc
from .sample_files import ensure_real_dir

if TYPE_CHECKING:
    from ..runs.load import LoadedRun

__all__ = ["ClassifierConfig", "DEFAULT_CLASSIFIER", "SmallCNN", "TrainedClassifier", "image_family",
           "load_or_train_classifier", "has_image_labels"]

_FORMAT = 1
_MAX_META_BYTES = 1 << 20
_MAX_WEIGHTS_BYTES = 64 << 20
#: Nearest neighbours of precision / recall / density / coverage (Naeem et al. 2020).
PRDC_K = 5


@dataclass(frozen=True)
class ClassifierConfig:
    """Training settings of the feature classifier (part of its cache key)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    channels: int = 32
    feature_dim: int = 64
    seed: int = 0


#: The configuration ``image_family`` uses (digits: about 97 % test accuracy in ~15 s on one CPU core).
DEFAULT_CLASSIFIER = ClassifierConfig()


class SmallCNN(nn.Module):
    """conv3x3(c) - conv3x3(c) - maxpool2 - conv3x3(2c) - avgpool to 2x2 - linear(feature_dim) - ReLU - linear.

    Input: states ``(B, C, H, W)`` as floats in [-1, 1]; :meth:`features` returns the penultimate layer
    ``(B, feature_dim)``, :meth:`forward` the class logits ``(B, num_classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int, feature_dim: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * c, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@dataclass
class TrainedClassifier:
    """A classifier ready to use, with what is known about it."""

    model: SmallCNN
    num_states: int
    num_classes: int
    test_accuracy: float
    status: str  # "trained", "cached" or "retrained (reason)"
    train_seconds: float

    def _inputs(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(1) if x.ndim == 3 else x
        return x.float() * (2.0 / max(self.num_states - 1, 1)) - 1.0

    @torch.no_grad()
    def features_and_classes(self, x: Tensor, batch_size: int = 512) -> tuple[Tensor, Tensor]:
        """Penultimate features ``(N, feature_dim)`` (float64, CPU) and predicted classes ``(N,)`` of states
        ``(N, H, W)`` or ``(N, C, H, W)``."""
        self.model.eval()
        device = next(self.model.parameters()).device
        feats, classes = [], []
        for start in range(0, x.shape[0], batch_size):
            f = self.model.features(self._inputs(x[start:start + batch_size].to(device)))
            feats.append(f.double().cpu())
            classes.append(self.model.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(classes)


def has_image_labels(dataset: DiscreteDataset) -> bool:
    """Whether ``dataset`` is an image dataset whose training and test splits both carry class labels."""
    return (dataset.kind == "image" and dataset.train_labels is not None
            and dataset.test_labels is not None and dataset.test.shape[0] > 0)


def _image_channels(dataset: DiscreteDataset) -> int:
    shape = dataset.site_shape
    if len(shape) not in (2, 3):
        raise ValueError(f"image metrics need images of shape (H, W) or (C, H, W), got site shape {shape}")
    return 1 if len(shape) == 2 else shape[0]


def _num_classes(dataset: DiscreteDataset) -> int:
    labels = [y for y in (dataset.train_labels, dataset.val_labels, dataset.test_labels) if y is not None]
    return int(max(int(y.max()) for y in labels if y.numel()) + 1)


def _cache_key(dataset: DiscreteDataset, config: ClassifierConfig) -> dict[str, Any]:
    return {"format": _FORMAT, "config": asdict(config), "num_states": dataset.num_states,
            "site_shape": list(dataset.site_shape), "num_classes": _num_classes(dataset),
            "data_sha256": sha256_of_arrays(dataset.train, dataset.train_labels, dataset.test, dataset.test_labels)}


def _read_nofollow(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` (at most ``limit``; a symlink or a larger file raises OSError / ValueError)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def _finite_number(value: object, name: str, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high]`` (ValueError otherwise: a tampered record is retrained)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} is out of range") from None
    if not low <= number <= high:  # NaN fails too
        raise ValueError(f"{name} = {number!r} is outside {low}..{high}")
    return number


def _load_cached(folder: Path, key: dict[str, Any], model: SmallCNN) -> tuple[dict[str, Any] | None, str]:
    """The cached meta record and "" when the cache is valid for ``key`` (weights loaded into ``model``),
    else None and the reason it is not."""
    meta_path, weights_path = folder / "meta.json", folder / "weights.safetensors"
    if not meta_path.exists() and not weights_path.exists():
        return None, ""
    try:
        meta = read_run_json(meta_path, _MAX_META_BYTES, "quality classifier record")
        if not isinstance(meta, dict) or meta.get("key") != key:
            changed = [k for k in key if not isinstance(meta, dict) or (meta.get("key") or {}).get(k) != key[k]]
            return None, f"{', '.join(changed) or 'cache record'} changed"
        blob = _read_nofollow(weights_path, _MAX_WEIGHTS_BYTES)
        if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
            return None, "weights file checksum mismatch"
        model.load_state_dict(load_safetensors(blob), strict=True)
        meta["test_accuracy"] = _finite_number(meta.get("test_accuracy"), "test_accuracy", 0.0, 1.0)
        meta["train_seconds"] = _finite_number(meta.get("train_seconds", 0.0), "train_seconds", 0.0, 1e12)
    except Exception as exc:  # any unreadable, malformed or mismatched cache file: retrain
        return None, f"unreadable cache ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    return meta, ""


def _train(model: SmallCNN, x: Tensor, y: Tensor, config: ClassifierConfig, to_inputs, device: torch.device,
           progress: bool) -> None:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.steps, 1))
    model.train()
    for _ in tqdm(range(config.steps), desc="quality classifier", disable=not progress, dynamic_ncols=True):
        index = torch.randint(0, x.shape[0], (config.batch_size,), generator=generator)
        loss = nn.functional.cross_entropy(model(to_inputs(x[index].to(device))), y[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    model.eval()


def load_or_train_classifier(dataset: DiscreteDataset, cache_dir: Path, config: ClassifierConfig | None = None,
                             device: torch.device | str = "cpu", progress: bool = False) -> TrainedClassifier:
    """The feature classifier of ``dataset``: from ``cache_dir/classifier/`` when its record matches (config,
    data checksum, weights checksum), else trained on the labelled training split and cached."""
    config = DEFAULT_CLASSIFIER if config is None else config
    if config.steps < 1 or config.batch_size < 1 or config.channels < 1 or config.feature_dim < 2:
        raise ValueError(f"classifier config needs steps, batch_size, channels >= 1 and feature_dim >= 2, got {config}")
    if not has_image_labels(dataset):
        raise ValueError(f"the image metrics need class labels on the train and test splits; dataset "
                         f"{dataset.name!r} has none (use the counts metrics)")
    device = torch.device(device)
    key = _cache_key(dataset, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SmallCNN(_image_channels(dataset), key["num_classes"], config.channels, config.feature_dim)
    folder = ensure_real_dir(ensure_real_dir(Path(cache_dir)) / "classifier")
    meta, reason = _load_cached(folder, key, model)
    if meta is not None:
        return TrainedClassifier(model.to(device).eval(), dataset.num_states, key["num_classes"],
                                 meta["test_accuracy"], "cached", meta["train_seconds"])
    with torch.random.fork_rng(devices=[]):  # a fresh initialisation, whatever a failed load left behind
        torch.manual_seed(config.seed)
        model = SmallCNN(_image_channels(dataset), key["num_classes"], config.channels, config.feature_dim)
    model.to(device)
    clf = TrainedClassifier(model, dataset.num_states, key["num_classes"], float("nan"),
                            f"retrained ({reason})" if reason else "trained", 0.0)
    start = time.perf_counter()
    _train(model, dataset.train, dataset.train_labels, config, clf._inputs, device, progress)
    clf.train_seconds = round(time.perf_counter() - start, 2)
    _, predicted = clf.features_and_classes(dataset.test)
    clf.test_accuracy = float((predicted == dataset.test_labels).double().mean())
    blob = save_safetensors({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    atomic_write(folder / "weights.safetensors", lambda f: f.write(blob))
    record = {"key": key, "weights_sha256": hashlib.sha256(blob).hexdigest(), "test_accuracy": clf.test_accuracy,
              "train_seconds": clf.train_seconds, "dataset": dataset.name}
    atomic_write(folder / "meta.json", lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
    return clf


def image_family(run: "LoadedRun", samples: Tensor, reference: Tensor, *, cache_dir: Path, progress: bool = False,
                 classifier_config: ClassifierConfig | None = None) -> dict[str, dict[str, float]]:
    """The image family: features of the cached classifier for the target set (the training split, at most
    :data:`~discrete_diffusion.evaluate.count_quality.MAX_TARGET_ROWS` rows), the samples and the reference
    (held-out real images), all divided by one scalar, the target's root-mean-square feature value (so that
    FD and KID do not depend on the arbitrary scale of a trained layer, and x.y / d is about 1 for real images
    in KID's kernel); then, for samples and reference each against the target: ``frechet_distance``,
    ``kid``, ``precision``, ``recall``, ``density``, ``coverage`` (k = 5), and ``class_entropy_bits`` (entropy
    of the predicted-class histogram, log2(10) = 3.32 bits when balanced over 10 classes).

    Shapes: ``samples`` and ``reference`` ``(n, *site_shape)`` with n > 5."""
    clf = load_or_train_classifier(run.dataset, cache_dir, classifier_config, run.device, progress)
    for name, x in (("samples", samples), ("reference", reference)):
        if x.shape[0] <= PRDC_K:
            raise ValueError(f"the image metrics need at least {PRDC_K + 1} {name}, got {x.shape[0]}")
    target, _ = clf.features_and_classes(fixed_subset(run.dataset.train, MAX_TARGET_ROWS))
    scale = float(target.pow(2).mean().sqrt()) or 1.0  # the target's RMS feature: 1 after scaling
    target = target / scale
    out: dict[str, dict[str, float]] = {}
    for column, x in (("samples", samples), ("reference", reference)):
        feats, classes = clf.features_and_classes(x)
        feats = feats / scale
        values = {"frechet_distance": frechet_distance_of(target, feats), "kid": kid(target, feats),
                  **prdc(target, feats, PRDC_K), "class_entropy_bits": class_entropy_bits(classes, clf.num_classes)}
        for name, value in values.items():
            out.setdefault(name, {})[column] = value
    return out
