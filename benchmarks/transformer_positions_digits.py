"""The sequence transformer on 8x8 digits read as a raster sequence (64 sites, 17 levels, masking): rotary
positions only (the architecture before issue 19 item 14) against rotary + sinusoidal and rotary + learned
absolute positions, same seed, data, steps and sizes. Image marginals depend on the position (the border is
blank), which rotary attention alone cannot see at masked sites.

    PYTHONPATH=src python benchmarks/transformer_positions_digits.py [--steps 1500] [--only none sinusoidal]

Prints, per variant, the validation bound at every evaluation (train.eval_t_samples=8) and the final test
bound of the last checkpoint (evaluate_run, 8 t-draws per image, seed 0), with standard errors over images;
writes benchmarks/results/transformer_positions_digits.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from discrete_diffusion.config import load_config
from discrete_diffusion.pipeline import evaluate_run, load_run
from discrete_diffusion.train.trainer import Trainer

KINDS = ("none", "sinusoidal", "learned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--only", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--quick", action="store_true", help="do not write benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ["data.name=digits", "process.name=masking", "model.backbone=transformer", "model.dim=64",
            "model.depth=2", "model.heads=4", "model.dropout=0.0", f"train.steps={args.steps}",
            f"train.eval_every={max(1, args.steps // 5)}", f"train.checkpoint_every={args.steps}",
            "train.sample_every=1000000", "train.eval_t_samples=8", "train.batch_size=64", "train.device=cpu"]
    lines = [f"8x8 digits as a 64-site raster sequence, masking, transformer dim 64 depth 2 heads 4, batch 64, "
             f"{args.steps} steps, CPU; bounds in bits/dim", "",
             "| position embedding | validation bound by step | test bound (last checkpoint) | train s |",
             "|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.only:
            overrides = [*base, f"model.position_embedding={kind}"]
            out = Path(tmp) / kind
            start = time.time()
            Trainer(load_config(None, overrides), out, progress=False, log=lambda _: None).fit()
            seconds = time.time() - start
            vals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if "val_nll" in x]
            run = load_run(out, "latest", "cpu")
            test = evaluate_run(run, "test", t_samples=8, seed=0, progress=False)
            curve = ", ".join(f"{v['step']}: {v['val_nll_bits_per_dim']:.3f}" for v in vals)
            line = (f"| {kind} | {curve} | {test.nll_bits_per_dim:.4f} ± {test.nll_bits_per_dim_stderr:.4f} | "
                    f"{seconds:.0f} |")
            print(line, flush=True)
            lines.append(line)
            records.append({"position_embedding": kind, "overrides": overrides, "validation": vals,
                            "test": test.to_dict(), "train_seconds": seconds})
    if not args.quick:
        results = Path(__file__).parent / "results"
        (results / "transformer_positions_digits.md").write_text("\n".join(lines) + "\n")
        (results / "transformer_positions_digits.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
