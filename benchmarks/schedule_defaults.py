"""Which sampling grid each process should default to (``process.schedule``), measured on an exact denoiser.

For each process (blackout, masking, uniform, matrix with the D3PM discretised-Gaussian generator) and each
schedule (the Blackout paper's grid, uniform in logit alpha; log-linear; cosine), the exact oracle denoiser of
a random table over K^D configurations (DESIGN.md section 6) drives the bridge sampler for a few steps, and
the total variation between the samples and the table is printed (mean over seeds). The sampling error of
N samples alone (the "floor") is printed too: a grid is good when its TV is close to the floor.

    python benchmarks/schedule_defaults.py            # K=4, D=2, 8 steps, N=20000, 3 seeds (~1 min on a CPU)
"""

from __future__ import annotations

import argparse

import torch

from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle, empirical_distribution, total_variation
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

PROCESSES = {"blackout": {}, "masking": {}, "uniform": {}, "matrix": {"rates": "gaussian"}}
GRIDS = ("blackout", "log-linear", "cosine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=int, default=4)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--num", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    k, d = args.states, args.sites
    probs = torch.rand(k ** d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    probs = probs / probs.sum()
    print(f"K={k}, D={d}, bridge sampler, {args.steps} steps, N={args.num}, mean TV over {args.seeds} seeds")
    print(f"| process | {' | '.join(GRIDS)} | floor |\n|---|{'---|' * (len(GRIDS) + 1)}")
    for name, options in PROCESSES.items():
        process = build_process(name, k, **options)
        oracle = OracleDenoiser(process, probs, d)
        denoiser = SharedLevelOracle(oracle, d)
        floor = sum(total_variation(empirical_distribution(oracle.sample(args.num, torch.Generator().manual_seed(
            100 + s)), k), probs) for s in range(args.seeds)) / args.seeds
        row = []
        for grid in GRIDS:
            schedule = build_schedule(grid, t_end=15.0) if grid == "blackout" else build_schedule(grid)
            sampler = build_sampler("bridge", num_steps=args.steps)
            tv = 0.0
            for s in range(args.seeds):
                x = sampler.sample(process, denoiser, schedule, (args.num, d), torch.Generator().manual_seed(s))
                tv += total_variation(empirical_distribution(x, k), probs) / args.seeds
            row.append(tv)
        print(f"| {name} | {' | '.join(f'{v:.4f}' for v in row)} | {floor:.4f} |", flush=True)


if __name__ == "__main__":
    main()
