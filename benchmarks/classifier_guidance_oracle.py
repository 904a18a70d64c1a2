"""Classifier (predictor) guidance on the exact oracle (docs/guidance.md, "Classifier guidance", quotes this output).

On the random joint table pi(x, c) of tests/test_classifier_guidance.py (K = 3 values, D = 2 sites, C = 3 classes)
with the exact noisy classifier p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0) and the exact unconditional denoiser,
prints for every process and gamma in {0, 1, 2, 4}: TV of guided samples to pi(x | c) and the mean log p(c | x) of
the samples, for the exact and the Taylor form (tau-leaping, 64 steps; Blackout 128; the Taylor form needs a
one-hot input, so not Blackout), and exact simulation on masking.

    python benchmarks/classifier_guidance_oracle.py [--samples 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_classifier_guidance import PROCESSES, D, guided_samples  # noqa: E402  (the tests' tables and helpers)

from discrete_diffusion.oracle import empirical_distribution, total_variation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    label = 2
    floor = 0.5 * (3 ** D / (2 * torch.pi * args.samples)) ** 0.5
    print(f"{args.samples} samples, class {label}; expected TV of exact draws ~{floor:.4f}\n")
    print("| process | sampler | gamma | TV exact form | TV taylor form | mean log p(c\\|x) exact | taylor |")
    print("|---|---|---|---|---|---|---|")
    runs = [(name, "tau-leaping", 128 if name == "blackout" else 64) for name in PROCESSES] + [("masking", "exact", 1)]
    for name, sampler, steps in runs:
        for gamma in (0.0, 1.0, 2.0, 4.0):
            cells = {}
            for form in ("exact", "taylor"):
                if form == "taylor" and name == "blackout":
                    cells[form] = None
                    continue
                oracle, x = guided_samples(name, sampler, steps, gamma, label, args.samples, args.seed, form)
                table = oracle.table(label)
                cells[form] = (total_variation(empirical_distribution(x, 3), table),
                               float(oracle.class_log_probs(x)[:, label].mean()))
            fmt = lambda c, i: "-" if c is None else f"{c[i]:.4f}"  # noqa: E731
            print(f"| {name} | {sampler} {steps if sampler != 'exact' else ''} | {gamma:g} | "
                  f"{fmt(cells['exact'], 0)} | "
                  f"{fmt(cells['taylor'], 0)} | {fmt(cells['exact'], 1)} | {fmt(cells['taylor'], 1)} |", flush=True)


if __name__ == "__main__":
    main()
