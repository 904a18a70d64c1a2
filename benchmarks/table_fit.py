"""Can a backbone fit a small correlated table? (issue 19 items 13 and 14)

A 4-site, 3-state table (a mixture of three product distributions with weights 0.5 / 0.3 / 0.2: correlated sites
whose marginals differ by site) is sampled into an array dataset; ``ddiff train`` is run on it with the default
training settings (3000 steps, batch 128, lr 2e-3) and the given model overrides; the trained model's exact
distribution (``evaluate.reverse_law.reverse_chain_law``: the reverse chain's master equation over all states,
no sampler error) is compared with the table (TV), next to the table's own product of marginals (the fit of a
model that ignores every correlation) and the empirical law of the training split (the data's floor).

    PYTHONPATH=src python benchmarks/table_fit.py                      # the table in benchmarks/results
    PYTHONPATH=src python benchmarks/table_fit.py --only masking-mlp   # one row
    PYTHONPATH=src python benchmarks/table_fit.py --steps 600 --quick  # a shorter check

Rows: masking and uniform with the MLP under the legacy "additive" noise conditioning (the architecture before
the fix), the adaLN-zero one and, for masking, no noise input (the new default); masking with the transformer,
rotary only (before) and with sinusoidal / learned absolute positions.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from discrete_diffusion.builders import build_proposal
from discrete_diffusion.config import load_config, validation_t_samples
from discrete_diffusion.evaluate.reverse_law import reverse_chain_law
from discrete_diffusion.likelihood import evaluate_nll
from discrete_diffusion.oracle import all_configurations, configuration_index, total_variation
from discrete_diffusion.pipeline import load_run
from discrete_diffusion.train.trainer import Trainer

SITES, STATES = 4, 3

ROWS = {
    "masking-mlp-additive": ["process.name=masking", "model.backbone=mlp", "model.noise_conditioning=additive"],
    "masking-mlp-adaln": ["process.name=masking", "model.backbone=mlp", "model.noise_conditioning=adaln-zero"],
    "masking-mlp": ["process.name=masking", "model.backbone=mlp"],                      # default: no noise input
    "uniform-mlp-additive": ["process.name=uniform", "model.backbone=mlp", "model.noise_conditioning=additive"],
    "uniform-mlp": ["process.name=uniform", "model.backbone=mlp"],                      # default: adaLN-zero
    "masking-transformer-rotary": ["process.name=masking", "model.backbone=transformer", "model.dim=128",
                                   "model.depth=2", "model.position_embedding=none"],
    "masking-transformer-sinusoidal": ["process.name=masking", "model.backbone=transformer", "model.dim=128",
                                       "model.depth=2", "model.position_embedding=sinusoidal"],
    "masking-transformer-learned": ["process.name=masking", "model.backbone=transformer", "model.dim=128",
                                    "model.depth=2", "model.position_embedding=learned"],
}


def correlated_table(seed: int = 0, power: float = 4.0) -> torch.Tensor:
    """(3^4,) float64: sum_c w_c prod_d m_{c,d}(x_d), w = (0.5, 0.3, 0.2), m_{c,d} proportional to U^power + 0.02
    (U uniform, fixed seed): a larger power, sharper components, stronger correlation."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    marginals = torch.rand(3, SITES, STATES, generator=gen, dtype=torch.float64) ** power + 0.02
    marginals = marginals / marginals.sum(-1, keepdim=True)
    configs = all_configurations(STATES, SITES)                              # (J, D)
    per_class = marginals[:, torch.arange(SITES)[None, :], configs].prod(-1)   # (3, J)
    return weights @ per_class


def product_of_marginals(probs: torch.Tensor) -> torch.Tensor:
    configs = all_configurations(STATES, SITES)
    onehot = torch.nn.functional.one_hot(configs, STATES).double()           # (J, D, K)
    marg = torch.einsum("j,jdk->dk", probs, onehot)
    return marg[torch.arange(SITES)[None, :], configs].prod(-1)


def site_marginals(probs: torch.Tensor) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(all_configurations(STATES, SITES), STATES).double()
    return torch.einsum("j,jdk->dk", probs, onehot)


def write_table_data(folder: Path, probs: torch.Tensor, n: int, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(probs, n, replacement=True, generator=gen)
    data = all_configurations(STATES, SITES)[draws].numpy().astype(np.int64)
    path = folder / "table.npy"
    np.save(path, data)
    return path


def fit(row: list[str], data: Path, out: Path, extra: list[str]) -> dict:
    config = load_config(None, ["data.name=array", f"data.path={data}", "data.num_states=3", "train.device=cpu",
                                "train.sample_every=100000", *row, *extra])
    start = time.time()
    result = Trainer(config, out, progress=False, log=lambda _: None).fit()
    seconds = time.time() - start
    run = load_run(out, "latest", "cpu")
    law = reverse_chain_law(run.process, run.denoiser, run.schedule, SITES, steps=100)
    vals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_nll" in line]
    return {"law": law, "seconds": seconds, "val": vals[-1] if vals else {}, "best": result.best_val_nll_bits_per_dim,
            "validation_noise": validation_noise(run)}


def validation_noise(run, seeds: int = 8) -> dict:
    """The validation estimate's spread over generator seeds with 4 draws per example (the old default) and with
    the automatic number, against a 128-draw reference on the same split (bits/dim)."""
    val = run.dataset.val
    auto = validation_t_samples(None, val.shape[0], SITES)

    def nll(draws: int, seed: int) -> float:
        return evaluate_nll(run.process, run.denoiser, run.schedule, val, build_proposal(run.config), draws, 1024,
                            torch.Generator().manual_seed(seed)).nll_bits_per_dim

    out = {"auto_draws": auto, "reference_128": nll(128, 999)}
    for name, draws in (("draws_4", 4), ("draws_auto", auto)):
        values = torch.tensor([nll(draws, s) for s in range(seeds)], dtype=torch.float64)
        out[name] = {"mean": float(values.mean()), "sd": float(values.std()),
                     "max_abs_error": float((values - out["reference_128"]).abs().max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(ROWS))
    parser.add_argument("--steps", type=int, default=None, help="train.steps (default: the config default, 3000)")
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--table-seed", type=int, default=2)
    parser.add_argument("--power", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="do not write benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    probs = correlated_table(args.table_seed, args.power)
    product_tv = total_variation(product_of_marginals(probs), probs)
    extra = [f"train.steps={args.steps}"] if args.steps else []
    lines = [f"table: {SITES} sites x {STATES} states, mixture of 3 products (seed {args.table_seed}, power "
             f"{args.power:g}); TV(product of marginals, table) = "
             f"{product_tv:.4f}; site marginals:", *(f"  site {d}: {np.round(m.numpy(), 3).tolist()}"
                                                     for d, m in enumerate(site_marginals(probs)))]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_table_data(Path(tmp), probs, args.examples)
        train = np.load(data)
        empirical = torch.bincount(configuration_index(torch.from_numpy(train), STATES), minlength=STATES ** SITES)
        floor = total_variation(empirical.double() / empirical.sum(), probs)
        lines.append(f"{args.examples} examples (80 % train); TV(empirical law of all examples, table) = {floor:.4f}")
        header = ("| row | TV(model, table) | TV(model, product of marginals) | final val bound (bits/dim) | "
                  "val estimate sd over 8 seeds: 4 draws / auto (draws) | train s |")
        lines += ["", header, "|---|---|---|---|---|---|"]
        preamble = len(lines)
        print("\n".join(lines), flush=True)
        for name in args.only or ROWS:
            r = fit(ROWS[name], data, Path(tmp) / name, extra)
            tv = total_variation(r["law"], probs)
            tv_prod = total_variation(r["law"], product_of_marginals(probs))
            val = r["val"]
            mean, stderr = val.get("val_nll_bits_per_dim", math.nan), val.get("val_nll_bits_per_dim_stderr", math.nan)
            bound = f"{mean:.4f} ± {stderr:.4f}"
            noise = r["validation_noise"]
            spread = (f"{noise['draws_4']['sd']:.4f} / {noise['draws_auto']['sd']:.4f} ({noise['auto_draws']}); "
                      f"128 draws: {noise['reference_128']:.4f}")
            line = f"| {name} | {tv:.4f} | {tv_prod:.4f} | {bound} | {spread} | {r['seconds']:.0f} |"
            print(line, flush=True)
            lines.append(line)
            records.append({"row": name, "overrides": ROWS[name] + extra, "tv_table": tv, "tv_product": tv_prod,
                            "val": val, "validation_noise": noise, "train_seconds": r["seconds"], "line": line})
    if not args.quick:   # rows of separate invocations (--only) are merged into one table, in ROWS order
        results = Path(__file__).parent / "results"
        path = results / "table_fit.json"
        held = json.loads(path.read_text()) if path.exists() else {}
        kept = held.get("rows", {}) if held.get("header") == lines[:preamble] else {}
        rows = {**kept, **{r["row"]: r for r in records}}
        path.write_text(json.dumps({"header": lines[:preamble], "product_tv": product_tv, "rows": rows}, indent=1))
        table = [rows[n]["line"] for n in ROWS if n in rows]
        (results / "table_fit.md").write_text("\n".join(lines[:preamble] + table) + "\n")


if __name__ == "__main__":
    main()
