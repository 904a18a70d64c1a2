"""Does a trained DDPD planner help a trained uniform-noise model? Planner cross-entropy and sample quality.

For each uniform-noise run of the likelihood table (``benchmarks/likelihood_table.py``: digits and KJV, a
transformer of dim 128, depth 4, 800 steps), this trains a planner with ``planner.train_planner`` (the run's
architecture and recipe, ``--planner-steps`` steps) and then compares, at equal sampler steps:

- the planners: validation BCE of the noise indicators (bits per site) of the trained planner and of the planner
  the ddpd sampler derives from the denoiser (``UniformProcess.noise_probability``), on the same draws, overall
  and at fixed t;
- the samples: ``ddpd`` with the derived planner, ``ddpd`` with the trained planner, both again paired with the
  table's masking model of the same data as the denoiser of the noisy sites (DDPD's pairing, ``masked_denoiser``),
  the exact ``bridge`` sampler, and the masking model sampled on its own (bridge), ``--num-samples`` each, scored
  by the exact NLL of the likelihood table's autoregressive transformer
  on the same dataset (bits per dimension: lower means more plausible to an independent model, as in generative
  perplexity). The test split's own score under that model is the reference a faithful sampler aims at;
  distinct samples are counted to expose mode collapse. Wall time per sampler run is reported.

    python benchmarks/ddpd_planner.py                 # both runs, 800 planner steps (about 25 min on 2 cores)
    python benchmarks/ddpd_planner.py --reuse         # keep planners trained before
    python benchmarks/ddpd_planner.py --quick         # smoke run (tiny planner, few samples)

Needs ``python benchmarks/likelihood_table.py`` to have run first (its runs are read from
``OUT/runs/likelihood_table``). Writes ``ddpd_planner[_quick | _Nsteps].md`` / ``.json`` to ``--out`` (the
suffix names a planner budget other than 800 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from discrete_diffusion.baselines import ARTransformer
from discrete_diffusion.baselines.fit import bits_per_dim
from discrete_diffusion.pipeline import generate_samples, load_run
from discrete_diffusion.planner import denoiser_planner, load_planner, train_planner
from discrete_diffusion.samplers import build_sampler

RUNS = ("digits", "kjv")


def load_scorer(table_runs: Path, dataset: str, run) -> ARTransformer:
    """The likelihood table's AR transformer for ``dataset`` (its config from result.json)."""
    folder = table_runs / f"{dataset}-ar"
    config = json.loads((folder / "result.json").read_text())["config"]["model"]
    net = ARTransformer(run.dataset.num_states, math.prod(run.dataset.site_shape), dim=config["dim"],
                        depth=config["depth"], heads=config["heads"], dropout=0.0, mlp_ratio=config["mlp_ratio"])
    net.load_state_dict(load_file(str(folder / "best_ema.safetensors")))
    return net.eval()


def score(scorer: ARTransformer, samples: torch.Tensor) -> dict:
    bits = bits_per_dim(scorer, samples, "cpu")
    distinct = len({tuple(row.tolist()) for row in samples.reshape(samples.shape[0], -1)})
    return {"ar_bits": float(bits.mean()), "ar_bits_se": float(bits.std() / math.sqrt(bits.numel())),
            "distinct": distinct}


@torch.no_grad()
def bce_by_t(run, planners: dict, times: tuple[float, ...] = (0.05, 0.2, 0.5, 0.8, 0.95), num: int = 512,
             seed: int = 0) -> list[dict]:
    """BCE (bits/site) of each planner at fixed t on the validation split, all planners on the same draws."""
    data = run.dataset.val[:num]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for t in times:
        lam = torch.logit(run.schedule.alpha(torch.full((data.shape[0],), t, dtype=torch.float64)))
        xt, is_noise = run.process.sample_marginal_with_noise(data, lam, generator)
        row = {"t": t, "noise_rate": float(is_noise.double().mean())}
        for label, planner in planners.items():
            p = planner(xt, lam.float()).double().clamp(1e-12, 1.0 - 1e-12)
            row[label] = float(-torch.where(is_noise, p.log(), (-p).log1p()).mean()) / math.log(2.0)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--planner-steps", type=int, default=800)
    parser.add_argument("--sampler-steps", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep planners already trained under OUT/runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 planner steps, 32 samples, 8 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.planner_steps, args.num_samples, args.sampler_steps = 20, 32, [8]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    table_runs = out / "runs" / "likelihood_table"
    suffix = "_quick" if args.quick else ("" if args.planner_steps == 800 else f"_{args.planner_steps}steps")
    rows, planners = [], {}
    for name in args.runs:
        run_dir = table_runs / f"{name}-uniform"
        if not (run_dir / "config.yaml").is_file():
            raise SystemExit(f"{run_dir} is missing: run `python benchmarks/likelihood_table.py` first")
        planner_dir = out / "runs" / f"ddpd_planner{suffix}" / name
        if not (args.reuse and (planner_dir / "metrics.json").is_file()):
            overrides = [f"train.steps={args.planner_steps}", f"train.eval_every={max(args.planner_steps // 4, 1)}"]
            shutil.rmtree(planner_dir, ignore_errors=True)   # a planner directory holds its checkpoints: start anew
            train_planner(run_dir, overrides, planner_dir, "cpu", progress=False)
        planners[name] = json.loads((planner_dir / "metrics.json").read_text())
        run = load_run(run_dir, "best", "cpu")
        scorer = load_scorer(table_runs, name, run)
        reference = score(scorer, run.dataset.test)
        rows.append({"run": name, "sampler": "test data", "steps": None, **reference, "seconds": None})
        trained = load_planner(planner_dir, run)
        planners[name]["bce_by_t"] = bce_by_t(run, {"trained": trained,
                                                    "derived": denoiser_planner(run.process, run.denoiser)})
        masking_run = load_run(table_runs / f"{name}-masking", "best", "cpu")
        masked = masking_run.denoiser
        for steps in args.sampler_steps:
            for label, sampler in (
                    ("ddpd (derived planner)", build_sampler("ddpd", num_steps=steps)),
                    ("ddpd (trained planner)", build_sampler("ddpd", num_steps=steps, planner=trained)),
                    ("ddpd (derived planner + masked denoiser)",
                     build_sampler("ddpd", num_steps=steps, masked_denoiser=masked)),
                    ("ddpd (trained planner + masked denoiser)",
                     build_sampler("ddpd", num_steps=steps, planner=trained, masked_denoiser=masked)),
                    ("bridge", build_sampler("bridge", num_steps=steps))):
                start = time.time()
                samples = generate_samples(run, sampler, args.num_samples, batch_size=256, seed=args.seed,
                                           progress=False)
                seconds = time.time() - start
                rows.append({"run": name, "sampler": label, "steps": steps, **score(scorer, samples),
                             "network_calls_per_step": sampler.network_calls / steps, "seconds": round(seconds, 1)})
                print(rows[-1], file=sys.stderr)
            # the masking model on its own: how much of the pairing's gain is the masking model's
            sampler = build_sampler("bridge", num_steps=steps)
            start = time.time()
            samples = generate_samples(masking_run, sampler, args.num_samples, batch_size=256, seed=args.seed,
                                       progress=False)
            rows.append({"run": name, "sampler": "masking model alone (bridge)", "steps": steps,
                         **score(scorer, samples), "network_calls_per_step": sampler.network_calls / steps,
                         "seconds": round(time.time() - start, 1)})
            print(rows[-1], file=sys.stderr)
    write_report(out, suffix, rows, planners, args)
    return 0


def write_report(out: Path, suffix: str, rows: list[dict], planners: dict, args: argparse.Namespace) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = [f"# DDPD on uniform noise: trained planner vs the planner derived from the denoiser ({stamp})", "",
             f"Command: `{command}` ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{args.threads} threads). Uniform-noise runs and AR scorers from the likelihood table (transformer "
             f"dim 128, depth 4, 800 steps). Planners: the run's architecture and recipe, {args.planner_steps} "
             "steps, best EMA weights on validation.", "",
             "| run | planner val BCE, trained (bits/site) | derived from the denoiser | planner params | train s |",
             "|---|---:|---:|---:|---:|"]
    for name, m in planners.items():
        lines.append(f"| {name} | {m['val_bce_bits_per_site']:.4f} | "
                     f"{m['denoiser_planner_val_bce_bits_per_site']:.4f} | {m['parameters']:,} | "
                     f"{m['train_seconds']:.0f} |")
    lines += ["", "Planner BCE (bits/site) at fixed t, 512 validation examples, both planners on the same draws:", "",
              "| run | t | noise rate | trained | derived |", "|---|---:|---:|---:|---:|"]
    for name, m in planners.items():
        for r in m["bce_by_t"]:
            lines.append(f"| {name} | {r['t']:.2f} | {r['noise_rate']:.3f} | {r['trained']:.4f} | {r['derived']:.4f} |")
    lines += ["", f"Samples ({args.num_samples} per row, seed {args.seed}) scored by the exact NLL of the table's AR "
              "transformer (mean ± SE over samples; the 'test data' row scores the test split):", "",
              "| run | sampler | steps | AR NLL of samples (bits/site) | distinct samples | calls per step | wall s |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        steps = "" if r["steps"] is None else r["steps"]
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        calls = "" if r["steps"] is None else f"{r['network_calls_per_step']:.2f}"
        lines.append(f"| {r['run']} | {r['sampler']} | {steps} | {r['ar_bits']:.3f} ± {r['ar_bits_se']:.3f} | "
                     f"{r['distinct']} | {calls} | {seconds} |")
    (out / f"ddpd_planner{suffix}.md").write_text("\n".join(lines) + "\n")
    (out / f"ddpd_planner{suffix}.json").write_text(json.dumps({"date": stamp, "command": command, "rows": rows,
                                                                "planners": planners}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
