"""Quality against network calls for confidence-rule parallel decoding (issue 21): the "threshold" and "factor"
samplers (Fast-dLLM's rules, samplers/threshold.py, samplers/factor.py) beside the bridge and the exact samplers.

Two parts, one table each, written to ``OUT/parallel_decoding.{md,json,png}`` (``parallel_decoding_oracle.*`` or
``parallel_decoding_kjv.*`` when ``--parts`` names one):

- **oracle**: the exact denoiser of a peaked K = 3, D = 6 Markov-chain table (``oracle.markov_chain_table``);
  per setting: the mean network calls per sample (nfe), the TV of N samples to the table, the TV to N samples of
  the exact simulator ("exact"; two-sample TV, so about sqrt(2) times the Monte-Carlo floor when equal), and the
  TV of the bridge at the same number of calls (interpolated linearly between the bridge's integer step counts).
- **kjv**: a small masking transformer trained on KJV character windows (trained here into ``OUT/runs/`` unless
  ``--kjv-run`` names one); per setting: nfe, the AR judge's NLL of the samples (bits/char; the library's judge,
  evaluate/text_quality.py) and their unigram entropy (bits), and the calls the bridge needs for the same judge NLL
  (+0.02 bits/char; log-linear interpolation between its step counts): ``bridge calls / calls`` is the saving.

    python benchmarks/parallel_decoding.py                 # train the KJV run (about 12 CPU minutes), both parts
    python benchmarks/parallel_decoding.py --kjv-run RUN   # reuse a trained masking run
    python benchmarks/parallel_decoding.py --quick         # smoke run
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
from discrete_diffusion.evaluate.quality import evaluate_quality
from discrete_diffusion.evaluate.text_quality import ARJudgeConfig
from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    empirical_distribution,
    markov_chain_table,
    total_variation,
)
from discrete_diffusion.pipeline import generate_samples, load_run
from discrete_diffusion.processes import MaskingProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

ORACLE_K, ORACLE_D = 3, 6
TAUS = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)
FACTORS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
CONFIDENCES = ("probability", "margin", "entropy")
KJV_OVERRIDES = ["data.name=kjv", "data.seq_len=64", "process.name=masking", "process.schedule=log-linear",
                 "model.backbone=transformer", "model.dim=128", "model.depth=3", "model.heads=4", "model.dropout=0.0",
                 "train.batch_size=32", "train.eval_every=500", "train.checkpoint_every=500",
                 "train.sample_every=100000", "train.warmup_steps=100", "train.eval_t_samples=1", "train.device=cpu",
                 "evaluate.t_samples=1", "evaluate.batch_size=64"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", nargs="+", choices=["oracle", "kjv"], default=["oracle", "kjv"])
    p.add_argument("--kjv-run", default=None, help="a trained masking text run to reuse (default: train one)")
    p.add_argument("--kjv-steps", type=int, default=3000, help="training steps of the KJV run")
    p.add_argument("--train-minutes", type=float, default=12.0, help="wall-clock cap of the training")
    p.add_argument("--oracle-num", type=int, default=8000, help="samples per oracle setting")
    p.add_argument("--kjv-num", type=int, default=256, help="samples (64-character windows) per KJV setting")
    p.add_argument("--bridge-steps", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="KJV bridge step counts")
    p.add_argument("--taus", type=float, nargs="+", default=[0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5],
                   help="threshold settings on KJV")
    p.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0],
                   help="factor settings on KJV")
    p.add_argument("--no-extras", action="store_true",
                   help="KJV: only the bridge and the --taus / --factors settings (no exact, margin, entropy, blocks)")
    p.add_argument("--judge-steps", type=int, default=ARJudgeConfig.steps, help="training steps of the AR judge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny training and few samples")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="only recompute the savings and rewrite the Markdown and plot of a results JSON (next to it)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.kjv_steps, args.oracle_num, args.kjv_num, args.judge_steps = 20, 500, 16, 20
        args.bridge_steps = [4, 16]
    return args


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear y(x) through sorted points, clamped to the ends."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


# ----- oracle -----------------------------------------------------------------------------------------------------
def oracle_part(num: int, seed: int) -> dict[str, Any]:
    probs = markov_chain_table(ORACLE_K, ORACLE_D, sharpness=2.5, seed=0)
    proc = MaskingProcess(ORACLE_K)
    oracle = OracleDenoiser(proc, probs, ORACLE_D)
    schedule = build_schedule("log-linear")
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    floor = sum(total_variation(empirical_distribution(oracle.sample(num, gen(1000 + i)), ORACLE_K), probs)
                for i in range(4)) / 4

    def draw(name: str, **options) -> tuple[torch.Tensor, float, float]:
        sampler = build_sampler(name, **options)
        denoiser = SharedLevelOracle(oracle, ORACLE_D) if sampler.uses_steps else oracle
        t0 = time.perf_counter()
        x = sampler.sample(proc, denoiser, schedule, (num, ORACLE_D), generator=gen(seed))
        return x, float(sampler.nfe), time.perf_counter() - t0

    exact_x, exact_nfe, _ = draw("exact")
    exact_hist = empirical_distribution(exact_x, ORACLE_K)
    rows = [{"sampler": "exact", "setting": "-", "nfe": exact_nfe, "tv_table": total_variation(exact_hist, probs),
             "tv_exact": 0.0, "tv_bridge_equal_calls": None}]
    bridge = []
    for steps in range(1, 13):
        x, nfe, _ = draw("bridge", num_steps=steps)
        bridge.append((nfe, total_variation(empirical_distribution(x, ORACLE_K), probs)))
        rows.append({"sampler": "bridge", "setting": f"{steps} steps", "nfe": nfe, "tv_table": bridge[-1][1],
                     "tv_exact": total_variation(empirical_distribution(x, ORACLE_K), exact_hist),
                     "tv_bridge_equal_calls": bridge[-1][1]})
    settings = [("threshold", {"tau": tau, "confidence": c}) for c in CONFIDENCES for tau in TAUS] + \
               [("factor", {"factor": f, "confidence": c}) for c in CONFIDENCES for f in FACTORS] + \
               [("threshold", {"tau": tau, "block_size": 3}) for tau in (1.0, 0.9, 0.7)]
    for name, options in settings:
        x, nfe, _ = draw(name, **options)
        hist = empirical_distribution(x, ORACLE_K)
        rows.append({"sampler": name, "setting": ", ".join(f"{k}={v}" for k, v in options.items()), "nfe": nfe,
                     "tv_table": total_variation(hist, probs), "tv_exact": total_variation(hist, exact_hist),
                     "tv_bridge_equal_calls": interpolate([b[0] for b in bridge], [b[1] for b in bridge], nfe)})
        print(f"[oracle] {name} {options}: nfe {nfe:.3f} TV {rows[-1]['tv_table']:.4f} (bridge at equal calls "
              f"{rows[-1]['tv_bridge_equal_calls']:.4f})", flush=True)
    return {"table": f"markov_chain_table(K={ORACLE_K}, D={ORACLE_D}, sharpness=2.5, seed=0)", "num": num,
            "monte_carlo_floor": floor, "rows": rows}


def oracle_markdown(part: dict[str, Any]) -> str:
    lines = ["| sampler | setting | nfe | TV to table | TV to exact samples | bridge TV at equal calls |",
             "|---|---|---|---|---|---|"]
    for r in part["rows"]:
        eq = "-" if r["tv_bridge_equal_calls"] is None else f"{r['tv_bridge_equal_calls']:.4f}"
        lines.append(f"| {r['sampler']} | {r['setting']} | {r['nfe']:.3f} | {r['tv_table']:.4f} | {r['tv_exact']:.4f} "
                     f"| {eq} |")
    return (f"### oracle: {part['table']}\n\nN = {part['num']} samples per row; Monte-Carlo floor (mean TV of N exact "
            f"draws to the table) {part['monte_carlo_floor']:.4f}.\n\n" + "\n".join(lines))


# ----- KJV --------------------------------------------------------------------------------------------------------
def kjv_run(args: argparse.Namespace, runs_root: Path) -> Path:
    if args.kjv_run:
        return Path(args.kjv_run)
    run_dir = runs_root / ("parallel_kjv_quick" if args.quick else "parallel_kjv")
    if (run_dir / "best").is_dir() and (run_dir / "config.yaml").is_file():
        print(f"[kjv] reusing {run_dir}", flush=True)
        return run_dir
    rc = ddiff_main(["train", "--out", str(run_dir), "--no-progress", *KJV_OVERRIDES, f"train.steps={args.kjv_steps}",
                     f"train.time_limit_minutes={args.train_minutes}"])
    if rc != 0:
        raise SystemExit(f"ddiff train failed with exit code {rc}")
    return run_dir


def kjv_settings(args: argparse.Namespace) -> list[tuple[str, int | None, dict[str, Any]]]:
    out: list[tuple[str, int | None, dict[str, Any]]] = [("bridge", s, {}) for s in args.bridge_steps]
    if not args.no_extras:
        out.append(("exact", None, {}))
    taus = (0.5, 0.9) if args.quick else args.taus
    out += [("threshold", None, {"tau": tau}) for tau in taus]
    factors = (1.0,) if args.quick else args.factors
    out += [("factor", None, {"factor": f}) for f in factors]
    if not args.quick and not args.no_extras:
        out += [("threshold", None, {"tau": 0.9, "confidence": "margin"}),
                ("threshold", None, {"tau": 0.7, "confidence": "margin"}),
                ("threshold", None, {"tau": 0.9, "confidence": "entropy"}),
                ("threshold", None, {"tau": 0.9, "block_size": 16}),
                ("factor", None, {"factor": 1.0, "block_size": 16})]
    return out


def kjv_part(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    run = load_run(run_dir, "best", "cpu")
    judge = ARJudgeConfig(steps=args.judge_steps)
    rows = []
    for name, steps, options in kjv_settings(args):
        sampler = build_sampler_from(run.config, name, steps, options) if steps is not None else \
            build_sampler_from(run.config, name, None, options)
        t0 = time.perf_counter()
        samples = generate_samples(run, sampler, args.kjv_num, batch_size=args.kjv_num, seed=args.seed, progress=False)
        seconds = time.perf_counter() - t0
        result = evaluate_quality(run, samples, cache_dir=run_dir / "quality", text_judge=judge)
        m = result.metrics
        setting = f"{steps} steps" if steps is not None else (", ".join(f"{k}={v}" for k, v in options.items()) or "-")
        rows.append({"sampler": name, "setting": setting, "nfe": float(sampler.nfe),
                     "judge_nll_bits_per_char": m["ar_nll_bits_per_char"]["samples"],
                     "unigram_entropy_bits": m["unigram_entropy_bits"]["samples"],
                     "reference_judge_nll": m["ar_nll_bits_per_char"]["reference"],
                     "reference_entropy": m["unigram_entropy_bits"]["reference"], "sample_seconds": seconds})
        print(f"[kjv] {name} {setting}: nfe {sampler.nfe:.2f} judge NLL {rows[-1]['judge_nll_bits_per_char']:.4f} "
              f"entropy {rows[-1]['unigram_entropy_bits']:.4f} ({seconds:.1f} s)", flush=True)
    part = {"run": str(run_dir), "num": args.kjv_num, "seed": args.seed, "judge_steps": args.judge_steps,
            "best_val_nll_bits_per_dim": best_validation(run_dir), "rows": rows}
    add_savings(part)
    return part


def best_validation(run_dir: Path) -> float | None:
    """The lowest validation NLL (bits/dim) in the run's metrics.jsonl, None when there is none."""
    best = None
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            value = json.loads(line).get("val_nll_bits_per_dim")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)) and (best is None or value < best):
            best = float(value)
    return best


def bridge_calls_for(bridge: list[tuple[float, float, float]],
                     target: float) -> tuple[float | None, float | None, bool]:
    """The calls at which the bridge's judge NLL first reaches ``target`` (log-linear interpolation in the calls
    between its step counts), its entropy there, and whether that is only an upper bound (the bridge's fewest steps
    already reach it); (None, None, False) when it never does in the measured range."""
    if bridge[0][1] <= target:
        return bridge[0][0], bridge[0][2], True
    for (n0, q0, h0), (n1, q1, h1) in zip(bridge, bridge[1:]):
        if q1 <= target:
            w = (q0 - target) / (q0 - q1)
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0))), h0 + w * (h1 - h0), False
    return None, None, False


def add_savings(part: dict[str, Any]) -> None:
    """Per KJV row: the bridge's calls for the same judge NLL (+0.02 bits/char), the saving, the bridge's entropy."""
    rows = part["rows"]
    bridge = sorted((r["nfe"], r["judge_nll_bits_per_char"], r["unigram_entropy_bits"]) for r in rows
                    if r["sampler"] == "bridge")
    for r in rows:
        calls, entropy, bound = bridge_calls_for(bridge, r["judge_nll_bits_per_char"] + 0.02)
        r["bridge_calls_same_quality"], r["bridge_entropy_there"], r["bridge_calls_upper_bound"] = calls, entropy, bound
        r["saving"] = None if calls is None else calls / r["nfe"]


def kjv_markdown(part: dict[str, Any]) -> str:
    lines = ["| sampler | setting | nfe | judge NLL (bits/char) | unigram entropy (bits) | bridge calls for the same "
             "NLL (+0.02) | saving | bridge entropy there |", "|---|---|---|---|---|---|---|---|"]
    for r in part["rows"]:
        le = "<= " if r.get("bridge_calls_upper_bound") else ""
        calls = "-" if r["bridge_calls_same_quality"] is None else f"{le}{r['bridge_calls_same_quality']:.1f}"
        saving = "-" if r["saving"] is None else f"{le}{r['saving']:.2f}x"
        h = "-" if r["bridge_entropy_there"] is None else f"{r['bridge_entropy_there']:.3f}"
        lines.append(f"| {r['sampler']} | {r['setting']} | {r['nfe']:.2f} | {r['judge_nll_bits_per_char']:.4f} | "
                     f"{r['unigram_entropy_bits']:.4f} | {calls} | {saving} | {h} |")
    ref = part["rows"][0]
    lines.append(f"| **reference** (held-out real) | - | - | {ref['reference_judge_nll']:.4f} | "
                 f"{ref['reference_entropy']:.4f} | - | - | - |")
    return (f"### KJV-64 masking run ({part['run']}, best validation NLL "
            f"{part.get('best_val_nll_bits_per_dim')} bits/char)\n\nN = {part['num']} samples per row, seed "
            f"{part['seed']}; AR judge trained {part['judge_steps']} steps. 'saving' = bridge calls for the same judge "
            f"NLL (+0.02 bits/char) / the setting's calls; '-' where the bridge does not reach it within its largest "
            f"step count, '<=' where its fewest steps already do.\n\n"
            + "\n".join(lines))


def plot(results: dict[str, Any], path: Path) -> None:
    """Quality against calls, one chart per part (Pillow, the charts of ``ddiff report``)."""
    from PIL import Image

    from discrete_diffusion.report.plots import draw_chart

    parts = [p for p in ("oracle", "kjv") if p in results]
    image = Image.new("RGB", (620 * len(parts), 420), "white")
    for i, part in enumerate(parts):
        rows = results[part]["rows"]
        key = "tv_table" if part == "oracle" else "judge_nll_bits_per_char"
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            label = r["sampler"]
            if r["sampler"] in ("threshold", "factor"):
                conf = "margin" if "margin" in r["setting"] else "entropy" if "entropy" in r["setting"] else "prob."
                label += f" ({conf}{', blocks' if 'block_size' in r['setting'] else ''})"
            series.setdefault(label, []).append((r["nfe"], r[key]))
        series = {k: sorted(v) for k, v in series.items()}
        title = ("oracle K=3, D=6: TV to the table" if part == "oracle"
                 else "KJV-64 masking run: AR-judge NLL of samples")
        reference = results["oracle"]["monte_carlo_floor"] if part == "oracle" else rows[0]["reference_judge_nll"]
        draw_chart(image, (620 * i, 0, 620 * (i + 1), 420), title, series, "network calls per sample (nfe)",
                   "TV" if part == "oracle" else "bits/char", xlog=True, ylog=False, reference=reference)
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:       # recompute the savings, rewrite the Markdown and the plot next to a results JSON
        source = Path(args.replot)
        results = json.loads(source.read_text())
        sections = []
        if "oracle" in results:
            sections.append(oracle_markdown(results["oracle"]))
        if "kjv" in results:
            add_savings(results["kjv"])
            sections.append(kjv_markdown(results["kjv"]))
        source.write_text(json.dumps(results, indent=2) + "\n")
        source.with_suffix(".md").write_text("\n\n".join(sections) + f"\n\nCommand: `{results['command']}` (total "
                                             f"{results['seconds']:.0f} s)\n")
        plot(results, source.with_suffix(".png"))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"command": "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])]),
                               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "threads": args.threads}
    sections = []
    if "oracle" in args.parts:
        results["oracle"] = oracle_part(args.oracle_num, args.seed)
        sections.append(oracle_markdown(results["oracle"]))
    if "kjv" in args.parts:
        run_dir = kjv_run(args, out / "runs")
        results["kjv"] = kjv_part(args, run_dir)
        sections.append(kjv_markdown(results["kjv"]))
    results["seconds"] = time.perf_counter() - started
    suffix = ("" if len(args.parts) == 2 else "_" + args.parts[0]) + ("_quick" if args.quick else "")
    text = "\n\n".join(sections) + f"\n\nCommand: `{results['command']}` (total {results['seconds']:.0f} s)\n"
    (out / f"parallel_decoding{suffix}.md").write_text(text)
    (out / f"parallel_decoding{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / f"parallel_decoding{suffix}.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
