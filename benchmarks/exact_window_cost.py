"""Cost and tightness of the exact-window sampler's rate bound at every noise level (issue 10, items 1-2).

On banded K = 32 normalised (c sigma ~ 1900 at the log-linear schedule's start, lam = -9.2) and on two asymmetric
generators (birth-death 2 / 0.5, Ehrenfest; K = 6), it prints, per window of 0.5 in lam:
the bound, the exact worst-case rate over the window (max over a 41-point lam grid and over predictions sure of one
x0, which attain the maximum), and their ratio; then runs `exact-window` with the exact oracle of a random table
(D = 1) to lam_stop and reports network evaluations per site, capped (`--cap`) so that a run that never ends stops.

    python benchmarks/exact_window_cost.py                 # prints Markdown tables, writes results/exact_window_cost.md
    python benchmarks/exact_window_cost.py --lam-stop 10 --cap 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from discrete_diffusion.oracle import OracleDenoiser
from discrete_diffusion.processes import MatrixProcess, Prediction
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

CASES = {
    "banded K=32 normalised": lambda: MatrixProcess(32, "banded", normalize=True),
    "birth-death 2/0.5 K=6": lambda: MatrixProcess(6, "birth-death", rates_options={"birth": 2.0, "death": 0.5}),
    "ehrenfest K=6": lambda: MatrixProcess(6, "ehrenfest"),
}


class _Capped(Exception):
    pass


class CountingDenoiser:
    """Counts rows evaluated and raises _Capped past ``cap`` rows."""

    def __init__(self, inner, cap: int) -> None:
        self.inner, self.cap, self.rows, self.calls = inner, cap, 0, 0

    def __call__(self, xt, lam):
        self.rows += xt.shape[0]
        self.calls += 1
        if self.rows > self.cap:
            raise _Capped()
        return self.inner(xt, lam)


def worst_rate(proc: MatrixProcess, lam_from: float, lam_to: float, points: int = 41) -> tuple[float, float]:
    """(max over x_t, lam grid and sure predictions of the one-site rate, the bound's max over x_t)."""
    k, m = proc.num_states, proc.num_values
    xt = torch.arange(m)[:, None]                                                    # every state, one site
    lo = torch.full((m,), lam_from, dtype=torch.float64)
    bound = proc.reverse_rate_window_bound(xt, lo, lo + (lam_to - lam_from))
    best = torch.zeros(m, dtype=torch.float64)
    for lam in torch.linspace(lam_from, lam_to, points, dtype=torch.float64):
        for x0 in range(k):
            logits = torch.full((m, 1, k), -80.0, dtype=torch.float64)
            logits[..., x0] = 0.0
            rate = proc.reverse_rates(xt, Prediction(x0_log_probs=torch.log_softmax(logits, -1)),
                                      torch.full((m,), float(lam), dtype=torch.float64)).reshape(m, -1).sum(1)
            best = torch.maximum(best, rate)
    return float(best.max()), float(bound.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lam-stop", type=float, default=-5.0)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--cap", type=int, default=20000, help="stop after this many network rows")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "exact_window_cost.md"))
    args = parser.parse_args()
    lines: list[str] = [f"`python benchmarks/exact_window_cost.py {' '.join(sys.argv[1:])}`".replace(" `", "`"), ""]

    def emit(text: str) -> None:
        print(text)
        lines.append(text)

    schedule = build_schedule("log-linear")
    lam_start = float(torch.logit(torch.tensor(schedule.alpha_min, dtype=torch.float64)))
    emit("| case | window (lam) | worst-case rate | bound | bound / worst |\n|---|---|---|---|---|")
    for name, make in CASES.items():
        proc = make()
        for start in (lam_start, -5.0, -2.0, 0.0, 2.0, 5.0, 9.5):
            worst, bound = worst_rate(proc, start, start + 0.5)
            ratio = bound / worst if worst > 0 else float("nan")
            emit(f"| {name} | [{start:.2f}, {start + 0.5:.2f}] | {worst:.4g} | {bound:.4g} | {ratio:.3g} |")
    emit(f"\nexact-window, oracle of a random table (D = 1), {args.chains} chains, lam_stop {args.lam_stop}, "
          f"cap {args.cap} network rows\n\n| case | network rows per site | batched calls | ended | seconds |\n"
          f"|---|---|---|---|---|")
    for name, make in CASES.items():
        proc = make()
        probs = torch.rand(proc.num_states, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.05
        counter = CountingDenoiser(OracleDenoiser(proc, probs / probs.sum(), 1), args.cap)
        sampler = build_sampler("exact-window", lam_stop=args.lam_stop)
        start = time.time()
        try:
            sampler.sample(proc, counter, schedule, (args.chains, 1), generator=torch.Generator().manual_seed(0))
            ended = "yes"
        except _Capped:
            ended = "no (cap)"
        except (RuntimeError, ValueError) as err:
            ended = f"raised: {err}"
        emit(f"| {name} | {counter.rows / args.chains:.1f} | {counter.calls} | {ended} | {time.time() - start:.1f} |")

    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
