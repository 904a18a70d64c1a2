"""Our masked-diffusion samplers side by side with Meta's ``flow_matching`` library (benchmark-only dependency:
``pip install flow-matching``; it is not a dependency of the package).

The two conventions: ``flow_matching``'s ``MixtureDiscreteProbPath`` with a mask source runs from noise at
t_fm = 0 to data at t_fm = 1 and keeps a site at its source value (MASK) with probability sigma_t = 1 - kappa_t;
``PolynomialConvexScheduler(n=1)`` gives kappa_t = t_fm. Our masking process keeps the data value with
probability alpha(t), t = 1 being noise; with the log-linear schedule alpha(t) = 1 - (1 - eps) t. So the two
paths coincide under t_fm = alpha(t) (kappa = alpha, the masked fraction 1 - kappa = 1 - alpha), checked
numerically below. Both samplers are run on the same grid: ours uniform in t, theirs the image of that grid
(t_fm from alpha(1) = 1e-4 to 1), so step k of both uses the same noise level.

Part 1 (error): the K = 3, D = 3 oracle problem of ``sampler_error.py`` (random table, seed 0), masking with the
log-linear schedule, driven by the SAME exact posterior p(x0 | x_t): ``OracleDenoiser`` (evaluated once per
distinct x_t), handed to ``flow_matching`` as posterior probabilities over x_1 in {0..K} (MASK included, with
probability 0) at time t_fm, i.e. at lam = logit(t_fm). Same number of network calls (NFE 4..64), N = 50k
samples, TV to the exact table for: flow_matching's ``MixtureDiscreteEulerSolver``, our euler, bridge,
tau-leaping, and theta-trapezoidal at half the steps (two calls per step: NFE = 2 (steps - 1) + 1).
Their solver starts from all-MASK; ours from our prior (a fraction alpha(1) = 1e-4 of random values).

Part 2 (speed): batch 64, 1024 sites, 256 states, the fixed random ``FakeNetwork`` of ``sampler_overhead.py``
(ours: followed by the masking SUBS parameterisation; theirs: the same logits turned into the posterior
probabilities flow_matching expects, SUBS included so that unmasked sites stay). Wall time per network call
of each solver, median of ``--repeats`` interleaved runs, and the ratio ours / theirs.

    python benchmarks/sampler_vs_flow_matching.py            # default: N = 50k, NFE 4 8 16 32 64
    python benchmarks/sampler_vs_flow_matching.py --quick    # smoke run

Writes ``sampler_vs_flow_matching.md`` / ``.json`` to ``--out``.
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
import torch.nn.functional as F
from torch import Tensor

from discrete_diffusion.oracle import (
    OracleDenoiser,
    all_configurations,
    configuration_index,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.processes import MaskingProcess, Prediction
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_overhead import FakeDenoiser, FakeNetwork

try:
    from flow_matching.path import MixtureDiscreteProbPath
    from flow_matching.path.scheduler import PolynomialConvexScheduler
    from flow_matching.solver import MixtureDiscreteEulerSolver
    from flow_matching.utils import ModelWrapper
except ImportError:  # pragma: no cover
    raise SystemExit("this benchmark needs Meta's flow_matching: pip install flow-matching")

OURS = ("euler", "bridge", "tau-leaping", "theta-trapezoidal")


class SharedLevelOracle:
    """Exact posterior evaluated once per distinct x_t (all (K + 1)^D) when the batch shares one noise level."""

    def __init__(self, oracle: OracleDenoiser, sites: int) -> None:
        self.oracle = oracle
        self.configs = all_configurations(oracle.process.num_values, sites)
        self.num_values = oracle.process.num_values

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        if not bool((lam == lam[0]).all()):
            return self.oracle(xt, lam)
        pred = self.oracle(self.configs, lam[:1].expand(self.configs.shape[0]))
        return Prediction(pred.x0_log_probs[configuration_index(xt, self.num_values)])


class PosteriorModel(ModelWrapper):
    """flow_matching model: (x_t, t_fm) -> p(x_1 | x_t) over the K + 1 values (MASK gets 0), from our denoiser
    at lam = logit(kappa(t_fm)) = logit(t_fm)."""

    def __init__(self, denoiser, num_states: int) -> None:
        super().__init__(None)
        self.denoiser, self.num_states = denoiser, num_states

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        lam = torch.logit(t.double()).to(torch.get_default_dtype())
        probs = self.denoiser(x, lam).x0_log_probs.exp()
        return torch.cat([probs, torch.zeros_like(probs[..., :1])], dim=-1)


class SubsLogitsModel(ModelWrapper):
    """flow_matching model on the fake network: softmax of its logits at masked sites, a one-hot of x_t at
    unmasked sites (SUBS), MASK column 0: (B, L, K + 1) probabilities."""

    def __init__(self, network: FakeNetwork, num_states: int) -> None:
        super().__init__(None)
        self.network, self.num_states = network, num_states

    def forward(self, x: Tensor, t: Tensor, **extras) -> Tensor:
        probs = torch.softmax(self.network(x).movedim(1, -1), dim=-1)
        probs = torch.cat([probs, torch.zeros_like(probs[..., :1])], dim=-1)
        keep = F.one_hot(x, self.num_states + 1).to(probs.dtype)
        return torch.where((x == self.num_states)[..., None], probs, keep)


def fm_time_grid(schedule, steps: int) -> Tensor:
    """t_fm = alpha(t) on our grid t = 1 - k / steps (float64): the same noise levels as our samplers."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return schedule.alpha(t).clamp(0.0, 1.0)


def check_convention(schedule) -> float:
    """max |P_fm(MASK at t_fm = alpha(t)) - P_ours(MASK at t)| over a grid: should be ~0."""
    path = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.0))
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    t_fm = schedule.alpha(t)
    fm_masked = path.scheduler(t_fm).sigma_t                 # probability of staying at the source (MASK)
    ours_masked = 1.0 - schedule.alpha(t)                    # q_t(MASK | x0) = 1 - alpha
    return float((fm_masked - ours_masked).abs().max())


def fm_sample(model: ModelWrapper, num_states: int, shape: tuple[int, ...], grid: Tensor, seed: int,
              dtype_categorical: torch.dtype = torch.float32) -> Tensor:
    path = MixtureDiscreteProbPath(PolynomialConvexScheduler(n=1.0))
    solver = MixtureDiscreteEulerSolver(model=model, path=path, vocabulary_size=num_states + 1)
    torch.manual_seed(seed)                                  # flow_matching draws from the global generator
    x_init = torch.full(shape, num_states, dtype=torch.long)
    return solver.sample(x_init=x_init, step_size=None, time_grid=grid, dtype_categorical=dtype_categorical)


def error_part(args: argparse.Namespace, schedule) -> list[dict]:
    k, sites = args.states, args.sites
    probs = torch.rand(k**sites, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64) + 0.05
    probs = probs / probs.sum()
    process = MaskingProcess(k)
    oracle = OracleDenoiser(process, probs, sites)
    shared = SharedLevelOracle(oracle, sites)
    floor = total_variation(empirical_distribution(oracle.sample(args.samples, torch.Generator().manual_seed(1)), k),
                            probs)
    rows = [{"solver": "floor (exact draws)", "nfe_target": 0, "steps": 0, "nfe": 0, "tv": floor}]
    model = PosteriorModel(shared, k)
    for nfe in args.nfe:
        grid = fm_time_grid(schedule, nfe)
        calls = {"n": 0}

        def counted(x, t, _m=model, _c=calls):
            _c["n"] += 1
            return _m(x, t)

        counting = ModelWrapper(None)
        counting.forward = counted
        x = fm_sample(counting, k, (args.samples, sites), grid, args.seed + 3, torch.float64)
        rows.append({"solver": "flow_matching MixtureDiscreteEulerSolver", "nfe_target": nfe, "steps": nfe,
                     "nfe": calls["n"], "tv": total_variation(empirical_distribution(x, k), probs)})
        for name in OURS:
            steps = nfe // 2 if name.startswith("theta") else nfe
            sampler = build_sampler(name, num_steps=steps)
            x = sampler.sample(process, shared, schedule, (args.samples, sites),
                               generator=torch.Generator().manual_seed(args.seed + 3))
            rows.append({"solver": f"ours {name}", "nfe_target": nfe, "steps": steps, "nfe": sampler.nfe,
                         "tv": total_variation(empirical_distribution(x, k), probs)})
        for r in rows[-len(OURS) - 1:]:
            print(f"NFE {nfe:3d} {r['solver']:42s} steps={r['steps']:3d} nfe={r['nfe']:5.1f} tv={r['tv']:.4f}",
                  flush=True)
    return rows


def speed_part(args: argparse.Namespace, schedule) -> list[dict]:
    k = args.speed_states
    process = MaskingProcess(k)
    network = FakeNetwork(k + 1, k, args.hidden)
    ours_denoiser = FakeDenoiser(network, process)
    fm_model = SubsLogitsModel(network, k)
    shape = (args.speed_batch, args.speed_sites)
    steps = args.speed_steps
    grid = fm_time_grid(schedule, steps)
    variants = {"flow_matching (float32 categorical, its default)": None,
                "flow_matching (float64 categorical)": None, **{f"ours {n}": n for n in OURS}}
    times: dict[str, list[float]] = {v: [] for v in variants}
    calls: dict[str, int] = {}
    net_times: list[float] = []
    # warm-up
    fm_sample(fm_model, k, shape, fm_time_grid(schedule, 2), 0)
    build_sampler("euler", num_steps=2).sample(process, ours_denoiser, schedule, shape)
    for rep in range(args.repeats):
        x = torch.full(shape, k, dtype=torch.long)
        start = time.perf_counter()
        for _ in range(steps):
            network(x)
        net_times.append((time.perf_counter() - start) / steps)
        for label, name in variants.items():
            start = time.perf_counter()
            if name is None:
                dtype = torch.float64 if "float64" in label else torch.float32
                fm_sample(fm_model, k, shape, grid, rep, dtype)
                calls[label] = steps
            else:
                n_steps = steps // 2 if name.startswith("theta") else steps
                sampler = build_sampler(name, num_steps=n_steps)
                sampler.sample(process, ours_denoiser, schedule, shape, generator=torch.Generator().manual_seed(rep))
                calls[label] = sampler.network_calls
            times[label].append((time.perf_counter() - start) / calls[label])
        print(f"speed repeat {rep + 1}: " + ", ".join(f"{lbl.split(' (')[0] if lbl.startswith('flow') else lbl} "
                                                    f"{1e3 * v[-1]:.0f} ms" for lbl, v in times.items()), flush=True)
    base = "flow_matching (float32 categorical, its default)"
    rows = []
    for label in variants:
        ratios = [a / b for a, b in zip(times[label], times[base])]
        rows.append({"solver": label, "network_calls": calls[label],
                     "ms_per_call": 1e3 * statistics.median(times[label]),
                     "ratio_vs_flow_matching": statistics.median(ratios), "ratios": ratios,
                     "ratio_vs_network": statistics.median(a / b for a, b in zip(times[label], net_times))})
    rows.append({"solver": "network forward alone", "network_calls": steps,
                 "ms_per_call": 1e3 * statistics.median(net_times),
                 "ratio_vs_flow_matching": statistics.median(a / b for a, b in zip(net_times, times[base])),
                 "ratios": [], "ratio_vs_network": 1.0})
    return rows


def markdown(err: list[dict], speed: list[dict], args: argparse.Namespace, convention_gap: float) -> str:
    lines = ["# Our samplers vs flow_matching's MixtureDiscreteEulerSolver (masking, log-linear schedule)", "",
             f"Convention check: flow_matching's P(MASK) = 1 - kappa(t_fm) with PolynomialConvexScheduler(n=1) "
             f"at t_fm = alpha(t) vs our 1 - alpha(t): max gap {convention_gap:.1e}. Both solvers use the same "
             "noise levels at every step and the same exact posterior p(x0 | x_t).", "",
             f"## TV to the exact table (K = {args.states}, D = {args.sites}, N = {args.samples}, same NFE)", "",
             f"Monte-Carlo floor (N exact draws): TV = {err[0]['tv']:.4f}. theta-trapezoidal runs NFE/2 steps "
             "(2 calls per step, 1 on the final denoising step). flow_matching's categorical draws in float64 here.",
             "", "| NFE | flow_matching Euler | ours euler | ours bridge | ours tau-leaping | ours theta-trapezoidal |",
             "|---:|---:|---:|---:|---:|---:|"]
    for nfe in args.nfe:
        cells = {r["solver"]: r for r in err if r["nfe_target"] == nfe}
        vals = [cells["flow_matching MixtureDiscreteEulerSolver"]] + [cells[f"ours {n}"] for n in OURS]
        text = [f"{v['tv']:.4f}" for v in vals[:-1]] + [f"{vals[-1]['tv']:.4f} (NFE {vals[-1]['nfe']:.0f})"]
        lines.append(f"| {nfe} | " + " | ".join(text) + " |")
    lines += ["", f"## Wall time per network call (batch {args.speed_batch}, {args.speed_sites} sites, "
              f"{args.speed_states} states, {args.speed_steps} steps, median of {args.repeats} interleaved runs)", "",
              f"Network: fixed random embedding({args.hidden}) -> GELU -> linear to {args.speed_states} logits. "
              "Ratios are taken per run, side by side, then the median.", "",
              "| solver | network calls | ms per call | ours / flow_matching | / network alone |",
              "|---|---:|---:|---:|---:|"]
    for r in speed:
        lines.append(f"| {r['solver']} | {r['network_calls']} | {r['ms_per_call']:.0f} | "
                     f"{r['ratio_vs_flow_matching']:.2f} | {r['ratio_vs_network']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--states", type=int, default=3)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed-batch", type=int, default=64)
    p.add_argument("--speed-sites", type=int, default=1024)
    p.add_argument("--speed-states", type=int, default=256)
    p.add_argument("--speed-steps", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: NFE 4 16, 5k samples, small speed shape")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.nfe, args.samples = [4, 16], 5000
        args.speed_batch, args.speed_sites, args.speed_steps, args.repeats = 8, 128, 4, 1
    torch.set_num_threads(args.threads)
    schedule = build_schedule("log-linear")
    start = time.perf_counter()
    gap = check_convention(schedule)
    print(f"convention gap {gap:.1e}", flush=True)
    err = error_part(args, schedule)
    speed = [] if args.skip_speed else speed_part(args, schedule)
    text = markdown(err, speed, args, gap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (out / f"sampler_vs_flow_matching{suffix}.md").write_text(text + "\n")
    import flow_matching
    payload = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
               "date": datetime.now(timezone.utc).isoformat(), "platform": platform.platform(),
               "torch": torch.__version__, "flow_matching": getattr(flow_matching, "__version__", "?"),
               "threads": torch.get_num_threads(), "args": vars(args), "seconds": time.perf_counter() - start,
               "convention_gap": gap, "error_rows": err, "speed_rows": speed}
    (out / f"sampler_vs_flow_matching{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
