"""One likelihood table: every forward process and an autoregressive baseline, on images, text and DNA.

Cells (model x dataset), all trained here with the same backbone size, steps, batch and optimiser recipe:

- models: masking (absorbing, SUBS), uniform, Blackout (images only: a count process), the D3PM
  discretised-Gaussian generator (``process.name=matrix``, ``rates=gaussian``, normalised to spectral gap 1),
  and a causal transformer (``baselines.ARTransformer``, exact NLL, trained by ``baselines.fit_exact_model``);
- datasets: ``digits`` (8x8, 17 levels, 64 pixels in raster order), ``kjv`` (characters, windows of 64) and
  ``ecoli`` (E. coli 536 bases, windows of 64).

The diffusion models use the library's ``SequenceTransformer`` (bidirectional, adaLN, rotary) with the same
width / depth / heads as the AR transformer, are trained by the library's ``Trainer`` (continuous-time ELBO,
best EMA checkpoint on validation) and report the test ELBO bound from ``pipeline.evaluate_run``; the AR model
reports its exact test NLL. Units: bits per dimension (digits), per character (kjv), per base (ecoli);
± is the standard error over test examples.

Cells run as subprocesses, ``--jobs`` at a time with ``--threads`` each (on 2 cores, 2 jobs x 1 thread
finishes sooner than 1 x 2 for models this small); finished cells are kept under ``OUT/runs/likelihood_table``
and ``--reuse`` picks them up instead of retraining.

    python benchmarks/likelihood_table.py                # the full table (about 45 min on 2 cores)
    python benchmarks/likelihood_table.py --quick        # smoke run, about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from discrete_diffusion.baselines import ARTransformer, FitSettings, fit_exact_model
from discrete_diffusion.baselines.fit import bits_per_dim
from discrete_diffusion.builders import build_dataset, build_proposal
from discrete_diffusion.config import load_config, to_dict
from discrete_diffusion.losses import estimate_elbo
from discrete_diffusion.pipeline import evaluate_run, likelihood_unit, load_run
from discrete_diffusion.train.trainer import Trainer

DATASETS = {"digits": ["data.name=digits"], "kjv": ["data.name=kjv", "data.seq_len=64"],
            "ecoli": ["data.name=ecoli", "data.seq_len=64"]}
MODELS = {
    "masking": ["process.name=masking", "process.schedule=log-linear"],
    "uniform": ["process.name=uniform", "process.schedule=log-linear"],
    "blackout": ["process.name=blackout", "process.schedule=blackout"],
    "gaussian": ["process.name=matrix", "process.schedule=log-linear",
                 "process.options={rates: gaussian, normalize: true}"],
    "ar": [],
}
IMAGE_ONLY = {"blackout"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=800, help="optimizer steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dim", type=int, default=128, help="transformer width (every model)")
    p.add_argument("--depth", type=int, default=4, help="transformer blocks (every model)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--t-samples", type=int, default=4, help="noise levels per test example for the ELBO bound")
    p.add_argument("--image-t-samples", type=int, default=64,
                   help="noise levels per test image when the finished digits cells are re-evaluated (297 test "
                        "images: 4 draws leave a Monte-Carlo error comparable to the gaps between processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--jobs", type=int, default=2, help="cells trained at the same time (subprocesses)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    p.add_argument("--reuse", action="store_true", help="keep finished cells with identical settings")
    p.add_argument("--quick", action="store_true", help="smoke run: 30 steps, width 32, depth 1")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--cell", help=argparse.SUPPRESS)   # internal: DATASET:MODEL, run one cell in this process
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.dim, args.depth, args.heads, args.t_samples = 30, 32, 1, 2, 1
    if min(args.steps, args.batch_size, args.jobs, args.threads, args.t_samples) < 1:
        p.error("--steps, --batch-size, --jobs, --threads and --t-samples must be >= 1")
    return args


def cell_overrides(args: argparse.Namespace, dataset: str, model: str) -> list[str]:
    """The run config of a cell: the shared backbone and recipe, then the dataset's and the model's keys."""
    eval_every = max(1, args.steps // 4)
    return [*DATASETS[dataset], *MODELS[model], "model.backbone=transformer", f"model.dim={args.dim}",
            f"model.depth={args.depth}", f"model.heads={args.heads}", f"train.steps={args.steps}",
            f"train.batch_size={args.batch_size}", f"train.warmup_steps={min(100, args.steps // 5)}",
            f"train.eval_every={eval_every}", "train.eval_t_samples=1", f"train.checkpoint_every={args.steps}",
            f"train.sample_every={args.steps + 1}", f"train.seed={args.seed}", "train.device=cpu",
            "sample.sampler=bridge", f"evaluate.t_samples={args.t_samples}"]


def cell_dir(args: argparse.Namespace, dataset: str, model: str) -> Path:
    return args.out / "runs" / ("likelihood_table_quick" if args.quick else "likelihood_table") / f"{dataset}-{model}"


# ----- one cell -----------------------------------------------------------------------------------------------
def run_diffusion_cell(config, run_dir: Path, args: argparse.Namespace) -> dict:
    trainer = Trainer(config, run_dir, progress=False, log=lambda msg: print(msg, file=sys.stderr))
    start = time.time()
    result = trainer.fit()
    train_seconds = time.time() - start
    run = load_run(run_dir, "best", "cpu")
    start = time.time()
    nll = evaluate_run(run, "test", t_samples=args.t_samples, seed=args.seed, progress=False)
    return {"test": nll.nll_bits_per_dim, "test_se": nll.nll_bits_per_dim_stderr, "exact": False,
            "best_val": result.best_val_nll_bits_per_dim, "best_step": result.best_step, "steps": result.step,
            "params": sum(p.numel() for p in run.denoiser.parameters()), "train_seconds": train_seconds,
            "eval_seconds": time.time() - start, "unit": likelihood_unit(run.dataset),
            "test_examples": nll.num_examples}


def run_ar_cell(config, run_dir: Path, args: argparse.Namespace) -> dict:
    dataset = build_dataset(config)
    torch.manual_seed(args.seed)
    m = config.model
    model = ARTransformer(dataset.num_states, math.prod(dataset.site_shape), dim=m.dim, depth=m.depth,
                          heads=m.heads, dropout=m.dropout, mlp_ratio=m.mlp_ratio)
    settings = FitSettings.from_train_config(config.train)
    start = time.time()
    fit = fit_exact_model(model, dataset.train, dataset.val, settings, run_dir / "best_ema.safetensors",
                          log=lambda msg: print(msg, file=sys.stderr))
    train_seconds = time.time() - start
    start = time.time()
    bits = bits_per_dim(model, dataset.test, "cpu", config.evaluate.batch_size)
    return {"test": float(bits.mean()), "test_se": float(bits.std() / math.sqrt(bits.numel())), "exact": True,
            "best_val": fit.best_val_bits_per_dim, "best_step": fit.best_step, "steps": fit.steps_done,
            "params": sum(p.numel() for p in model.parameters()), "train_seconds": train_seconds,
            "eval_seconds": time.time() - start, "unit": likelihood_unit(dataset), "test_examples": bits.numel()}


def run_cell(args: argparse.Namespace, dataset: str, model: str) -> None:
    torch.set_num_threads(args.threads)
    run_dir = cell_dir(args, dataset, model)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    overrides = cell_overrides(args, dataset, model)
    config = load_config(None, overrides)
    result = (run_ar_cell if model == "ar" else run_diffusion_cell)(config, run_dir, args)
    result.update({"dataset": dataset, "model": model, "overrides": overrides, "config": to_dict(config)})
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def reevaluate(args: argparse.Namespace, dataset: str, model: str, result: dict) -> None:
    """Per-example test bits of a finished cell, kept in its result.json (``test_per_example``) so that models can
    be compared on the same examples: the diffusion bound re-estimated with ``--image-t-samples`` draws per
    example (the first estimate kept as ``test_initial``), the AR model's exact NLL recomputed."""
    if result.get("test_per_example") is not None and (model == "ar" or
                                                       result.get("test_t_samples") == args.image_t_samples):
        return
    run_dir = cell_dir(args, dataset, model)
    config = load_config(None, cell_overrides(args, dataset, model))
    start = time.time()
    if model == "ar":
        data = build_dataset(config)
        m = config.model
        net = ARTransformer(data.num_states, math.prod(data.site_shape), dim=m.dim, depth=m.depth, heads=m.heads,
                            dropout=m.dropout, mlp_ratio=m.mlp_ratio)
        net.load_state_dict(load_file(str(run_dir / "best_ema.safetensors")))
        bits = bits_per_dim(net, data.test, "cpu", config.evaluate.batch_size)
    else:
        run = load_run(run_dir, "best", "cpu")
        bits = diffusion_bits_per_example(run, args.image_t_samples, args.seed + 1)
        result.setdefault("test_initial", [result["test"], result["test_se"], args.t_samples])
        result["test_t_samples"] = args.image_t_samples
        result["eval_seconds"] = time.time() - start
    result.update(test=float(bits.mean()), test_se=float(bits.std() / math.sqrt(bits.numel())),
                  test_per_example=bits.tolist())
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[{dataset}/{model}] per-example test bits: {result['test']:.4f} ± {result['test_se']:.4f}",
          file=sys.stderr, flush=True)


@torch.no_grad()
def diffusion_bits_per_example(run, t_samples: int, seed: int) -> torch.Tensor:
    """The test ELBO bound per example in bits per dimension (t_samples importance draws each): (N,)."""
    data = run.dataset.split("test")
    batch = run.config.evaluate.batch_size
    generator = torch.Generator().manual_seed(seed)
    totals = [estimate_elbo(run.process, run.denoiser, data[i:i + batch], run.schedule, build_proposal(run.config),
                            generator, num_samples=t_samples).total for i in range(0, data.shape[0], batch)]
    return torch.cat(totals).double() / (data[0].numel() * math.log(2.0))


PAIRS = [("masking", "uniform"), ("gaussian", "uniform"), ("gaussian", "masking"), ("blackout", "masking"),
         ("ar", "blackout")]


def paired_differences(results: dict[tuple[str, str], dict], dataset: str) -> list[str]:
    """Mean ± SE over the same test examples of (first model's bits - second's), where both have them."""
    lines = []
    for a, b in PAIRS:
        ra, rb = results.get((dataset, a)), results.get((dataset, b))
        if not ra or not rb or ra.get("test_per_example") is None or rb.get("test_per_example") is None:
            continue
        diff = torch.tensor(ra["test_per_example"]) - torch.tensor(rb["test_per_example"])
        lines.append(f"{a} - {b}: {float(diff.mean()):+.3f} ± {float(diff.std() / math.sqrt(diff.numel())):.3f}")
    return lines


# ----- the table ----------------------------------------------------------------------------------------------
def cells(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(d, m) for d in args.datasets for m in args.models if not (m in IMAGE_ONLY and d != "digits")]


def finished(args: argparse.Namespace, dataset: str, model: str) -> dict | None:
    path = cell_dir(args, dataset, model) / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result["overrides"] == cell_overrides(args, dataset, model) else None


def launch(args: argparse.Namespace, dataset: str, model: str, argv: list[str]) -> float:
    log = cell_dir(args, dataset, model).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.time()
    print(f"[{dataset}/{model}] started (log: {log})", file=sys.stderr, flush=True)
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, __file__, *argv, "--cell", f"{dataset}:{model}"], stdout=f,
                            stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise RuntimeError(f"cell {dataset}/{model} failed with exit status {rc}; see {log}")
    print(f"[{dataset}/{model}] done in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return time.time() - start


MODEL_NAMES = {"masking": "masking (absorbing)", "uniform": "uniform", "blackout": "Blackout",
               "gaussian": "D3PM Gaussian (matrix)", "ar": "autoregressive transformer (exact)"}


def markdown(args: argparse.Namespace, results: dict[tuple[str, str], dict]) -> str:
    units = {d: next((r["unit"] for (dd, _), r in results.items() if dd == d), "") for d in args.datasets}
    head = "| model | " + " | ".join(f"{d} ({units[d]})" for d in args.datasets) + " | params |"
    lines = [head, "|---" * (len(args.datasets) + 2) + "|"]
    for m in args.models:
        row, params = [], ""
        for d in args.datasets:
            r = results.get((d, m))
            row.append("n/a" if r is None else f"{r['test']:.3f} ± {r['test_se']:.3f}")
            params = params or (f"{r['params'] / 1e6:.2f}M" if r else "")
        lines.append(f"| {MODEL_NAMES[m]} | " + " | ".join(row) + f" | {params} |")
    detail = ["", "| cell | steps (best) | best val | train s | eval s | test examples | t-samples |",
              "|---|---|---|---|---|---|---|"]
    for (d, m), r in results.items():
        draws = "exact" if r["exact"] else str(r.get("test_t_samples", args.t_samples))
        detail.append(f"| {d} / {m} | {r['steps']} ({r['best_step']}) | {r['best_val']:.3f} | "
                      f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} | {r['test_examples']} | {draws} |")
    paired = paired_differences(results, "digits")
    if paired:
        detail += ["", "Paired differences on the digits test images (bits/dim, mean ± SE over images): "
                   + "; ".join(paired) + "."]
    return "\n".join(lines + detail) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.cell:
        dataset, model = args.cell.split(":")
        run_cell(args, dataset, model)
        return 0
    passed = [a for a in argv if a != "--reuse"]
    todo = [c for c in cells(args) if not (args.reuse and finished(args, *c))]
    start = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda c: launch(args, *c, passed), todo))
    results = {c: finished(args, *c) for c in cells(args)}
    missing = [c for c, r in results.items() if r is None]
    if missing:
        raise RuntimeError(f"cells without a result: {missing}")
    for (dataset, model), result in results.items():
        if dataset == "digits":
            reevaluate(args, dataset, model, result)
    wall = time.time() - start
    table = markdown(args, results)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/" + Path(__file__).name + (" " + shlex.join(argv) if argv else "")
    cell_minutes = sum(r["train_seconds"] + r["eval_seconds"] for r in results.values()) / 60
    header = (f"Measured {stamp}; `{command}`; wall time {wall / 60:.1f} min for {len(todo)} cells trained in this "
              f"run ({args.jobs} jobs x {args.threads} threads, {os.cpu_count()} CPUs, torch {torch.__version__}); "
              f"the {len(results)} cells' own train + eval time adds up to {cell_minutes:.0f} min.\n\n")
    print(header + table)
    name = "likelihood_table_quick" if args.quick else "likelihood_table"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(header + table)
    payload = {"command": command, "date": stamp, "wall_seconds": wall, "platform": platform.platform(),
               "cells": [{**r} for r in results.values()]}
    (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
