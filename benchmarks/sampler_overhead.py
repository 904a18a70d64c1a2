"""Sampler loop overhead: wall time of a sampler run divided by the wall time of its network forwards alone.

Shape: batch 64, 1024 sites, 256 states (masking: 257 input values with MASK; uniform: 256). Two networks
(``--network``):

- ``embedding`` (default): a fixed random ``FakeNetwork`` (embedding of the input value -> GELU -> linear to
  K logits, (B, K, L) like a library backbone's output; it ignores the noise level), deliberately cheap: the
  worst case for the ratio, where the process's own output parameterisation (SUBS's log-softmax over
  16M logits) already costs a large fraction of a network call;
- ``transformer``: the library's ``SequenceTransformer`` (``--dim``, ``--depth``; random weights) on the
  process's input features inside ``NetworkDenoiser``: a realistic, still small, model at this shape.

The denoiser is the network followed by the process's output parameterisation (``prediction_from_output``:
SUBS for masking, the single-site-likelihood boost for uniform), as in ``NetworkDenoiser``.

For every registered sampler that applies (the exact event-driven simulators excepted: they are for tiny
problems) one measurement is: run the sampler for ``--steps`` steps (timed; the denoiser records the inputs it
sees), then time the bare network on exactly those recorded inputs, as many calls as the sampler made. The
ratio of the two (sampler / network) is the loop overhead; the issue's target is <= 1.10. With ``--grid-steps G``
only the first ``--steps`` steps of a G-step grid are timed: a coarse grid (the default, G = steps) moves a large
share of the sites in every step, which is the worst case for the samplers' draws; a fine grid is real use. A
second column
divides by network + parameterisation (the denoiser), which isolates the sampler's own step code. Each
measurement is repeated ``--repeats`` times, the two timings side by side, and the median ratio reported.
Samplers above the target are profiled with cProfile (one extra run) and the top functions by own time saved.

    python benchmarks/sampler_overhead.py                          # cheap network: 20 steps, 3 repeats
    python benchmarks/sampler_overhead.py --network transformer --steps 8 --repeats 1 --no-profile
    python benchmarks/sampler_overhead.py --network transformer --steps 4 --grid-steps 64 --repeats 1
    python benchmarks/sampler_overhead.py --quick                  # smoke run (small shape)

Writes ``sampler_overhead[_transformer][_gridG].md`` / ``.json`` (and ``..._profiles.txt``) to ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from discrete_diffusion.denoiser import NetworkDenoiser, noise_level_input
from discrete_diffusion.nn import SequenceTransformer
from discrete_diffusion.processes import (
    ForwardProcess,
    MaskingProcess,
    Prediction,
    UniformProcess,
)
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.schedules import build_schedule

TARGET = 1.10
SKIP = ("exact", "exact-thinning", "mean-bridge")


class FakeNetwork(nn.Module):
    """Fixed random network: x_t (B, L) long -> logits (B, K, L) float32 (embedding -> GELU -> linear)."""

    def __init__(self, num_values: int, num_states: int, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embed = nn.Embedding(num_values, hidden)
        self.out = nn.Linear(hidden, num_states)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(num_values, hidden, generator=gen))
            self.out.weight.copy_(torch.randn(num_states, hidden, generator=gen) / hidden**0.5)
            self.out.bias.zero_()
        self.requires_grad_(False)

    def forward(self, xt: Tensor) -> Tensor:
        return self.out(torch.nn.functional.gelu(self.embed(xt))).movedim(-1, 1)


class FakeDenoiser:
    """The network followed by the process's output parameterisation (what ``NetworkDenoiser`` does)."""

    def __init__(self, network: FakeNetwork, process: ForwardProcess) -> None:
        self.network, self.process = network, process

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        return self.process.prediction_from_output(self.network(xt), xt, lam, "logits")


class RecordingDenoiser:
    """Records the inputs (x_t, lam) of every call while ``recorded`` is a list."""

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Prediction]) -> None:
        self.denoiser = denoiser
        self.recorded: list[tuple[Tensor, Tensor]] | None = None

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        if self.recorded is not None:
            self.recorded.append((xt, lam))
        return self.denoiser(xt, lam)


def build_model(process: ForwardProcess, args: argparse.Namespace) -> tuple[RecordingDenoiser, Callable]:
    """(denoiser, bare network) for ``--network``: the bare network maps (x_t, lam) to raw logits."""
    if args.network == "embedding":
        network = FakeNetwork(process.num_values, process.num_states, args.hidden)
        return RecordingDenoiser(FakeDenoiser(network, process)), lambda x, lam: network(x)
    torch.manual_seed(args.seed)
    backbone = SequenceTransformer(process.feature_channels, process.num_states, seq_len=(args.sites,), dim=args.dim,
                                   depth=args.depth, heads=args.heads, dropout=0.0).eval().requires_grad_(False)
    with torch.no_grad():   # a trained-looking model: no zero-initialised (identity / constant) layers
        for param in backbone.parameters():
            if param.dim() > 1:
                param.normal_(0.0, param.shape[-1] ** -0.5)
    denoiser = NetworkDenoiser(backbone, process, "logits")
    return (RecordingDenoiser(denoiser),
            lambda x, lam: backbone(process.network_features(x, lam), noise_level_input(lam)))


def build_process(name: str, k: int) -> ForwardProcess:
    return {"masking": MaskingProcess, "uniform": UniformProcess}[name](k)


def applicable(process: ForwardProcess, names: list[str] | None) -> list[str]:
    return [n for n in (sorted(SAMPLERS) if names is None else names)
            if n not in SKIP and SAMPLERS[n].supports(process)]


@torch.no_grad()
def time_calls(function: Callable, inputs: list[tuple[Tensor, Tensor]]) -> float:
    start = time.perf_counter()
    for x, lam in inputs:
        function(x, lam)
    return time.perf_counter() - start


class _StopSampling(Exception):
    pass


def run_sampler(sampler, process, denoiser, schedule, shape, seed: int, steps: int) -> float:
    """Wall time of the sampler's first ``steps`` steps (of its grid of ``sampler.num_steps``)."""
    def stop_after(k: int, _total: int, _x: Tensor) -> None:
        if k == steps and steps < sampler.num_steps:
            raise _StopSampling

    start = time.perf_counter()
    try:
        sampler.sample(process, denoiser, schedule, shape, generator=torch.Generator().manual_seed(seed),
                       callback=stop_after)
    except _StopSampling:
        pass
    return time.perf_counter() - start


def measure(process: ForwardProcess, name: str, args: argparse.Namespace, schedule) -> dict:
    denoiser, network = build_model(process, args)
    shape = (args.batch, args.sites)
    # warm-up (allocator, first-call costs): 2 steps
    build_sampler(name, num_steps=2).sample(process, denoiser, schedule, shape,
                                            generator=torch.Generator().manual_seed(0))
    ratios, ratios_den, t_samp, t_net, t_den, calls = [], [], [], [], [], 0
    for rep in range(args.repeats):
        sampler = build_sampler(name, num_steps=args.grid_steps)
        denoiser.recorded = []
        ts = run_sampler(sampler, process, denoiser, schedule, shape, args.seed + rep, args.steps)
        inputs, denoiser.recorded = denoiser.recorded, None
        calls = sampler.network_calls
        tn = time_calls(network, inputs)
        t_samp.append(ts), t_net.append(tn)
        ratios.append(ts / tn)
        if rep == 0:   # network + parameterisation: once (it costs as much as a sampler run's network share)
            td = time_calls(denoiser, inputs)
            t_den.append(td), ratios_den.append(ts / td)
    row = {"process": process.name, "sampler": name, "steps": args.steps, "grid_steps": args.grid_steps,
           "network_calls": calls,
           "ratio": statistics.median(ratios), "ratio_vs_denoiser": statistics.median(ratios_den),
           "ratio_of_minima": min(t_samp) / min(t_net),
           "ratios": ratios, "ratios_vs_denoiser": ratios_den,
           "sampler_ms_per_call": 1e3 * statistics.median(t_samp) / max(calls, 1),
           "network_ms_per_call": 1e3 * statistics.median(t_net) / max(calls, 1),
           "denoiser_ms_per_call": 1e3 * statistics.median(t_den) / max(calls, 1)}
    print(f"{process.name:8s} {name:18s} calls={calls:3d} ratio={row['ratio']:.2f} "
          f"(min/min {row['ratio_of_minima']:.2f}; vs denoiser {row['ratio_vs_denoiser']:.2f}; "
          f"runs {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    return row


def profile(process: ForwardProcess, name: str, args: argparse.Namespace, schedule, top: int = 14) -> str:
    denoiser, _ = build_model(process, args)
    sampler = build_sampler(name, num_steps=args.grid_steps)
    prof = cProfile.Profile()
    prof.enable()
    run_sampler(sampler, process, denoiser, schedule, (args.batch, args.sites), 1, min(args.steps, 4))
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


def markdown(rows: list[dict], args: argparse.Namespace, hot: dict) -> str:
    net_ms = statistics.median(r["network_ms_per_call"] for r in rows)
    grid = (f"{args.steps} steps" if args.grid_steps == args.steps
            else f"the first {args.steps} steps of a {args.grid_steps}-step grid")
    lines = [f"# Sampler loop overhead (batch {args.batch}, {args.sites} sites, {args.states} states, "
             f"{grid}, median of {args.repeats})", "",
             f"Network: {network_description(args)} (~{net_ms:.0f} ms per call here). ratio = sampler wall time / "
             f"wall time of the bare network on the "
             f"same inputs (same number of calls), measured side by side; target <= {TARGET:.2f}. "
             "'min / min' is the fastest sampler run over the fastest network run (less sensitive to a shared "
             "machine's load). 'vs denoiser' divides by network + the process's output parameterisation instead "
             "(first run only). "
             f"Profiles ({min(args.steps, 4)} steps) of the samplers above the target follow the table.", "",
             "| process | sampler | network calls | ratio (median) | min / min | ratio vs denoiser | runs | "
             "within 1.10 |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['process']} | {r['sampler']} | {r['network_calls']} | {r['ratio']:.2f} | "
                     f"{r['ratio_of_minima']:.2f} | {r['ratio_vs_denoiser']:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | "
                     f"{'yes' if r['ratio'] <= TARGET else 'NO'} |")
    if hot:
        lines += ["", "## What dominates above the target (cProfile, top functions by own time)", ""]
        for key, text in hot.items():
            lines += [f"### {key}", "", "```", *text.splitlines()[:10], "```", ""]
    return "\n".join(lines)


def network_description(args: argparse.Namespace) -> str:
    if args.network == "embedding":
        return f"fixed random embedding({args.hidden}) -> GELU -> linear to {args.states} logits"
    return (f"the library's SequenceTransformer (dim {args.dim}, depth {args.depth}, {args.heads} heads, random "
            f"weights) on the process's input features, inside NetworkDenoiser")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--sites", type=int, default=1024)
    p.add_argument("--states", type=int, default=256)
    p.add_argument("--network", choices=["embedding", "transformer"], default="embedding",
                   help="embedding: a deliberately cheap fake network (worst case for the ratio); transformer: "
                        "the library's SequenceTransformer at --dim / --depth")
    p.add_argument("--hidden", type=int, default=256, help="width of the fake network")
    p.add_argument("--dim", type=int, default=128, help="transformer width")
    p.add_argument("--depth", type=int, default=2, help="transformer blocks")
    p.add_argument("--heads", type=int, default=4, help="transformer heads")
    p.add_argument("--steps", type=int, default=20, help="sampler steps timed")
    p.add_argument("--grid-steps", type=int, default=None,
                   help="the sampler's grid (default --steps): time only the first --steps steps of a finer grid, "
                        "where each step moves fewer sites, as in real use")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--processes", nargs="+", default=["masking", "uniform"])
    p.add_argument("--samplers", nargs="+", default=None, help="default: every sampler that applies")
    p.add_argument("--no-profile", action="store_true", help="skip cProfile of samplers above the target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 8, 128 sites, 4 steps, 1 repeat")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.batch, args.sites, args.steps, args.repeats = 8, 128, 4, 1
    args.grid_steps = args.steps if args.grid_steps is None else args.grid_steps
    if args.grid_steps < args.steps:
        raise SystemExit(f"--grid-steps ({args.grid_steps}) must be >= --steps ({args.steps})")
    torch.set_num_threads(args.threads)
    schedule = build_schedule("log-linear")
    start = time.perf_counter()
    rows, hot = [], {}
    for case in args.processes:
        process = build_process(case, args.states)
        for name in applicable(process, args.samplers):
            rows.append(measure(process, name, args, schedule))
            if rows[-1]["ratio"] > TARGET and not args.no_profile:
                hot[f"{case} / {name}"] = profile(process, name, args, schedule)
            write(rows, hot, args, start)            # after every row: a partial table survives an interrupt
    print(markdown(rows, args, hot))
    return 0


def write(rows: list[dict], hot: dict, args: argparse.Namespace, start: float) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = (("_transformer" if args.network == "transformer" else "")
              + (f"_grid{args.grid_steps}" if args.grid_steps != args.steps else "") + ("_quick" if args.quick else ""))
    text = markdown(rows, args, hot)
    (out / f"sampler_overhead{suffix}.md").write_text(text + "\n")
    (out / f"sampler_overhead{suffix}_profiles.txt").write_text(
        "\n\n".join(f"== {k} ==\n{v}" for k, v in hot.items()) + "\n")
    payload = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
               "date": datetime.now(timezone.utc).isoformat(), "platform": platform.platform(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args),
               "seconds": time.perf_counter() - start, "rows": rows, "profiles": hot}
    (out / f"sampler_overhead{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
