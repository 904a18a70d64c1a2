"""Approximate caches measured against uncached threshold decoding of a trained masking text run, side by side in
one process: the block-wise KV caches (samplers/approx_cache.py, Fast-dLLM prefix / dual; block-by-block decoding)
and the partial-refresh caches (samplers/partial_cache.py: dLLM-Cache's V-verify rule "vverify" and this library's
"partial"; with and without blocks; block 0 = the whole sequence).

Per setting (threshold sampler, the same seed and rows for every cache setting):
- calls: batched network calls; positions: positions run through the network, relative to uncached (the
  token-linear FLOPs: projections and MLP; the partial-refresh cache counts its value check and its refreshed
  positions by their linear-layer work); seconds: sampling wall time on this CPU (one thread; the least of
  ``--repeats`` runs, the settings of a block size taking turns, so that load on a shared machine hits them alike);
- max |dlogit|: the largest |logit difference| between a cached call and the uncached network at the same
  tokens and noise level, over the masked sites the sampler may commit (``track_deviation``, a separate run; the
  samples are checked equal), and its median over cached calls; max |dlog p|: the same for the log-probabilities;
  site TV: the total variation between the cached and uncached p(x0^d | x_t) of such a site. A cached call is one
  batched call over up to ``--num`` samples: "typical site TV" is the median over calls of the median over the
  call's sites, "worst site TV" the median over calls of the call's largest (it grows with the batch), "max site
  TV" the largest of all;
- tokens differing: the fraction of sampled tokens that differ from uncached decoding with the same seed (a
  single early difference changes the rest of a row, so this is an upper-bound-style measure of divergence);
- judge NLL (bits/char) and unigram entropy (bits) of the samples under the library's AR judge (when the run's
  quality/ folder holds a trained judge, or ``--judge-steps`` trains one).

    python benchmarks/approx_cache.py --run RUN                 # RUN: a trained masking transformer text run
    python benchmarks/approx_cache.py --run RUN --quick         # smoke run

The run used for benchmarks/results/approx_cache.md has the configuration of benchmarks/parallel_decoding.py's
KJV-64 masking run (depth 3, dim 128, time-conditioned), trained 3000 steps (validation 2.90 bits/char) with
``ddiff train --out RUN <KJV_OVERRIDES of benchmarks/parallel_decoding.py> train.steps=3000``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from discrete_diffusion.evaluate.quality import evaluate_quality
from discrete_diffusion.evaluate.text_quality import ARJudgeConfig
from discrete_diffusion.pipeline import generate_samples, load_run
from discrete_diffusion.samplers import build_sampler

RESULTS = Path(__file__).parent / "results"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained masking transformer run on 1-D sequences")
    p.add_argument("--num", type=int, default=128, help="samples per setting")
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--block-sizes", type=int, nargs="+", default=[0, 8, 16],
                   help="0: no blocks (only the partial-refresh cache applies)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5], help="refresh_ratio of the partial cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the least time is reported)")
    p.add_argument("--judge", action="store_true", help="score samples with the AR judge (quality/ of the run)")
    p.add_argument("--judge-steps", type=int, default=ARJudgeConfig.steps)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "approx_cache"))
    return p.parse_args()


def settings(block: int, ratios: list[float]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for variant in ("prefix", "dual") if block else ():
        for refresh in (0, 4, 2):
            out.append({"approx_cache": variant, "refresh_every": refresh})
    for variant in ("partial", "vverify"):
        for ratio in ratios:
            for refresh in (0, 4):
                out.append({"approx_cache": variant, "refresh_ratio": ratio, "refresh_every": refresh})
    return out


def main() -> None:
    args = parse()
    if args.quick:
        args.num, args.block_sizes, args.repeats = 8, [0, 8], 1
    torch.set_num_threads(1)
    run = load_run(args.run, "best", "cpu")
    judge = ARJudgeConfig(steps=args.judge_steps)
    rows = []
    for block in args.block_sizes:
        base_samples: torch.Tensor | None = None
        block_settings = settings(block, args.ratios)
        for options, (seconds, samples, sampler) in zip(block_settings, timings(run, args, block, block_settings)):
            calls, positions = sampler.network_calls, sampler.positions_evaluated
            deviations: list[float] = []
            logp_dev: list[float] = []
            tv_dev: list[float] = []
            typical: list[float] = []
            if options:
                tracker = build_sampler("threshold", tau=args.tau, block_size=block, **options)
                tracker.track_deviation = True
                again = generate_samples(run, tracker, args.num, batch_size=args.num, seed=args.seed, progress=False)
                assert torch.equal(again, samples), "tracking must not change the samples"
                assert tracker.cache_state is not None
                deviations = tracker.cache_state.deviations
                logp_dev, tv_dev = tracker.cache_state.log_prob_deviations, tracker.cache_state.tv_deviations
                typical = tracker.cache_state.median_tv_deviations
            if base_samples is None:
                base_samples, base_positions, base_seconds = samples, positions, seconds
            row: dict[str, Any] = {
                "block_size": block, "cache": options.get("approx_cache", "none"),
                "refresh_every": options.get("refresh_every", "-"), "refresh_ratio": options.get("refresh_ratio", "-"),
                "calls": calls, "nfe": float(sampler.nfe),
                "positions_ratio": positions / base_positions, "seconds": seconds, "time_ratio": seconds / base_seconds,
                "max_dlogit": max(deviations) if deviations else 0.0,
                "median_dlogit": statistics.median(deviations) if deviations else 0.0,
                "max_dlogp": max(logp_dev) if logp_dev else 0.0,
                "max_site_tv": max(tv_dev) if tv_dev else 0.0,
                "median_site_tv": statistics.median(tv_dev) if tv_dev else 0.0,
                "typical_site_tv": statistics.median(typical) if typical else 0.0,
                "cached_calls_measured": len(deviations),
                "tokens_differing": float((samples != base_samples).double().mean()),
            }
            if args.judge:
                m = evaluate_quality(run, samples, cache_dir=Path(args.run) / "quality", text_judge=judge).metrics
                row["judge_nll_bits_per_char"] = m["ar_nll_bits_per_char"]["samples"]
                row["unigram_entropy_bits"] = m["unigram_entropy_bits"]["samples"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(args, rows)


def timings(run: Any, args: argparse.Namespace, block: int,
            block_settings: list[dict[str, Any]]) -> list[tuple[float, torch.Tensor, Any]]:
    """Per setting: the least sampling time over ``args.repeats`` rounds (each round runs every setting once), and
    the samples and sampler of its last round (the same seed every round)."""
    best = [float("inf")] * len(block_settings)
    last: list[tuple[torch.Tensor, Any]] = []
    for _ in range(max(1, args.repeats)):
        last = []
        for i, options in enumerate(block_settings):
            sampler = build_sampler("threshold", tau=args.tau, block_size=block, **options)
            t0 = time.perf_counter()
            samples = generate_samples(run, sampler, args.num, batch_size=args.num, seed=args.seed, progress=False)
            best[i] = min(best[i], time.perf_counter() - t0)
            last.append((samples, sampler))
    return [(seconds, samples, sampler) for seconds, (samples, sampler) in zip(best, last)]


def write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "threads": 1,
            "run": args.run, "num": args.num, "tau": args.tau, "seed": args.seed, "repeats": args.repeats}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    judged = bool(rows) and "judge_nll_bits_per_char" in rows[0]
    head = ["block", "cache", "refresh_every", "refresh_ratio", "calls", "positions (x uncached)", "time (x uncached)",
            "max |dlogit|", "median |dlogit|", "max |dlog p|", "typical site TV", "worst site TV", "max site TV",
            "tokens differing"] + (["judge NLL", "entropy"] if judged else [])
    lines = [f"# Approximate caches vs uncached decoding (threshold tau={args.tau}, {args.num} samples)",
             "", f"`{meta['command']}` ({meta['date']}, torch {meta['torch']}, 1 thread, time: the least of "
             f"{args.repeats} runs)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["block_size"], r["cache"], r["refresh_every"], r.get("refresh_ratio", "-"), r["calls"],
                 f"{r['positions_ratio']:.3f}",
                 f"{r['time_ratio']:.2f}", f"{r['max_dlogit']:.3g}", f"{r['median_dlogit']:.3g}",
                 f"{r['max_dlogp']:.3g}", f"{r['typical_site_tv']:.3g}", f"{r['median_site_tv']:.3g}",
                 f"{r['max_site_tv']:.3g}",
                 f"{r['tokens_differing']:.3f}"]
        if judged:
            cells += [f"{r['judge_nll_bits_per_char']:.4f}", f"{r['unigram_entropy_bits']:.4f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
