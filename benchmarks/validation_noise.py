"""How much of a validation NLL is noise: (1) the spread over generator seeds of the NLL estimate with S
independent t-draws per example vs the stratified set (draw k in the k-th of S bands of the proposal), and
(2) the spread of the difference between two checkpoints of one run when both are validated on the same
draws (a fixed seed, as the trainer does) vs on different draws.

    python benchmarks/validation_noise.py RUN_DIR [--t-samples 4] [--seeds 12]

RUN_DIR: any `ddiff train` run with at least two checkpoints (the oldest kept one is compared to the latest).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from discrete_diffusion import losses
from discrete_diffusion.builders import build_proposal
from discrete_diffusion.likelihood import evaluate_nll
from discrete_diffusion.pipeline import load_model_weights, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--t-samples", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    latest, older = load_run(args.run_dir, "latest", "cpu"), load_run(args.run_dir, "latest", "cpu")
    oldest = sorted((Path(args.run_dir) / "checkpoints").glob("ckpt_*.json"))[0]
    load_model_weights(oldest, older.denoiser, use_ema=True)
    val = latest.dataset.val

    def nll(run, seed: int):
        return evaluate_nll(run.process, run.denoiser, run.schedule, val, build_proposal(run.config), args.t_samples,
                            256, torch.Generator().manual_seed(seed))

    seeds = range(args.seeds)
    print(f"{args.run_dir}: {val.shape[0]} validation examples, {args.t_samples} t-draws each, {args.seeds} seeds")
    stratified = [nll(latest, 1000 + s) for s in seeds]
    same = [nll(latest, s).nll_bits_per_dim - nll(older, s).nll_bits_per_dim for s in seeds]
    other = [nll(latest, s).nll_bits_per_dim - nll(older, 500 + s).nll_bits_per_dim for s in seeds]
    real_draw = losses.draw_noise
    losses.draw_noise = lambda *a, stratum=(0, 1), **k: real_draw(*a, **k)  # the draws before stratification
    independent = [nll(latest, 1000 + s) for s in seeds]
    losses.draw_noise = real_draw
    for name, results in (("independent draws", independent), ("stratified draws", stratified)):
        means = [r.nll_bits_per_dim for r in results]
        print(f"{name}: sd of the NLL over seeds {statistics.stdev(means):.4f}, mean reported stderr "
              f"{statistics.mean(r.nll_bits_per_dim_stderr for r in results):.4f} bits/dim")
    print(f"latest - {oldest.name}: same draws {statistics.mean(same):+.4f} (sd {statistics.stdev(same):.4f}), "
          f"different draws {statistics.mean(other):+.4f} (sd {statistics.stdev(other):.4f}) bits/dim")


if __name__ == "__main__":
    main()
