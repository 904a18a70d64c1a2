"""Classifier-free guidance and infilling on the exact conditional oracle (docs/guidance.md quotes this output).

On a random joint table pi(x, c) (K = 3 values, D = 2 sites, C = 3 classes, as in tests/test_guidance.py) prints:
1. how far the x0-space guided rates are from the rate-space geometric mean R_c^g R_u^(1-g) (Nisonoff et al.) for
   every process, at gamma = 0, 1, 2, 4 (max relative difference over every x_t, level and one-site move), and the
   ratio of total jump rates (x0 form / rate form);
2. TV of guided samples to pi(x | c) and the mean log p(c | x) as gamma grows (tau-leaping, 64 steps);
3. the bias of replacement infilling on uniform against the exact conditional table, by step count, beside the
   exact masking infilling.

    python benchmarks/guidance_oracle.py [--samples 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_guidance import PROCESSES, D, conditional_given_known, every_state_and_level, joint_table, make_process  # noqa: E402  (the tests' tables and helpers)

from discrete_diffusion.guidance import ClassifierFreeDenoiser, geometric_mean_rates, guide_prediction, infill_sample  # noqa: E402
from discrete_diffusion.oracle import (  # noqa: E402
    ConditionalOracle,
    OracleDenoiser,
    SharedLevelOracle,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.samplers import build_sampler  # noqa: E402
from discrete_diffusion.schedules import build_schedule  # noqa: E402


def rate_forms(lines: list[str]) -> None:
    lines += ["| process | gamma | max rel. diff x0-form vs rate-form | total rate x0/rate (min..max) |",
              "|---|---|---|---|"]
    for name in PROCESSES:
        process = make_process(name)
        oracle = ConditionalOracle(process, joint_table(process), D)
        xt, lam = every_state_and_level(process)
        cond, uncond = oracle(xt, lam, torch.full((xt.shape[0],), 1)), oracle(xt, lam)
        for gamma in (0.0, 1.0, 2.0, 4.0):
            g = torch.full((xt.shape[0],), gamma, dtype=torch.float64)
            x0_form = process.reverse_rates(xt, guide_prediction(cond, uncond, g), lam)
            rate_form = geometric_mean_rates(process, xt, cond, uncond, lam, g)
            rel = ((x0_form - rate_form).abs() / rate_form.abs().clamp_min(1e-300)).where(rate_form > 1e-300,
                                                                                          torch.zeros(()))
            totals = x0_form.sum(-1) / rate_form.sum(-1)
            totals = totals[rate_form.sum(-1) > 0]
            lines.append(f"| {name} | {gamma:g} | {float(rel.max()):.3g} | {float(totals.min()):.3f}.."
                         f"{float(totals.max()):.3f} |")


def sharpening(lines: list[str], n: int, seed: int) -> None:
    lines += ["", "| process | gamma | TV to pi(x given c) | mean log p(c given x) |", "|---|---|---|---|"]
    for name in ("masking", "uniform", "blackout"):
        process = make_process(name)
        oracle = ConditionalOracle(process, joint_table(process, seed=7), D)
        schedule = build_schedule("blackout" if name == "blackout" else "log-linear")
        for gamma in (0.0, 1.0, 2.0, 4.0):
            x = build_sampler("tau-leaping", num_steps=64).sample(
                process, ClassifierFreeDenoiser(oracle, 2, gamma), schedule, (n, D),
                torch.Generator().manual_seed(seed))
            tv = total_variation(empirical_distribution(x, process.num_states), oracle.table(2))
            lines.append(f"| {name} | {gamma:g} | {tv:.4f} | {float(oracle.class_log_probs(x)[:, 2].mean()):.4f} |")


def infilling(lines: list[str], n: int, seed: int) -> None:
    floor = 0.5 * (3 / (2 * torch.pi * n)) ** 0.5 * 2 ** 0.5
    lines += ["", f"Infilling, site 0 known (= 0), D = 2, K = 3; TV Monte-Carlo floor about {floor:.4f} (n = {n})", "",
              "| process | method | sampler | TV to pi(x given x_known) |", "|---|---|---|---|"]
    for name in ("masking", "uniform"):
        process = make_process(name)
        table = joint_table(process, seed=10, num_sites=D, classes=1)[:, 0]
        table = table / table.sum()
        want = conditional_given_known(table, process.num_states, D, 0, 0)
        known = torch.zeros(n, D, dtype=torch.bool)
        known[:, 0] = True
        values = torch.zeros(n, D, dtype=torch.long)
        oracle = SharedLevelOracle(OracleDenoiser(process, table, D), D)
        runs = [("exact", None)] if name == "masking" else []
        runs += [("tau-leaping", s) for s in (16, 64, 256)]
        for sampler_name, steps in runs:
            sampler = build_sampler(sampler_name) if steps is None else build_sampler(sampler_name, num_steps=steps)
            x = infill_sample(sampler, process, oracle.oracle if steps is None else oracle,
                              build_schedule("log-linear"), known, values, torch.Generator().manual_seed(seed))
            tv = total_variation(empirical_distribution(x, process.num_states), want)
            method = "exact (revealed start)" if name == "masking" else "replacement"
            lines.append(f"| {name} | {method} | {sampler_name} {steps or ''} | {tv:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines: list[str] = []
    rate_forms(lines)
    sharpening(lines, args.samples, args.seed)
    infilling(lines, args.samples, args.seed)
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "guidance_oracle.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"`python benchmarks/guidance_oracle.py --samples {args.samples} --seed {args.seed}`\n\n{text}\n")


if __name__ == "__main__":
    main()
