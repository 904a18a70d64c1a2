"""Split Gibbs (SGDD) on the exact oracle: total variation to the exact posterior against cost.

The prior is the correlated table of tests/test_split_gibbs.py (K = 4 values, D = 3 sites, pi ∝ u^3), exact by
enumeration; the posterior p(x0 | y) ∝ pi(x0) p(y | x0) is enumerated too. Operators: a per-site noisy channel (flip
0.3, y = (1, 2, 3); factorises, so the likelihood step is the exact per-site kernel); a noisy sum mod 4 (flip 0.05,
y = 1) written as a plain operator ("summod": couples the sites and names no structure, so the likelihood step is
Metropolis-Hastings, with one-site ("site") or whole-z ("independent") proposals from K_t(. | x0)); the same law
through the library's ``ParityOperator`` ("parity", one group of all three sites, flip 0.05) and the hard block sum
``DownsampleOperator`` ("downsample", block 3, y = 4), whose likelihood step is exact by forward filtering /
backward sampling over the partial sums (posterior/group_likelihood.py). Rows marked "fixed t" run every iteration
at t = 0.6 and compare with that level's smoothed law p(x0) sum_z K(z | x0) L(z), which an exact likelihood and
prior step reach at the Monte-Carlo floor. For each process (default uniform and blackout), levels annealed
geometrically from t_max = 0.9 to t_min on the log-linear schedule, one chain per sample, prints per run:

- iterations, MH steps per iteration, the prior step (the exact enumerated p(x0 | x_t), or the library's bridge
  sampler from x_t with the oracle denoiser) and its cost per chain (prior-step calls for the exact step, network
  evaluations for the sampler), log-likelihood evaluations per chain (MH), MH acceptance;
- TV to the posterior, beside the Monte-Carlo floor (mean TV of as many exact posterior draws) and the bias left at
  t_min (TV between the chain's fixed-t_min law p(x0) sum_z K(z | x0) L(z) and the posterior): what infinitely
  many iterations would approach.

    python benchmarks/split_gibbs_oracle.py [--samples 10000] [--seed 1] [--quick] [--operators channel,summod]
        [--tag NAME]

Writes benchmarks/results/split_gibbs_oracle[_NAME].json (and .md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_split_gibbs import (  # noqa: E402  (the tests' table, operators and enumerations)
    CHANNEL,
    PROCESSES,
    SCHEDULE,
    SUMMOD,
    Y_CHANNEL,
    Y_SUMMOD,
    D,
    K,
    _floor,
    _posterior,
    _smoothed_marginal,
)

from discrete_diffusion.posterior.operators import DownsampleOperator, ParityOperator  # noqa: E402

OPERATORS = {"channel": (CHANNEL, Y_CHANNEL), "summod": (SUMMOD, Y_SUMMOD),
             "parity": (ParityOperator(K, [[0, 1, 2]], flip=0.05), torch.tensor([[1]])),
             "downsample": (DownsampleOperator(K, 3), torch.tensor([[4]]))}
FIXED_T = 0.6

from discrete_diffusion.oracle import OracleDenoiser, SharedLevelOracle, empirical_distribution, total_variation  # noqa: E402
from discrete_diffusion.posterior.oracle_prior import OraclePriorStep  # noqa: E402
from discrete_diffusion.posterior.split_gibbs import split_gibbs_sample  # noqa: E402
from discrete_diffusion.runs.atomic_io import atomic_write_text  # noqa: E402
from discrete_diffusion.samplers import build_sampler  # noqa: E402

T_MAX = 0.9


def table() -> torch.Tensor:
    probs = torch.rand(K**D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    return probs / probs.sum()


def grid(quick: bool) -> dict[str, list[tuple[int, int, str, str]]]:
    """(iterations, mh_steps, prior step, MH proposal) per operator."""
    if quick:
        return {"channel": [(5, 1, "exact", "site"), (40, 1, "exact", "site"), (20, 1, "bridge-16", "site")],
                "summod": [(10, 1, "exact", "site"), (40, 4, "exact", "site"), (40, 4, "exact", "independent")]}
    channel = [(n, 1, "exact", "site") for n in (5, 10, 20, 40, 80, 160, 320, 1280)]
    channel += [(n, 1, "bridge-16", "site") for n in (20, 80)]
    summod = [(n, m, "exact", "site") for n in (10, 40, 160, 640) for m in (1, 4, 16)]
    summod += [(n, m, "exact", "independent") for n in (10, 40, 160, 640) for m in (4, 16)] + [(2560, 4, "exact",
                                                                                                 "independent")]
    grouped = [(n, 20, "exact", "site") for n in (10, 40, 160)] + [(-40, 20, "exact", "site")]
    return {"channel": channel, "summod": summod, "parity": grouped, "downsample": grouped}


def run(process_name: str, operator_name: str, iterations: int, mh_steps: int, prior: str, probs: torch.Tensor,
        samples: int, seed: int, t_min: float, proposal: str) -> dict:
    """One split Gibbs run and its row of the table."""
    process = PROCESSES[process_name]()
    operator, y = OPERATORS[operator_name]
    oracle = OracleDenoiser(process, probs, D, dtype=torch.float64)
    fixed = iterations < 0                   # a negative count: that many iterations at the fixed level FIXED_T
    iterations = abs(iterations)
    t_max, t_min = (FIXED_T, FIXED_T) if fixed else (T_MAX, t_min)
    options = dict(iterations=iterations, t_max=t_max, t_min=t_min, mh_steps=mh_steps, proposal=proposal,
                   generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    if prior == "exact":
        prior_step = OraclePriorStep(oracle)
        result = split_gibbs_sample(process, None, SCHEDULE, operator, y, (samples, D), prior_step=prior_step,
                                    **options)
        prior_cost = result.prior_rows / samples
    else:
        steps = int(prior.split("-")[1])
        result = split_gibbs_sample(process, SharedLevelOracle(oracle, D), SCHEDULE, operator, y, (samples, D),
                                    build_sampler("bridge", num_steps=steps), **options)
        prior_cost = result.nfe
    seconds = time.perf_counter() - start
    posterior = _posterior(operator, y, probs)
    target = _smoothed_marginal(process, operator, y, probs, FIXED_T) if fixed else posterior
    infeasible = int(torch.isneginf(operator.log_likelihood(result.z, y.expand((samples,) + y.shape[1:]))).sum())
    return {"process": process_name, "operator": operator_name, "likelihood_step": result.likelihood_step,
            "fixed_t": FIXED_T if fixed else None, "infeasible_chains": infeasible,
            "iterations": iterations, "mh_steps": mh_steps if result.likelihood_step == "mh" else 0,
            "proposal": proposal if result.likelihood_step == "mh" else None,
            "prior_step": prior, "prior_cost_per_chain": prior_cost,
            "likelihood_evaluations_per_chain": result.likelihood_evaluations / samples,
            "acceptance": None if result.acceptance_rate != result.acceptance_rate else result.acceptance_rate,
            "tv": total_variation(empirical_distribution(result.x0, K), target),
            "floor": _floor(target, samples, K),
            "bias_at_t_min": 0.0 if fixed else total_variation(_smoothed_marginal(process, operator, y, probs, t_min),
                                                               posterior),
            "seconds": seconds}


def markdown(rows: list[dict]) -> str:
    lines = ["| process | operator | likelihood step | iterations | MH steps | prior step | prior cost / chain | "
             "log L evals / chain | MH accept | TV to posterior | MC floor | bias at t_min | chains at L(z) = 0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        accept = "-" if r["acceptance"] is None else f"{r['acceptance']:.2f}"
        step = r["likelihood_step"] + (f" ({r['proposal']})" if r["proposal"] else "")
        its = f"{r['iterations']} (fixed t = {r['fixed_t']:g})" if r.get("fixed_t") else f"{r['iterations']}"
        lines.append(f"| {r['process']} | {r['operator']} | {step} | {its} | "
                     f"{r['mh_steps'] or '-'} | {r['prior_step']} | {r['prior_cost_per_chain']:g} | "
                     f"{r['likelihood_evaluations_per_chain']:g} | {accept} | {r['tv']:.4f} | {r['floor']:.4f} | "
                     f"{r['bias_at_t_min']:.4f} | {r.get('infeasible_chains', 0)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=10_000, help="chains (= posterior samples) per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", default="uniform,blackout", help=f"comma list of {', '.join(PROCESSES)}")
    parser.add_argument("--t-min", type=float, default=0.005)
    parser.add_argument("--quick", action="store_true", help="a few runs, as a smoke test")
    parser.add_argument("--operators", default="channel,summod,parity,downsample",
                        help=f"comma list of {', '.join(OPERATORS)}")
    parser.add_argument("--tag", default="", help="suffix of the results files (a partial run)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    probs = table()
    rows = []
    for process_name in args.processes.split(","):
        if process_name not in PROCESSES:
            raise SystemExit(f"unknown process {process_name!r}; choose from {', '.join(PROCESSES)}")
        for operator_name, runs in grid(args.quick).items():
            if operator_name not in args.operators.split(","):
                continue
            for iterations, mh_steps, prior, proposal in runs:
                rows.append(run(process_name, operator_name, iterations, mh_steps, prior, probs, args.samples,
                                args.seed, args.t_min, proposal))
                print(markdown(rows[-1:]).splitlines()[-1], f"({rows[-1]['seconds']:.1f} s)", flush=True)
    text = markdown(rows)
    print("\n" + text)
    command = "python benchmarks/split_gibbs_oracle.py " + " ".join(sys.argv[1:])
    name = "split_gibbs_oracle" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps({"command": command.strip(), "samples": args.samples,
                                                        "seed": args.seed, "t_max": T_MAX, "t_min": args.t_min,
                                                        "rows": rows}, indent=1) + "\n")
    atomic_write_text(out / f"{name}.md", f"`{command.strip()}`\n\n{text}\n")


if __name__ == "__main__":
    main()
