"""``ddiff train-planner`` and ``ddiff train-classifier``: networks trained for a run, into their own folders."""

from __future__ import annotations

import argparse


def cmd_train_planner(args: argparse.Namespace) -> int:
    from ..planner import train_planner

    metrics = train_planner(args.run_dir, args.overrides, args.out, args.device, progress=not args.no_progress,
                            resume=args.resume)
    if metrics is not None:  # rank 0
        print(f"planner validation BCE {metrics['val_bce_bits_per_site']:.4f} bits/site at step "
              f"{metrics['best_step']} (planner derived from the run's denoiser: "
              f"{metrics['denoiser_planner_val_bce_bits_per_site']:.4f}); weights {metrics['weights']}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from ..guidance.classifier_train import train_classifier

    metrics = train_classifier(args.run_dir, args.overrides, args.out, args.device, progress=not args.no_progress,
                               resume=args.resume)
    if metrics is not None:  # rank 0
        levels = ", ".join(f"{k} {v['val_accuracy']:.3f}" for k, v in metrics["at_noise_levels"].items())
        print(f"classifier validation CE {metrics['val_ce_bits']:.4f} bits at step {metrics['best_step']}; accuracy "
              f"{levels}; weights {metrics['weights']}")
    return 0
