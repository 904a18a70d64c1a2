"""Sampler error against the number of network evaluations (NFE) on an exact oracle problem.

For every process (masking, uniform, the generic matrix process with a Gaussian kernel, Blackout) and every
sampler of ``discrete_diffusion.samplers.SAMPLERS`` that applies to it, draw N samples (default 50k) of a
K = 3, D = 3 problem (27 cells, random table) driven by the exact enumeration denoiser and report, against
the measured NFE per sample (``sampler.nfe``: network rows evaluated / batch; two per step for the
theta methods), the distance of the empirical distribution to the exact table:
- TV = 0.5 sum |p_hat - p|;
- KL = KL(p_hat || p) in nats;
- chi2 = sum ((p_hat - p)^2 - p_hat (1 - p_hat)/(N - 1)) / p, the chi-square divergence with the
  multinomial noise subtracted (unbiased up to O(1/N^2)); it shrinks like bias^2, so an order-r sampler
  gives chi2 ~ NFE^(-2r) until it reaches the noise (about sqrt(2 (J - 1)) / N).
The Monte-Carlo floor (N exact draws from the table) and the exact simulators ("exact" for masking and
Blackout, "exact-thinning" for uniform, "exact-window" for the matrix process) are reference rows. The schedule
is log-linear (alpha(1) = 1e-4).

Writes ``sampler_error.md`` and ``sampler_error.json`` (raw numbers and the command) and a log-log plot
``sampler_error.png`` (PIL; matplotlib is not a dependency) to ``--out``.

    python benchmarks/sampler_error.py                 # default: N = 50k, steps 4 8 16 32 64
    python benchmarks/sampler_error.py --quick         # smoke run
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

import torch

from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle, empirical_distribution, total_variation
from discrete_diffusion.processes import BlackoutProcess, ForwardProcess, MaskingProcess, MatrixProcess, UniformProcess
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.schedules import build_schedule

EXACT = {"masking": ("exact", {"lam_stop": 12.0}), "blackout": ("exact", {"lam_stop": 12.0}),
         "uniform": ("exact-thinning", {"lam_stop": 12.0}), "gaussian": ("exact-window", {"lam_stop": 8.0})}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="sampler step counts")
    p.add_argument("--samples", type=int, default=50_000, help="samples per measurement")
    p.add_argument("--states", type=int, default=3, help="K of the oracle problem")
    p.add_argument("--sites", type=int, default=3, help="D of the oracle problem")
    p.add_argument("--processes", nargs="+", default=["masking", "uniform", "gaussian", "blackout"])
    p.add_argument("--samplers", nargs="+", default=None, help="default: every sampler that applies")
    p.add_argument("--seed", type=int, default=0, help="seed of the table and the samplers")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 step counts, 5k samples")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from --out/sampler_error.json")
    return p.parse_args(argv)


def build(name: str, k: int) -> ForwardProcess:
    if name == "gaussian":
        return MatrixProcess(k, "gaussian", normalize=True)
    return {"masking": MaskingProcess, "uniform": UniformProcess, "blackout": BlackoutProcess}[name](k)


def distances(samples: torch.Tensor, probs: torch.Tensor, k: int) -> dict:
    phat = empirical_distribution(samples, k)
    n = samples.shape[0]
    kl = float(torch.where(phat > 0, phat * (phat.log() - probs.log()), torch.zeros_like(phat)).sum())
    chi2 = float((((phat - probs) ** 2 - phat * (1 - phat) / (n - 1)) / probs).sum())
    return {"tv": total_variation(phat, probs), "kl": kl, "chi2": chi2}


def applicable(process: ForwardProcess, names: list[str] | None) -> list[str]:
    out = []
    for name in sorted(SAMPLERS) if names is None else names:
        if name.startswith("exact") or not SAMPLERS[name].supports(process):
            continue
        if name == "mean-bridge" and process.name != "blackout":
            continue
        out.append(name)
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    k, sites = args.states, args.sites
    gen = torch.Generator().manual_seed(args.seed)
    probs = torch.rand(k**sites, generator=gen, dtype=torch.float64) + 0.05
    probs = probs / probs.sum()
    schedule = build_schedule("log-linear")
    rows = []
    for case in args.processes:
        process = build(case, k)
        oracle = OracleDenoiser(process, probs, sites)
        floor = distances(oracle.sample(args.samples, torch.Generator().manual_seed(args.seed + 1)), probs, k)
        rows.append({"process": case, "sampler": "floor (exact draws)", "steps": 0, "nfe": 0.0, **floor,
                     "seconds": 0.0})
        if case in EXACT:
            name, options = EXACT[case]
            sampler = build_sampler(name, **options)
            start = time.perf_counter()
            x = sampler.sample(process, oracle, schedule, (args.samples, sites),
                               generator=torch.Generator().manual_seed(args.seed + 2))
            rows.append({"process": case, "sampler": name, "steps": 0, "nfe": sampler.nfe,
                         **distances(x, probs, k), "seconds": time.perf_counter() - start})
            print(_fmt(rows[-1]), flush=True)
        shared = SharedLevelOracle(oracle, sites)
        for name in applicable(process, args.samplers):
            for steps in args.steps:
                sampler = build_sampler(name, num_steps=steps)
                start = time.perf_counter()
                x = sampler.sample(process, shared, schedule, (args.samples, sites),
                                   generator=torch.Generator().manual_seed(args.seed + 3))
                rows.append({"process": case, "sampler": name, "steps": steps, "nfe": sampler.nfe,
                             **distances(x, probs, k), "seconds": time.perf_counter() - start})
                print(_fmt(rows[-1]), flush=True)
    return {"rows": rows, "probs": probs.tolist()}


def _fmt(row: dict) -> str:
    return (f"{row['process']:9s} {row['sampler']:20s} steps={row['steps']:4d} nfe={row['nfe']:7.2f} "
            f"tv={row['tv']:.4f} kl={row['kl']:.5f} chi2={row['chi2']:.5f} ({row['seconds']:.1f}s)")


def slopes(rows: list[dict]) -> dict:
    """Least-squares slope of log chi2 against log NFE per (process, sampler), over points with chi2 above
    4x its noise level; the order estimate is -slope / 2."""
    out = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["steps"] > 0:
            groups.setdefault((r["process"], r["sampler"]), []).append(r)
    for key, group in groups.items():
        pts = [(math.log(r["nfe"]), math.log(r["chi2"])) for r in group if r["chi2"] > r["chi2_noise"]]
        if len(pts) >= 2:
            mx = sum(p[0] for p in pts) / len(pts)
            my = sum(p[1] for p in pts) / len(pts)
            sxx = sum((p[0] - mx) ** 2 for p in pts)
            out[key] = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else float("nan")
    return out


def markdown(result: dict, args: argparse.Namespace) -> str:
    rows = result["rows"]
    lines = [f"# Sampler error vs NFE (K = {args.states}, D = {args.sites}, N = {args.samples}, log-linear schedule)",
             "", "TV and KL(p_hat || p) of the empirical distribution to the exact table; chi2 is the noise-"
             "debiased chi-square divergence (order-r samplers: chi2 ~ NFE^(-2r) above the noise, about "
             f"{math.sqrt(2 * (args.states ** args.sites - 1)) / args.samples:.1e} here). The slope column "
             "is the fitted log-log slope of chi2 against NFE over the points above 4x that noise.", ""]
    fitted = result["slopes"]
    for case in args.processes:
        lines += [f"## {case}", "", "| sampler | steps | NFE | TV | KL | chi2 | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["process"] != case:
                continue
            lines.append(f"| {r['sampler']} | {r['steps'] or '-'} | {r['nfe']:.1f} | {r['tv']:.4f} | {r['kl']:.5f} "
                         f"| {r['chi2']:.5f} | {r['seconds']:.1f} |")
        slope_rows = [(s, v) for (p, s), v in fitted.items() if p == case]
        if slope_rows:
            lines += ["", "chi2 slope vs NFE: " + ", ".join(f"{s} {v:.2f}" for s, v in slope_rows)]
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, args: argparse.Namespace, path: Path) -> bool:
    """Log-log TV against NFE, one panel per process, drawn with PIL. Returns False without PIL."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r["steps"] > 0]
    names = sorted({r["sampler"] for r in rows})
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    colour = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    panel_w, panel_h, margin = 420, 320, 50
    cases = args.processes
    image = Image.new("RGB", (panel_w * len(cases), panel_h + 40 + 16 * ((len(names) + 2) // 3)), "white")
    draw = ImageDraw.Draw(image)
    nfes = [r["nfe"] for r in rows] or [1.0]
    tvs = [max(r["tv"], 1e-4) for r in result["rows"]] or [1.0]
    x_lo, x_hi = math.log10(min(nfes)) - 0.05, math.log10(max(nfes)) + 0.05
    y_lo, y_hi = math.log10(min(tvs)) - 0.1, math.log10(max(tvs)) + 0.1

    def to_px(ox: int, nfe: float, tv: float) -> tuple[float, float]:
        fx = (math.log10(nfe) - x_lo) / (x_hi - x_lo)
        fy = (math.log10(max(tv, 1e-4)) - y_lo) / (y_hi - y_lo)
        return ox + margin + fx * (panel_w - margin - 15), 20 + (1 - fy) * (panel_h - margin - 20)

    for i, case in enumerate(cases):
        ox = i * panel_w
        x0, y1 = to_px(ox, 10 ** x_lo, 10 ** y_lo)
        x1, y0 = to_px(ox, 10 ** x_hi, 10 ** y_hi)
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((ox + margin, 4), f"{case}: TV vs NFE (log-log)", fill="black")
        for decade in range(math.floor(y_lo), math.ceil(y_hi) + 1):
            for m in (1, 2, 5):
                v = m * 10.0**decade
                if y_lo <= math.log10(v) <= y_hi:
                    _, py = to_px(ox, 10 ** x_lo, v)
                    draw.line([x0 - 4, py, x0, py], fill="black")
                    draw.text((ox + 4, py - 6), f"{v:g}", fill="black")
        for v in (1, 2, 5, 10, 20, 50, 100, 200, 500):
            if x_lo <= math.log10(v) <= x_hi:
                px, _ = to_px(ox, v, 10 ** y_lo)
                draw.line([px, y1, px, y1 + 4], fill="black")
                draw.text((px - 6, y1 + 6), str(v), fill="black")
        floor = [r for r in result["rows"] if r["process"] == case and r["sampler"].startswith("floor")]
        if floor:
            _, py = to_px(ox, 10 ** x_lo, floor[0]["tv"])
            for px in range(int(x0), int(x1), 8):
                draw.line([px, py, px + 4, py], fill=(0, 0, 0))
        for name in names:
            pts = sorted((r["nfe"], r["tv"]) for r in rows if r["process"] == case and r["sampler"] == name)
            xy = [to_px(ox, a, b) for a, b in pts]
            if len(xy) > 1:
                draw.line(xy, fill=colour[name], width=2)
            for px, py in xy:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour[name])
    for j, name in enumerate(names + ["floor (dashed)"]):
        lx, ly = 10 + (j % 3) * 250, panel_h + 10 + 16 * (j // 3)
        draw.rectangle([lx, ly + 3, lx + 12, ly + 11], fill=colour.get(name, (0, 0, 0)))
        draw.text((lx + 18, ly), name, fill="black")
    image.save(path)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "sampler_error.json").read_text())
        args.processes = saved["args"]["processes"]
        plot({"rows": saved["rows"]}, args, Path(args.out) / "sampler_error.png")
        return 0
    if args.quick:
        args.steps, args.samples = [4, 16], 5000
    start = time.perf_counter()
    result = run(args)
    noise = math.sqrt(2 * (args.states ** args.sites - 1)) / args.samples
    for r in result["rows"]:
        r["chi2_noise"] = 4 * noise
    result["slopes"] = slopes(result["rows"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, args)
    (out / "sampler_error.md").write_text(text + "\n")
    payload = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
               "date": datetime.now(timezone.utc).isoformat(), "platform": platform.platform(),
               "torch": torch.__version__, "args": vars(args), "seconds": time.perf_counter() - start,
               "rows": result["rows"], "table": result["probs"],
               "chi2_slopes": {f"{p}/{s}": v for (p, s), v in result["slopes"].items()}}
    (out / "sampler_error.json").write_text(json.dumps(payload, indent=1) + "\n")
    plotted = plot(result, args, out / "sampler_error.png")
    print(text)
    print(f"wrote {out / 'sampler_error.md'}, {out / 'sampler_error.json'}"
          + (f", {out / 'sampler_error.png'}" if plotted else " (no PIL: no plot)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
