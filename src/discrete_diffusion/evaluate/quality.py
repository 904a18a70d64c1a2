"""Sample quality: pick the metric family of a run's data and compare samples with held-out real data.

Every metric is reported twice: for the samples, and for a *reference* set of the same size drawn from a
held-out split of the real data (``reference_split``, default ``"test"``). Each family compares both sets with
the same target (the training data), so the reference column is the value a perfect model would score up to
sampling noise. Families (the registry :data:`QUALITY_FAMILIES`):

* ``image``: labelled images: classifier features, Frechet distance, KID, precision / recall / density /
  coverage, class entropy (:mod:`~discrete_diffusion.evaluate.image_quality`);
* ``text``: character / token text; ``dna``: FASTA and E. coli sequences (their own modules);
* ``counts``: any other array: per-site moment errors and 1-D Wasserstein distances
  (:mod:`~discrete_diffusion.evaluate.count_quality`).

Formulas and commands: docs/quality.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import Tensor

from ..data.base import DiscreteDataset, validate_values
from .count_quality import counts_family, fixed_subset
from .dna_quality import dna_quality, is_dna
from .image_quality import has_image_labels, image_family, load_or_train_classifier
from .text_quality import ARJudgeConfig, is_text, text_quality

if TYPE_CHECKING:
    from ..runs.load import LoadedRun

__all__ = ["QUALITY_FAMILIES", "QualityResult", "evaluate_quality", "quality_family"]

#: Seed of the choice of reference rows (fixed: the same reference for every sample file of a run).
REFERENCE_SEED = 1


@dataclass
class QualityResult:
    """Metrics of one sample set: ``metrics[name] = {"samples": v, "reference": v}``, the ``family`` that
    computed them, and ``extra`` facts (sizes, reference split, notes, the image classifier's test accuracy)."""

    family: str
    metrics: dict[str, dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Family name -> ``fn(run, samples, reference, *, cache_dir, progress) -> {metric: {"samples", "reference"}}``.
QUALITY_FAMILIES: dict[str, Callable[..., dict[str, dict[str, float]]]] = {
    "image": image_family,
    "text": text_quality,
    "dna": dna_quality,
    "counts": counts_family,
}


def quality_family(dataset: DiscreteDataset) -> str:
    """``"image"`` for images with class labels, ``"dna"`` for DNA windows (4 bases, metadata ``alphabet``),
    ``"text"`` for character or BPE text (metadata ``vocab`` or ``tokenizer_json``), else ``"counts"``."""
    if dataset.kind == "image" and has_image_labels(dataset):
        return "image"
    if is_dna(dataset):
        return "dna"
    if is_text(dataset):
        return "text"
    return "counts"


def _check_samples(samples: Any, dataset: DiscreteDataset) -> Tensor:
    """Samples as a ``torch.long`` tensor ``(N, *site_shape)`` with values in 0..K-1 (else ValueError)."""
    shape = tuple(samples.shape) if hasattr(samples, "shape") else None
    if shape is None or len(shape) < 2 or shape[1:] != dataset.site_shape:
        raise ValueError(f"samples must have shape (N, {', '.join(map(str, dataset.site_shape))}) for dataset "
                         f"{dataset.name!r}, got {shape}")
    x = validate_values(samples, dataset.num_states, "samples")
    if x.shape[0] < 2:
        raise ValueError(f"sample quality needs at least 2 samples, got {x.shape[0]}")
    return x


def evaluate_quality(run: "LoadedRun", samples: Tensor, *, reference_split: str = "test", cache_dir: Path,
                     progress: bool = False, text_judge: ARJudgeConfig | None = None) -> QualityResult:
    """Quality metrics of ``samples`` ``(N, *site_shape)`` (states 0..K-1) of ``run``'s data, each beside the
    same metric of N held-out real examples of ``reference_split`` (a fixed seeded choice of rows).

    When the split has fewer than N examples, the first ``len(split)`` samples are compared with the whole split
    (both columns need one size to be comparable; a note says so). Image data without labels get the counts
    metrics, with a note. ``cache_dir`` (``RUN/quality`` from the CLI) keeps the image classifier and the text
    family's AR judge; ``text_judge`` replaces the judge's default :class:`ARJudgeConfig` (text family only).

    Raises:
        ValueError: samples of the wrong shape or with values outside 0..K-1, fewer than 2 samples, an empty
            reference split.
    """
    dataset = run.dataset
    x = _check_samples(samples, dataset)
    held_out = dataset.split(reference_split)
    if held_out.shape[0] < 2:
        raise ValueError(f"the {reference_split!r} split of {dataset.name!r} has {held_out.shape[0]} examples; "
                         f"the reference needs at least 2 (choose another split: train, val, test)")
    family = quality_family(dataset)
    notes: list[str] = []
    if dataset.kind == "image" and family != "image":
        notes.append(f"the image metrics need class labels and dataset {dataset.name!r} has none on its train and "
                     f"test splits; computed the counts metrics instead")
    n = min(x.shape[0], held_out.shape[0])
    if n < x.shape[0]:
        notes.append(f"the {reference_split} split has only {n} examples: compared the first {n} of "
                     f"{x.shape[0]} samples")
        x = x[:n]
    reference = fixed_subset(held_out, n, seed=REFERENCE_SEED)
    extra: dict[str, Any] = {"num_samples": n, "num_reference": int(reference.shape[0]),
                             "reference_split": reference_split, "target": "train split", "notes": notes}
    cache_dir = Path(cache_dir)
    if family == "image":
        clf = load_or_train_classifier(dataset, cache_dir, device=run.device, progress=progress)
        extra["classifier_test_accuracy"] = clf.test_accuracy
        extra["classifier_status"] = clf.status
        extra["classifier_train_seconds"] = clf.train_seconds
    options = {"ar_config": text_judge} if family == "text" and text_judge is not None else {}
    metrics = QUALITY_FAMILIES[family](run, x, reference, cache_dir=cache_dir, progress=progress, **options)
    return QualityResult(family=family, metrics=metrics, extra=extra)
