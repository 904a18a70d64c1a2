"""Blackout classifier-free guidance at gamma outside {0, 1}: which samplers follow the guided chain's exact law.

The guided reverse chain of Blackout has birth rates sigmoid(lam) * m_gamma per site and unit lam, with the guided
mean m_gamma = m_c^gamma m_u^(1 - gamma) (guidance/classifier_free.py). Its exact law is computed here by
integrating the master equation dp/dlam = p Q(lam) over the whole state space ((N + 1)^D = 9 states for K = 3, D =
2) with a fourth-order Magnus integrator (exponentials of the generator, stable at any step) from the prior at lam =
-15 (the samplers' first grid point) to lam = 15 (their last finite one; the final noise-removal draw moves less
than 1e-6 there); halving the step changes the law by the printed amount. The denoiser is the exact
class-conditional oracle of a random joint table pi(x, c) with 3 classes (tests/test_guidance.py's ``joint_table``,
seed 0), guided towards class 2.

Printed per (gamma, sampler, steps, seed): TV of n samples to the exact guided law, beside the Monte-Carlo floor
(mean TV of n exact draws, 4 repeats). The guided mean can exceed N - x_t (the largest value the exact samplers'
thinning bound and the mean bridge's room allow): the table also prints the largest ratio m_gamma / (N - x_t) over
the states and levels visited by the integration. Exact simulation ("exact") is refused at gamma outside {0, 1}
(run under an older build, it printed its capped result).

    python benchmarks/blackout_guidance_exactness.py [--samples 20000] [--steps 256,1024] [--seeds 1,2]

Writes benchmarks/results/blackout_guidance_exactness[_TAG].json (and .md). Euler is tau-leaping on Blackout (a
count site's leap fires every birth due, whatever the rule: the same draws), so it is not run separately.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from discrete_diffusion.guidance import ClassifierFreeDenoiser
from discrete_diffusion.oracle import (
    ConditionalOracle,
    all_configurations,
    configuration_index,
    total_variation,
)
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

K, D, C, LABEL = 3, 2, 3, 2
LAM_START, LAM_END = -15.0, 15.0
GAUSS = (0.5 - 3 ** 0.5 / 6, 0.5 + 3 ** 0.5 / 6)
SAMPLERS = ("exact", "tau-leaping", "euler", "theta-trapezoidal", "mean-bridge")


def joint_table() -> torch.Tensor:
    """tests/test_guidance.py's joint_table(process, seed=0): a random pi(x, c) with full support."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(K ** D, C, generator=g, dtype=torch.float64) ** 3 + 1e-3


def exact_guided_law(process, denoiser, steps: int) -> tuple[torch.Tensor, float]:
    """The law at LAM_END of the guided chain from the prior at LAM_START (RK4 with ``steps`` steps) over
    all_configurations(K, D), and the largest m_gamma / (N - x_t) seen. (K^D,) float64."""
    states = all_configurations(K, D)
    n = states.shape[0]
    nodes = torch.linspace(LAM_START, LAM_END, 2 * steps + 1, dtype=torch.float64)
    xt = states.repeat(nodes.shape[0], 1)
    lam = nodes.repeat_interleave(n)
    prediction = denoiser(xt, lam)
    rates = process.reverse_rates(xt, prediction, lam).reshape(nodes.shape[0], n, D, K)      # into value v at site d
    room = (K - 1 - xt).double()
    ratio = float((prediction.mean_missing.double() / room.clamp_min(1e-300))[room > 0].max())
    q = torch.zeros(nodes.shape[0], n, n, dtype=torch.float64)
    for d in range(D):
        for v in range(K):
            target = states.clone()
            target[:, d] = v
            j = configuration_index(target, K)
            moves = states[:, d] != v
            q[:, torch.arange(n)[moves], j[moves]] += rates[:, moves, d, v]
    q -= torch.diag_embed(q.sum(-1))
    prior = process.log_marginal_matrix(torch.tensor([LAM_START], dtype=torch.float64))[0].exp()[K - 1]  # Bin(N, a)
    p = prior[states].prod(1)
    h = (LAM_END - LAM_START) / steps
    # fourth-order commutator-free Magnus step (Blanes & Moan 2006) with Gauss nodes from the Simpson samples:
    # exponentials keep p a probability vector for any h, as the guided rates reach ~1000 per unit lam at gamma 4
    for k in range(steps):
        a, b, c = q[2 * k], q[2 * k + 1], q[2 * k + 2]
        q1, q2 = (a + tau * (4 * b - 3 * a - c) + tau ** 2 * (2 * a - 4 * b + 2 * c) for tau in GAUSS)
        c1, c2 = 0.25 + 3 ** 0.5 / 6, 0.25 - 3 ** 0.5 / 6
        p = p @ torch.linalg.matrix_exp(h * (c1 * q1 + c2 * q2)) @ torch.linalg.matrix_exp(h * (c2 * q1 + c1 * q2))
    p = p.clamp_min(0.0)                  # round-off: a few unreachable states at -1e-18
    return p / p.sum(), ratio


def floor(target: torch.Tensor, n: int, repeats: int = 4) -> float:
    g = torch.Generator().manual_seed(99)
    tvs = []
    for _ in range(repeats):
        draws = torch.multinomial(target, n, True, generator=g)
        tvs.append(total_variation(torch.bincount(draws, minlength=target.numel()).double() / n, target))
    return sum(tvs) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--steps", default="256,1024", help="grid steps of the grid samplers (comma list)")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--gammas", default="1,2,4")
    parser.add_argument("--ode-steps", type=int, default=2000)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--tag", default="", help="suffix of the results files (a partial run)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    process = build_process("blackout", K)
    schedule = build_schedule("blackout")
    oracle = ConditionalOracle(process, joint_table(), D)
    rows = []
    for gamma in [float(g) for g in args.gammas.split(",")]:
        denoiser = ClassifierFreeDenoiser(oracle, LABEL, gamma)
        law, ratio = exact_guided_law(process, denoiser, args.ode_steps)
        half, _ = exact_guided_law(process, denoiser, args.ode_steps // 2)
        ode_error = total_variation(law, half)
        mc_floor = floor(law, args.samples)
        print(f"gamma {gamma:g}: max m_gamma / (N - x_t) = {ratio:.3f}; ODE step halving moves the law by TV "
              f"{ode_error:.1e}; floor {mc_floor:.4f}", flush=True)
        runs = [(name, steps) for name in args.samplers.split(",") for steps in ([1] if name == "exact" else
                                                                  [int(s) for s in args.steps.split(",")])]
        for name, steps in runs:
            for seed in [int(s) for s in args.seeds.split(",")]:
                sampler = build_sampler(name, num_steps=steps)
                start = time.perf_counter()
                try:
                    x = sampler.sample(process, denoiser, schedule, (args.samples, D),
                                       torch.Generator().manual_seed(seed))
                    empirical = torch.bincount(configuration_index(x, K), minlength=K ** D).double() / args.samples
                    tv, note = total_variation(empirical, law), ""
                except ValueError as err:
                    tv, note = None, f"refused: {err}"
                row = {"gamma": gamma, "sampler": name, "steps": None if name == "exact" else steps,
                       "seed": seed, "tv": tv, "floor": mc_floor, "max_mean_over_room": ratio,
                       "ode_step_halving_tv": ode_error, "seconds": time.perf_counter() - start, "note": note}
                rows.append(row)
                shown = "-" if tv is None else f"{tv:.4f}"
                print(f"| {gamma:g} | {name} | {row['steps'] or '-'} | {seed} | {shown} | {mc_floor:.4f} | "
                      f"{ratio:.3f} | {note or ''} |", flush=True)
                if name == "exact":
                    break
    lines = ["| gamma | sampler | steps | seed | TV to the guided chain's exact law | MC floor | "
             "max m_gamma / (N - x_t) | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shown = "-" if r["tv"] is None else f"{r['tv']:.4f}"
        lines.append(f"| {r['gamma']:g} | {r['sampler']} | {r['steps'] or '-'} | {r['seed']} | {shown} | "
                     f"{r['floor']:.4f} | {r['max_mean_over_room']:.3f} | {r['note']} |")
    text = "\n".join(lines)
    print("\n" + text)
    command = "python benchmarks/blackout_guidance_exactness.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from discrete_diffusion.runs.atomic_io import atomic_write_text
    name = "blackout_guidance_exactness" + (f"_{args.tag}" if args.tag else "")
    atomic_write_text(out / f"{name}.json",
                      json.dumps({"command": command.strip(), "samples": args.samples, "rows": rows}, indent=1) + "\n")
    atomic_write_text(out / f"{name}.md", f"`{command.strip()}`\n\n{text}\n")


if __name__ == "__main__":
    main()
