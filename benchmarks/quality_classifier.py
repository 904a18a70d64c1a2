"""Cost and accuracy of the sample-quality classifier (docs/quality.md), and the image metrics of real data.

1. Trains the default classifier (``evaluate/image_quality.py``) on digits in a temporary cache, prints its test
   accuracy, wall and CPU time; then the image metrics, against the training target, of the 297 test digits
   and of the same digits with their pixels shuffled (a sanity scale for FD and KID).
2. Fashion-MNIST size: CPU time per training step and per image of feature extraction on 60,000 x 28 x 28
   images, real ones when the files are installed, else synthetic ones (then only the time is meaningful).

    OMP_NUM_THREADS=1 python benchmarks/quality_classifier.py          # ~1-2 min on one CPU core
    OMP_NUM_THREADS=1 python benchmarks/quality_classifier.py --skip-fashion
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from discrete_diffusion.data import DatasetUnavailableError, load_dataset
from discrete_diffusion.evaluate.image_quality import (
    DEFAULT_CLASSIFIER,
    SmallCNN,
    TrainedClassifier,
    _train,
    image_family,
    load_or_train_classifier,
)


def _shuffled(images: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    flat = images.reshape(images.shape[0], -1)
    return torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in flat]).reshape(images.shape)


def digits_table() -> None:
    digits = load_dataset("digits")
    with tempfile.TemporaryDirectory() as cache:
        wall, cpu = time.perf_counter(), time.process_time()
        clf = load_or_train_classifier(digits, Path(cache))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"digits classifier ({DEFAULT_CLASSIFIER}): test accuracy {100 * clf.test_accuracy:.1f} %, "
              f"trained in {wall:.1f} s wall, {cpu:.1f} s CPU\n")
        run = SimpleNamespace(dataset=digits, device=torch.device("cpu"))
        metrics = image_family(run, _shuffled(digits.test), digits.test, cache_dir=Path(cache))
    print("297 test digits against the training target: shuffled pixels (samples column) and as they are "
          "(reference column)\n\n| metric | shuffled test digits | test digits |\n|---|---|---|")
    for name, values in metrics.items():
        print(f"| {name} | {values['samples']:.4g} | {values['reference']:.4g} |")
    print()


def fashion_cost() -> None:
    try:
        data = load_dataset("fashion-mnist")
        x, y, what = data.train, data.train_labels, "Fashion-MNIST"
    except DatasetUnavailableError:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randint(0, 16, (60000, 28, 28), generator=g), torch.randint(0, 10, (60000,), generator=g)
        what = "synthetic 60000 x 28 x 28 images (Fashion-MNIST files not installed)"
    model = SmallCNN(1, 10, DEFAULT_CLASSIFIER.channels, DEFAULT_CLASSIFIER.feature_dim)
    clf = TrainedClassifier(model, 16, 10, float("nan"), "trained", 0.0)
    steps = 100
    cpu = time.process_time()
    _train(model, x, y, dataclasses.replace(DEFAULT_CLASSIFIER, steps=steps), clf._inputs, torch.device("cpu"), False)
    per_step = (time.process_time() - cpu) / steps
    cpu = time.process_time()
    clf.features_and_classes(x[:2000])
    per_image = (time.process_time() - cpu) / 2000
    print(f"{what}: {1000 * per_step:.1f} ms CPU per training step -> {per_step * DEFAULT_CLASSIFIER.steps:.0f} s "
          f"for the default {DEFAULT_CLASSIFIER.steps} steps; features {1000 * per_image:.2f} ms CPU per image -> "
          f"{per_image * 10000:.0f} s for 10000 test images, {per_image * 5000:.0f} s for the 5000-image target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-fashion", action="store_true", help="only the digits part")
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits_table()
    if not args.skip_fashion:
        fashion_cost()


if __name__ == "__main__":
    main()
