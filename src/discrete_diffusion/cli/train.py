"""``ddiff train`` and ``ddiff demo``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

#: The demo: 1500 steps (validation NLL plateaus near 1.70 bits/dim after about 1250 steps and the model then
#: overfits the 1350 training images), validation every 250 steps to pick the best EMA checkpoint, and a
#: 8-minute safety limit on training so the whole demo stays under 10 minutes on a slow 2-core machine.
DEMO_OVERRIDES = ["train.steps=1500", "train.eval_every=250", "train.eval_t_samples=8", "train.sample_every=100000",
                  "train.checkpoint_every=500", "train.time_limit_minutes=8", "sample.steps=200",
                  "evaluate.t_samples=16"]


def run_training(config_path: str | None, overrides: list[str], out: str, resume: bool, progress: bool):
    from ..config import load_config
    from ..train.trainer import Trainer, resumable_checkpoint

    out_dir = Path(out)
    if resume:  # nothing to resume is an error, before anything is built or written
        resumable_checkpoint(out_dir)
    if resume and config_path is None:
        config_path = str(out_dir / "config.yaml")
    # resuming: the run's architecture keys absent from its config.yaml mean the architecture it was trained with
    config = load_config(config_path, overrides, legacy_from=out_dir / "config.yaml" if resume else None)
    trainer = Trainer(config, out_dir, progress=progress)
    return trainer.fit(resume=resume)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..builders import build_sampler_from
    from ..distributed import env_world
    from ..pipeline import evaluate_run, generate_samples, load_run, save_samples, write_json
    from ..runs.atomic_io import user_dir

    if env_world()[1] > 1:
        raise ValueError("`ddiff demo` runs in one process; under torchrun use `ddiff train`, `ddiff sample` and "
                         "`ddiff evaluate`")
    start = time.time()
    overrides = DEMO_OVERRIDES + [f"train.device={args.device}"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    out = user_dir(args.out)
    result = run_training(None, overrides, str(out), resume=False, progress=not args.no_progress)
    train_s = time.time() - start
    run = load_run(out, "best", args.device)
    sampler = build_sampler_from(run.config)
    samples = generate_samples(run, sampler, 64, seed=0, progress=not args.no_progress)
    paths = save_samples(samples, run, out)
    nll = evaluate_run(run, "test", progress=not args.no_progress)
    metrics = {**nll.to_dict(), "split": "test", "dataset": run.config.data.name, "process": run.config.process.name,
               "best_step": result.best_step, "best_val_nll_bits_per_dim": result.best_val_nll_bits_per_dim,
               "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - start, 1),
               "sampler": sampler.name, "sampler_steps": sampler.num_steps, "checkpoint": str(run.checkpoint)}
    write_json(out / "metrics.json", metrics)
    print(f"\ntest NLL: {nll.nll_bits_per_dim:.4f} ± {nll.nll_bits_per_dim_stderr:.4f} bits/dim "
          f"(best validation step {result.best_step}, {metrics['total_seconds']:.0f} s in all)")
    print(f"samples:  {paths['png']}\n          {paths['npy']}\nmetrics:  {out / 'metrics.json'}\n"
          f"run dir:  {out} (config.yaml, metrics.jsonl, checkpoints/, best/)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..distributed import env_world

    result = run_training(args.config, args.overrides, args.out, args.resume, not args.no_progress)
    best = (f"best validation NLL {result.best_val_nll_bits_per_dim:.4f} bits/dim at step {result.best_step}"
            if result.best_step is not None else "no validation yet")
    if env_world()[0] == 0:
        print(f"trained to step {result.step}; {best}; run dir {result.run_dir}")
    return 0
