"""Sampler speed on a trained Blackout run, and sampler convergence to an exact table on an oracle problem.

Part 1 (speed): for every sampler of ``discrete_diffusion.samplers.SAMPLERS`` that applies to the run's
process (the exact simulator excepted: it is for tiny problems, see part 2) and several step counts, draw
one batch (default 256) and report samples per second, milliseconds per step, and the loop overhead: the
sampler's wall time divided by the time spent inside the backbone network's forward calls of that same
run (measured by a timing wrapper around the backbone, so both numbers come from the same calls under the
same machine load). The share spent in the process's input features / output parameterisation (inside the
denoiser but outside the backbone) is reported too.

Part 2 (convergence): Blackout with K = 4 states, D = 2 sites and a random probability table (Dirichlet(1),
16 cells), driven by the exact enumeration denoiser ``discrete_diffusion.oracle.OracleDenoiser``. Total
variation between the empirical distribution of N samples (default 20k) and the table, against the number
of steps, for the bridge, mean-bridge and tau-leaping samplers; the exact simulator (no time
discretisation) and the Monte-Carlo floor (TV of N exact i.i.d. draws from the table) for reference.

Prints Markdown tables and writes them, plus a JSON with raw numbers and the command, to ``--out``.

    python benchmarks/sampler_speed.py --run-dir RUN_DIR          # a run written by `ddiff train`
    python benchmarks/sampler_speed.py                            # trains a short run first (--train-steps)
    python benchmarks/sampler_speed.py --quick                    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

from discrete_diffusion.config import load_config, to_dict
from discrete_diffusion.oracle import (
    OracleDenoiser,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.pipeline import load_run
from discrete_diffusion.processes import BlackoutProcess
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.schedules import build_schedule
from discrete_diffusion.train.trainer import Trainer

ORACLE_SAMPLERS = ("bridge", "mean-bridge", "tau-leaping")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run-dir", default=None, help="trained run directory; default: train one into "
                                                     "OUT/runs/sampler_speed_<N>steps (reused if complete)")
    p.add_argument("--train-steps", type=int, default=300, help="training steps when no --run-dir is given")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000], help="sampler step counts (speed)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (speed)")
    p.add_argument("--oracle-steps", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100, 200, 1000],
                   help="sampler step counts (oracle convergence)")
    p.add_argument("--oracle-samplers", nargs="+", default=None,
                   help="fixed-grid samplers for the oracle table (default: bridge, mean-bridge, tau-leaping, then "
                        "every other registered sampler that runs on Blackout; the exact simulator is always added)")
    p.add_argument("--oracle-samples", type=int, default=20000, help="samples per oracle measurement")
    p.add_argument("--oracle-states", type=int, default=4, help="K of the oracle problem")
    p.add_argument("--oracle-sites", type=int, default=2, help="D of the oracle problem")
    p.add_argument("--seed", type=int, default=0, help="seed of samplers, oracle table and training")
    p.add_argument("--skip-speed", action="store_true", help="only the oracle part")
    p.add_argument("--skip-oracle", action="store_true", help="only the speed part")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, small batches")
    p.add_argument("--render", default=None, metavar="JSON", help="only reprint the tables of a saved result JSON")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.train_steps, args.steps, args.batch_size = 5, [2, 5], 16
        args.oracle_steps, args.oracle_samples = [2, 20], 2000
    if min(args.steps + args.oracle_steps) < 1 or args.batch_size < 1 or args.oracle_samples < 2:
        p.error("step counts and --batch-size must be >= 1, --oracle-samples >= 2")
    return args


# ----- timing wrappers -----------------------------------------------------------------------------------------
class TimedModule(nn.Module):
    """Wraps a module and accumulates the wall time and count of its forward calls."""

    def __init__(self, inner: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def forward(self, *inputs):
        sync(self.device)
        start = time.perf_counter()
        out = self.inner(*inputs)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class TimedDenoiser:
    """Wraps a denoiser callable; accumulates the time of each call (features + backbone + parameterisation)."""

    def __init__(self, inner, device: torch.device) -> None:
        self.inner = inner
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, xt: Tensor, lam: Tensor):
        sync(self.device)
        start = time.perf_counter()
        out = self.inner(xt, lam)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- part 1: speed ----------------------------------------------------------------------------------------------
def ensure_run(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    run_dir = Path(args.out) / "runs" / f"sampler_speed_{args.train_steps}steps_seed{args.seed}"
    if (run_dir / "best").is_dir() and any((run_dir / "best").glob("*.safetensors")):
        print(f"[speed] reusing {run_dir}", file=sys.stderr)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"train.steps={args.train_steps}", f"train.eval_every={args.train_steps}", f"train.seed={args.seed}",
                 f"train.sample_every={args.train_steps + 1}", f"train.checkpoint_every={args.train_steps}",
                 f"train.device={args.device}", "train.eval_t_samples=1"]
    print(f"[speed] training {run_dir} ({args.train_steps} steps)", file=sys.stderr, flush=True)
    Trainer(load_config(None, overrides), run_dir, progress=False).fit()
    return run_dir


def applicable(name: str, process, denoiser, schedule, shape: tuple[int, ...],
               device: torch.device | str = "cpu") -> str | None:
    """None if sampler ``name`` runs on ``process`` (a 1-step draw of ``shape``), else the reason it does not."""
    try:
        build_sampler(name, num_steps=1).sample(process, denoiser, schedule, shape, torch.Generator(device=device),
                                                device)
    except ValueError as err:
        return str(err)
    return None


def runs_on(name: str, process, denoiser, schedule, shape: tuple[int, ...]) -> bool:
    return applicable(name, process, denoiser, schedule, shape) is None


def speed_benchmark(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], dict]:
    run_dir = ensure_run(args)
    run = load_run(run_dir, "best", str(device))
    backbone = TimedModule(run.denoiser.backbone, device)
    run.denoiser.backbone = backbone
    denoiser = TimedDenoiser(run.denoiser, device)
    shape = (args.batch_size, *run.dataset.site_shape)
    info = {"run_dir": str(run_dir), "checkpoint": str(run.checkpoint), "process": run.process.name,
            "parameterization": run.config.process.parameterization, "batch_size": args.batch_size,
            "params": sum(p.numel() for p in run.denoiser.parameters()), "skipped": {}}
    # warm-up: allocator, kernels, lazy init
    with torch.no_grad():
        x = torch.zeros(shape, dtype=torch.long, device=device)
        for _ in range(3):
            run.denoiser(x, torch.zeros(args.batch_size, device=device))
    names = []
    for name in SAMPLERS:
        if name == "exact":
            info["skipped"][name] = "exact simulation is for tiny problems: see the oracle table"
            continue
        reason = applicable(name, run.process, run.denoiser, run.schedule, (2, *run.dataset.site_shape), device)
        if reason is not None:
            info["skipped"][name] = reason
        else:
            names.append(name)
    rows = []
    for steps in args.steps:
        for name in names:
            sampler = build_sampler(name, num_steps=steps)
            for timer in (backbone, denoiser):
                timer.seconds, timer.calls = 0.0, 0
            generator = torch.Generator(device=device).manual_seed(args.seed)
            sync(device)
            start = time.perf_counter()
            samples = sampler.sample(run.process, denoiser, run.schedule, shape, generator, device)
            sync(device)
            wall = time.perf_counter() - start
            row = {"sampler": name, "steps": steps, "wall_s": wall, "samples_per_s": args.batch_size / wall,
                   "ms_per_step": 1000 * wall / steps, "network_calls": backbone.calls,
                   "backbone_s": backbone.seconds, "denoiser_s": denoiser.seconds,
                   "backbone_ms_per_call": 1000 * backbone.seconds / max(backbone.calls, 1),
                   "wall_over_backbone": wall / backbone.seconds if backbone.seconds else float("nan"),
                   "parameterisation_share": (denoiser.seconds - backbone.seconds) / wall,
                   "sampler_math_share": (wall - denoiser.seconds) / wall,
                   "mean_intensity": float(samples.float().mean())}
            rows.append(row)
            print(f"[speed] {name} {steps} steps: {wall:.1f} s, x{row['wall_over_backbone']:.3f} of backbone",
                  file=sys.stderr, flush=True)
    return rows, info


def speed_table(rows: list[dict]) -> str:
    lines = [("| sampler | steps | network calls | wall s | samples/s | ms/step | backbone ms/call | wall / backbone | "
              "features+param. share | sampler math share |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['network_calls']} | {r['wall_s']:.1f} | "
                     f"{r['samples_per_s']:.1f} "
                     f"| {r['ms_per_step']:.1f} | {r['backbone_ms_per_call']:.1f} | {r['wall_over_backbone']:.3f} "
                     f"| {100 * r['parameterisation_share']:.1f}% | {100 * r['sampler_math_share']:.1f}% |")
    return "\n".join(lines) + "\n"


# ----- part 2: oracle convergence --------------------------------------------------------------------------------
def oracle_benchmark(args: argparse.Namespace) -> tuple[list[dict], dict]:
    k, d, n = args.oracle_states, args.oracle_sites, args.oracle_samples
    process = BlackoutProcess(num_states=k)
    schedule = build_schedule("blackout", t_end=15.0)
    table_gen = torch.Generator().manual_seed(args.seed)
    table = -torch.log(torch.rand(k ** d, dtype=torch.float64, generator=table_gen))   # Dirichlet(1) via
    table = table / table.sum()                                                          # normalised Exp(1)
    oracle = OracleDenoiser(process, table, d)
    floors = [total_variation(empirical_distribution(
                  oracle.sample(n, torch.Generator().manual_seed(args.seed + 100 + i)), k), table)
              for i in range(5)]
    info = {"num_states": k, "num_sites": d, "samples": n, "table": table.tolist(), "schedule": "blackout t_end=15",
            "monte_carlo_floor_tv": statistics.mean(floors), "monte_carlo_floor_tv_runs": floors}
    names = args.oracle_samplers
    if names is None:
        names = list(ORACLE_SAMPLERS) + [name for name in SAMPLERS if name not in ORACLE_SAMPLERS
                                         and not name.startswith("exact")
                                         and runs_on(name, process, oracle, schedule, (2, d))]
    rows = []
    for name in (*names, "exact"):
        for steps in (args.oracle_steps if name != "exact" else [None]):
            sampler = build_sampler(name, **({} if steps is None else {"num_steps": steps}))
            generator = torch.Generator().manual_seed(args.seed + 1)
            start = time.perf_counter()
            samples = sampler.sample(process, oracle, schedule, (n, d), generator)
            wall = time.perf_counter() - start
            tv = total_variation(empirical_distribution(samples, k), table)
            rows.append({"sampler": name, "steps": steps, "tv": tv, "wall_s": wall})
            print(f"[oracle] {name} {steps}: TV {tv:.4f} ({wall:.1f} s)", file=sys.stderr, flush=True)
    return rows, info


def oracle_table(rows: list[dict], info: dict) -> str:
    steps = sorted({r["steps"] for r in rows if r["steps"] is not None})
    names = list(dict.fromkeys(r["sampler"] for r in rows if r["sampler"] != "exact"))
    tv = {(r["sampler"], r["steps"]): r["tv"] for r in rows}
    lines = ["| steps | " + " | ".join(f"{s} TV" for s in names) + " |", "|---|" + "---|" * len(names)]
    for st in steps:
        lines.append(f"| {st} | " + " | ".join(f"{tv[(s, st)]:.4f}" for s in names) + " |")
    exact = tv.get(("exact", None))
    if exact is not None:
        lines.append("| exact simulation (no grid) | " + " | ".join([f"{exact:.4f}"] * len(names)) + " |")
    floor = info["monte_carlo_floor_tv"]
    lines.append("| i.i.d. draws from the table (MC floor) | " + " | ".join([f"{floor:.4f}"] * len(names)) + " |")
    return "\n".join(lines) + "\n"


def render(payload: dict) -> str:
    """The Markdown tables of a result payload (also used by --render to reprint a saved JSON)."""
    text = ""
    if "speed" in payload:
        info = payload["speed"]
        skipped = "; ".join(f"{k}: {v}" for k, v in info["skipped"].items())
        text += (f"Sampler speed, digits Blackout run `{info['run_dir']}` ({info['params'] / 1e6:.2f}M params, "
                 f"{info['parameterization']} parameterisation), batch {info['batch_size']}; {payload['date']}; "
                 f"{payload['machine']}. Skipped: {skipped or 'none'}.\n\n" + speed_table(info["rows"]) + "\n")
    if "oracle" in payload:
        info = payload["oracle"]
        text += (f"Oracle convergence: Blackout, K={info['num_states']}, D={info['num_sites']}, random Dirichlet(1) "
                 f"table, exact denoiser, blackout schedule (t_end 15), {info['samples']} samples per cell; "
                 f"total variation to the table.\n\n" + oracle_table(info["rows"], info))
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    out = Path(args.out)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.machine()} CPU x{os.cpu_count()}, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, device {device}")
    started = time.time()
    payload: dict = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "args": vars(args),
                     "date": stamp, "machine": machine}
    if not args.skip_speed:
        rows, info = speed_benchmark(args, device)
        payload["speed"] = {"rows": rows, **info}
        payload["speed"]["run_config"] = to_dict(load_config(Path(info["run_dir"]) / "config.yaml"))
    if not args.skip_oracle:
        rows, info = oracle_benchmark(args)
        payload["oracle"] = {"rows": rows, **info}
    payload["total_seconds"] = time.time() - started
    text = render(payload)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    stem = "sampler_speed_quick" if args.quick else "sampler_speed"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
