"""Sample quality against the number of network evaluations (NFE) for the samplers (issue 14 item 3).

Two small runs, trained here (or reused with ``--digits-run`` / ``--kjv-run``):

- **digits**: Blackout (the default process) on the bundled 8x8 digits (17 levels), a small U-Net; scored with
  the image family (classifier features: Frechet distance, KID, precision / recall; docs/quality.md);
- **kjv**: masking with the log-linear schedule on King James Bible character windows, a small transformer;
  scored with the text family (generative NLL under the library's own AR judge, unigram entropy, distinct-n).

For every sampler and step count, N samples are drawn (fixed seed) and scored with
:func:`discrete_diffusion.evaluate.quality.evaluate_quality` beside the reference column (N held-out real
examples against the same training target). Each result is also written as a quality record
``RUN/quality/STEM.json`` (the schema of ``ddiff evaluate --samples``) and the samples as ``RUN/samples/STEM.npy``
with the record of ``ddiff sample``, so ``ddiff report RUN`` draws the quality-vs-NFE curves.

Prints one Markdown table per model and writes ``OUT/quality_vs_nfe.{md,json}`` (default
``benchmarks/results``; the runs go to ``OUT/runs/``, git-ignored). References: the samplers' papers are
cited in docs/samplers.md; the metrics' in docs/quality.md.

    python benchmarks/quality_vs_nfe.py            # train both runs, full grid
    python benchmarks/quality_vs_nfe.py --quick    # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from discrete_diffusion.builders import build_sampler_from
from discrete_diffusion.cli import main as ddiff_main
from discrete_diffusion.cli import sample_stem
from discrete_diffusion.evaluate.quality import evaluate_quality
from discrete_diffusion.evaluate.sample_files import write_quality_record
from discrete_diffusion.evaluate.text_quality import ARJudgeConfig
from discrete_diffusion.pipeline import generate_samples, load_run, save_samples, write_json

#: Metrics shown per family (all are in the JSON and in the quality records).
SHOWN = {"image": ["frechet_distance", "kid", "precision", "recall", "class_entropy_bits"],
         "text": ["ar_nll_bits_per_char", "unigram_entropy_bits", "distinct_2", "distinct_4",
                  "memorised_8gram_share"]}


def model_overrides(args: argparse.Namespace) -> dict[str, list[str]]:
    """``ddiff train`` overrides of the two runs (``--quick``: a few steps)."""
    digits = ["data.name=digits", "model.base_channels=32", "model.channel_mults=[1,2]", "train.batch_size=64",
              f"train.steps={args.digits_steps}", "train.eval_every=250", "train.checkpoint_every=250",
              "train.sample_every=100000", "train.warmup_steps=100", "train.eval_t_samples=2",
              f"train.time_limit_minutes={args.train_minutes}", "train.device=cpu", "evaluate.t_samples=4"]
    kjv = ["data.name=kjv", f"data.seq_len={args.kjv_seq_len}", "process.name=masking",
           "process.schedule=log-linear", "model.backbone=transformer", "model.dim=128", "model.depth=3",
           "model.heads=4", "model.dropout=0.0", "train.batch_size=32", f"train.steps={args.kjv_steps}",
           "train.eval_every=250", "train.checkpoint_every=250", "train.sample_every=100000",
           "train.warmup_steps=100", "train.eval_t_samples=1", f"train.time_limit_minutes={args.train_minutes}",
           "train.device=cpu", "evaluate.t_samples=1", "evaluate.batch_size=64"]
    return {"digits": digits, "kjv": kjv}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", choices=["digits", "kjv"], default=["digits", "kjv"])
    p.add_argument("--digits-run", default=None, help="reuse this trained digits run instead of training one")
    p.add_argument("--kjv-run", default=None, help="reuse this trained KJV run instead of training one")
    p.add_argument("--digits-steps", type=int, default=2000, help="training steps of the digits run")
    p.add_argument("--kjv-steps", type=int, default=900, help="training steps of the KJV run")
    p.add_argument("--kjv-seq-len", type=int, default=64, help="KJV window length (characters)")
    p.add_argument("--train-minutes", type=float, default=8.0, help="wall-clock cap of each training run")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="sampler step counts")
    p.add_argument("--digits-samplers", nargs="+", default=["bridge", "tau-leaping", "theta-trapezoidal"])
    p.add_argument("--kjv-samplers", nargs="+", default=["bridge", "tau-leaping", "theta-trapezoidal", "maskgit"])
    p.add_argument("--digits-num", type=int, default=256, help="samples per digits setting")
    p.add_argument("--kjv-num", type=int, default=128, help="samples (windows) per KJV setting")
    p.add_argument("--judge-steps", type=int, default=ARJudgeConfig.steps, help="training steps of the KJV AR judge")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--train-only", action="store_true",
                   help="only train the runs (e.g. `--models digits --train-only` and `--models kjv --train-only` in "
                        "parallel), then run again without it to reuse them and score")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny training, 2 step counts, few samples")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.digits_steps, args.kjv_steps, args.steps = 20, 20, [4, 8]
        args.digits_num, args.kjv_num, args.judge_steps = 32, 16, 20
    for name in ("digits_steps", "kjv_steps", "kjv_seq_len", "digits_num", "kjv_num", "judge_steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(s < 1 for s in args.steps):
        p.error("--steps must all be >= 1")
    return args


def train_run(name: str, run_dir: Path, overrides: list[str]) -> float:
    """``ddiff train --out run_dir overrides``; returns the wall time (s). An existing finished run is reused."""
    if (run_dir / "best").is_dir() and (run_dir / "config.yaml").is_file():
        print(f"[{name}] reusing {run_dir}", flush=True)
        return float("nan")
    start = time.perf_counter()
    rc = ddiff_main(["train", "--out", str(run_dir), "--no-progress", *overrides])
    if rc != 0:
        raise SystemExit(f"[{name}] ddiff train failed with exit code {rc}")
    return time.perf_counter() - start


def last_validation(run_dir: Path) -> dict[str, Any]:
    """The lowest validation NLL of ``metrics.jsonl``, the last step trained and its training time (s)."""
    best, last_step, elapsed = None, 0, None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        last_step = max(last_step, int(row.get("step", 0)))
        if isinstance(row.get("elapsed_s"), (int, float)):
            elapsed = float(row["elapsed_s"])
        val = row.get("val_nll_bits_per_dim")
        if isinstance(val, (int, float)) and (best is None or val < best[0]):
            best = (float(val), int(row["step"]))
    return {"best_val_nll_bits_per_dim": best[0] if best else None, "best_step": best[1] if best else None,
            "steps_done": last_step, "train_elapsed_s": elapsed}


def score_grid(name: str, run_dir: Path, samplers: list[str], steps: list[int], num: int, seed: int,
               judge: ARJudgeConfig | None) -> list[dict[str, Any]]:
    """Draw and score every (sampler, steps) setting; write samples and quality records into ``run_dir``."""
    run = load_run(run_dir, "best", "cpu")
    quality_dir = run_dir / "quality"
    rows = []
    for sampler_name in samplers:
        for n_steps in steps:
            sampler = build_sampler_from(run.config, sampler_name, n_steps, {})
            t0 = time.perf_counter()
            samples = generate_samples(run, sampler, num, batch_size=num, seed=seed, progress=False)
            sample_s = time.perf_counter() - t0
            stem = sample_stem(sampler, seed)
            save_samples(samples, run, run_dir / "samples", stem=stem)
            write_json(run_dir / "samples" / f"{stem}.json",
                       {"sampler": sampler.config(), "num_samples": num, "seed": seed, "batch_size": num,
                        "network_calls_last_batch": sampler.network_calls, "nfe_last_batch": sampler.nfe,
                        "run_dir": str(run_dir.resolve()), "checkpoint": str(run.checkpoint)})
            t0 = time.perf_counter()
            result = evaluate_quality(run, samples, cache_dir=quality_dir, text_judge=judge)
            score_s = time.perf_counter() - t0
            payload = {"sampler": sampler.name, "steps": n_steps, "nfe": float(sampler.nfe), "seed": seed,
                       "num_samples": int(samples.shape[0]), "family": result.family, "metrics": result.metrics,
                       "samples_path": str((run_dir / "samples" / f"{stem}.npy").resolve()), "extra": result.extra}
            write_quality_record(quality_dir / f"{stem}.json", payload)
            rows.append({**payload, "sample_seconds": round(sample_s, 2), "score_seconds": round(score_s, 2)})
            shown = {k: round(v["samples"], 4) for k, v in result.metrics.items() if k in SHOWN[result.family]}
            print(f"[{name}] {sampler.name} {n_steps} steps, NFE {sampler.nfe:g}: {shown} "
                  f"(sample {sample_s:.1f} s, score {score_s:.1f} s)", flush=True)
    return rows


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan"
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def table(name: str, rows: list[dict[str, Any]]) -> str:
    """One Markdown table: sampler, steps, NFE, the shown metrics; last row the reference (real held-out data)."""
    family = rows[0]["family"]
    metrics = [m for m in SHOWN[family] if m in rows[0]["metrics"]]
    lines = [f"| sampler | steps | NFE | {' | '.join(metrics)} |", "|---|---|---|" + "---|" * len(metrics)]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']:g} | "
                     + " | ".join(fmt(r["metrics"][m]["samples"]) for m in metrics) + " |")
    ref = {m: sum(r["metrics"][m]["reference"] for r in rows) / len(rows) for m in metrics}
    lines.append(f"| **reference** ({rows[0]['extra']['num_reference']} held-out real) | - | - | "
                 + " | ".join(fmt(ref[m]) for m in metrics) + " |")
    return f"### {name}\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs_root = out / "runs"
    overrides = model_overrides(args)
    suffix = "_quick" if args.quick else ""
    started = time.perf_counter()
    results: dict[str, Any] = {"command": "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
                               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "threads": args.threads, "models": {}}
    sections = []
    for name in args.models:
        given = args.digits_run if name == "digits" else args.kjv_run
        run_dir = Path(given) if given else runs_root / f"quality_{name}{suffix}"
        train_s = float("nan") if given else train_run(name, run_dir, overrides[name])
        fit = last_validation(run_dir)
        if args.train_only:
            print(f"[{name}] trained {fit}", flush=True)
            continue
        print(f"[{name}] trained {fit['steps_done']} steps ({fit['train_elapsed_s']} s of training); best val NLL "
              f"{fit['best_val_nll_bits_per_dim']} bits/dim at step {fit['best_step']}", flush=True)
        judge = ARJudgeConfig(steps=args.judge_steps) if name == "kjv" else None
        samplers = args.digits_samplers if name == "digits" else args.kjv_samplers
        num = args.digits_num if name == "digits" else args.kjv_num
        rows = score_grid(name, run_dir, samplers, args.steps, num, args.seed, judge)
        results["models"][name] = {"run_dir": str(run_dir), "train_overrides": overrides[name],
                                   "train_seconds": train_s, **fit, "samplers": samplers, "steps": args.steps,
                                   "num_samples": num, "judge": vars(judge) if judge else None, "rows": rows}
        head = (f"{name}: {fit['steps_done']} training steps in {fit['train_elapsed_s']:.0f} s, best validation NLL "
                f"{fit['best_val_nll_bits_per_dim']:.4f} bits/dim (step {fit['best_step']}); N = {num} samples "
                f"per row, seed {args.seed}")
        sections.append(table(f"{name}", rows) + f"\n\n{head}")
    if args.train_only:
        return 0
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    md = "\n\n".join(sections) + f"\n\nCommand: `{results['command']}` (total {results['total_seconds']} s)\n"
    print("\n" + md)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"quality_vs_nfe{suffix}.md").write_text(md)
    (out / f"quality_vs_nfe{suffix}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
