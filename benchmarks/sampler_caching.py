"""Prediction caching (``cache=True``) when steps exceed sites: network calls, wall time, identical samples.

Masking process (the posterior p(x0 | x_t) does not depend on the noise level at fixed x_t, so a row whose
x_t did not change since the last call can reuse its prediction), batch 64, 32 sites, 256 states, the fixed
random ``FakeNetwork`` of ``sampler_overhead.py`` followed by the SUBS parameterisation. With more steps than
sites most steps unmask nothing in most rows: the cache calls the network only on the rows that changed,
and skips the call when none did. For every sampler and step count (default 64, 128, 256, 1024): batched
network calls, rows evaluated (NFE = rows / batch), wall time with and without the cache (median of
``--repeats`` interleaved runs, ratio cached / uncached per run, then the median) and whether the same seed
gives identical samples.

    python benchmarks/sampler_caching.py                 # default
    python benchmarks/sampler_caching.py --quick         # smoke run

Writes ``sampler_caching.md`` / ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from discrete_diffusion.processes import MaskingProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_overhead import FakeDenoiser, FakeNetwork


def run_once(name: str, steps: int, cache: bool, process, denoiser, schedule, shape, seed: int):
    sampler = build_sampler(name, num_steps=steps, cache=cache)
    start = time.perf_counter()
    x = sampler.sample(process, denoiser, schedule, shape, generator=torch.Generator().manual_seed(seed))
    return x, time.perf_counter() - start, sampler


def measure(name: str, steps: int, args: argparse.Namespace, process, denoiser, schedule) -> dict:
    shape = (args.batch, args.sites)
    plain_t, cached_t, ratios, identical = [], [], [], True
    for rep in range(args.repeats):
        x_plain, tp, s_plain = run_once(name, steps, False, process, denoiser, schedule, shape, args.seed + rep)
        x_cached, tc, s_cached = run_once(name, steps, True, process, denoiser, schedule, shape, args.seed + rep)
        plain_t.append(tp), cached_t.append(tc), ratios.append(tc / tp)
        identical &= bool(torch.equal(x_plain, x_cached))
    row = {"sampler": name, "steps": steps, "sites": args.sites,
           "calls_plain": s_plain.network_calls, "calls_cached": s_cached.network_calls,
           "nfe_plain": s_plain.nfe, "nfe_cached": s_cached.nfe,
           "seconds_plain": statistics.median(plain_t), "seconds_cached": statistics.median(cached_t),
           "time_ratio": statistics.median(ratios), "ratios": ratios, "identical": identical}
    print(f"{name:18s} steps={steps:5d} calls {row['calls_plain']:5d} -> {row['calls_cached']:4d}  "
          f"nfe {row['nfe_plain']:7.1f} -> {row['nfe_cached']:6.1f}  time ratio {row['time_ratio']:.2f}  "
          f"identical={identical}", flush=True)
    return row


def markdown(rows: list[dict], args: argparse.Namespace, net_ms: float) -> str:
    lines = [f"# Prediction caching, masking, batch {args.batch}, {args.sites} sites, {args.states} states "
             f"(median of {args.repeats})", "",
             f"Network: fixed random embedding({args.hidden}) -> GELU -> linear (~{net_ms:.1f} ms per full-batch "
             "call here). calls = batched network calls; NFE = rows evaluated / batch. time ratio = cached / "
             "uncached wall time, per run side by side, then the median. identical = same seed gives the same "
             "samples with and without the cache (every repeat).", "",
             "| sampler | steps | calls (no cache) | calls (cache) | NFE (no cache) | NFE (cache) | "
             "time cached / uncached | identical |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['calls_plain']} | {r['calls_cached']} | "
                     f"{r['nfe_plain']:.1f} | {r['nfe_cached']:.1f} | {r['time_ratio']:.2f} | "
                     f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sites", type=int, default=32)
    p.add_argument("--states", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512, help="width of the fake network")
    p.add_argument("--steps", type=int, nargs="+", default=[64, 128, 256, 1024])
    p.add_argument("--samplers", nargs="+", default=["bridge", "euler", "tau-leaping", "theta-trapezoidal", "maskgit"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: steps 64 128, bridge only, 1 repeat")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.steps, args.samplers, args.repeats = [64, 128], ["bridge"], 1
    torch.set_num_threads(args.threads)
    schedule = build_schedule("log-linear")
    process = MaskingProcess(args.states)
    network = FakeNetwork(process.num_values, args.states, args.hidden)
    denoiser = FakeDenoiser(network, process)
    x = torch.full((args.batch, args.sites), process.mask_index)
    with torch.no_grad():
        network(x)
        start = time.perf_counter()
        for _ in range(20):
            network(x)
    net_ms = 1e3 * (time.perf_counter() - start) / 20
    start = time.perf_counter()
    rows = [measure(name, steps, args, process, denoiser, schedule) for name in args.samplers for steps in args.steps]
    text = markdown(rows, args, net_ms)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (out / f"sampler_caching{suffix}.md").write_text(text + "\n")
    payload = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
               "date": datetime.now(timezone.utc).isoformat(), "platform": platform.platform(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args),
               "seconds": time.perf_counter() - start, "network_ms_per_call": net_ms, "rows": rows}
    (out / f"sampler_caching{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
