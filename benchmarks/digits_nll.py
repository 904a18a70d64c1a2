"""Test NLL on the 8x8 digits (17 levels) in bits per dimension: Blackout diffusion vs two exact baselines.

Models (same 1350 / 150 / 297 train / val / test split of ``load_dataset("digits")``):

- Blackout diffusion, trained by the library's ``Trainer`` (default config, best checkpoint on the validation
  NLL); the test NLL is the ELBO bound of ``pipeline.evaluate_run`` (an upper bound on the true NLL).
- Independent per-pixel categorical: a smoothed histogram per pixel (add-alpha, alpha chosen on val); exact.
- Gated PixelCNN (``discrete_diffusion.baselines.GatedPixelCNN``, raster order, 17-way logits per pixel),
  trained with the same steps / batch size / AdamW / warmup-cosine / clipping / EMA as Blackout, best EMA
  checkpoint on the validation NLL; exact NLL.

Standard errors are over test images. Prints a Markdown table and writes it, plus a JSON with the raw
numbers and the exact command and configs, to ``--out`` (default ``benchmarks/results``). Run directories
(checkpoints) go to ``OUT/runs/`` (git-ignored); ``--reuse`` picks up finished ones instead of retraining,
so ``--only blackout`` and ``--only pixelcnn`` can run in parallel and a final ``--reuse`` run assembles
the table.

    python benchmarks/digits_nll.py                 # full run (hours on a 2-core CPU)
    python benchmarks/digits_nll.py --quick         # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from discrete_diffusion.baselines import GatedPixelCNN, IndependentCategorical
from discrete_diffusion.baselines.fit import FitSettings, fit_exact_model
from discrete_diffusion.baselines.fit import bits_per_dim as exact_bits_per_dim
from discrete_diffusion.builders import build_proposal
from discrete_diffusion.config import load_config, to_dict
from discrete_diffusion.data import load_dataset
from discrete_diffusion.losses import estimate_elbo
from discrete_diffusion.pipeline import evaluate_run, load_run
from discrete_diffusion.train.trainer import Trainer

MODELS = ("categorical", "pixelcnn", "blackout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps for Blackout and the PixelCNN")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size for both networks")
    p.add_argument("--seed", type=int, default=0, help="training / evaluation seed")
    p.add_argument("--eval-every", type=int, default=250, help="validation interval (steps) for best-checkpoint "
                                                                 "selection, both networks")
    p.add_argument("--t-samples", type=int, default=16, help="importance draws of t per test image (Blackout)")
    p.add_argument("--wall-budget", type=float, default=None,
                   help="optional wall-clock limit in seconds per network: training stops at the first step past "
                        "it (then validates and checkpoints); the table reports the steps reached")
    p.add_argument("--ar-channels", type=int, default=64, help="PixelCNN channels")
    p.add_argument("--ar-layers", type=int, default=8, help="PixelCNN gated layers (>= 7 covers an 8x8 image)")
    p.add_argument("--ar-dropout", type=float, nargs="+", default=[0.2, 0.5],
                   help="PixelCNN dropout; several values train one model each, and the one with the best "
                        "validation NLL is the baseline (all are listed)")
    p.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS), help="models to run")
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished run directories under OUT/runs with the same settings instead of retraining")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps each, 2 t-samples")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="output folder")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.t_samples = 20, 10, 2
    if args.steps < 1 or args.batch_size < 1 or args.eval_every < 1:
        p.error("--steps, --batch-size and --eval-every must be >= 1")
    return args


def bits_mean_se(bits: torch.Tensor) -> tuple[float, float]:
    bits = bits.double()
    return float(bits.mean()), float(bits.std(unbiased=True)) / math.sqrt(bits.numel())


# ----- baseline 1: independent per-pixel categorical -----------------------------------------------------
def run_categorical(dataset) -> dict:
    start = time.time()
    model, scores = IndependentCategorical.select_alpha(dataset.train, dataset.val, dataset.num_states)
    per_image = model.bits_per_dim(dataset.test)
    mean, se = bits_mean_se(per_image)
    num_params = int(dataset.train[0].numel() * (dataset.num_states - 1))
    return {"model": "per-pixel categorical", "test_bpd": mean, "test_bpd_se": se,
            "val_bpd": scores[model.alpha], "params": num_params, "train_seconds": time.time() - start,
            "steps": 0, "best_step": None, "exact": True,
            "notes": f"add-alpha smoothing, alpha={model.alpha:.3g} chosen on val",
            "alpha": model.alpha, "val_bpd_by_alpha": {f"{a:.4g}": s for a, s in scores.items()},
            "test_bpd_per_image": per_image.tolist()}


# ----- baseline 2: gated PixelCNN, trained like the diffusion model -------------------------------------------
def pixelcnn_settings(args: argparse.Namespace, config, dropout: float) -> dict:
    fit = FitSettings.from_train_config(config.train, steps=args.steps, batch_size=args.batch_size,
                                        eval_every=args.eval_every, seed=args.seed, wall_budget=args.wall_budget)
    return {"channels": args.ar_channels, "num_layers": args.ar_layers, "dropout": dropout, **fit.to_dict()}


def run_pixelcnn(args: argparse.Namespace, config, dataset, run_dir: Path, device: torch.device,
                 dropout: float) -> dict:
    """The library's exact-NLL loop (``baselines.fit_exact_model``: the Trainer's recipe with the exact NLL as
    the loss), best EMA weights on validation."""
    settings = pixelcnn_settings(args, config, dropout)
    meta_path, weights_path = run_dir / "result.json", run_dir / "best_ema.safetensors"
    torch.manual_seed(args.seed)
    model = GatedPixelCNN(dataset.num_states, args.ar_channels, args.ar_layers, dropout).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    if args.reuse and meta_path.is_file() and json.loads(meta_path.read_text())["settings"] == settings:
        meta = json.loads(meta_path.read_text())
        meta["reused"] = True
        print(f"[pixelcnn] reusing {run_dir}", file=sys.stderr)
        model.load_state_dict(load_file(str(weights_path)))
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        fit_settings = FitSettings(**{k: v for k, v in settings.items()
                                      if k not in ("channels", "num_layers", "dropout")})
        result = fit_exact_model(model, dataset.train, dataset.val, fit_settings, weights_path, device,
                                 log=lambda msg: print(f"[pixelcnn] {msg}", file=sys.stderr, flush=True))
        meta = {"best_val_bpd": result.best_val_bits_per_dim, "best_step": result.best_step,
                "steps_done": result.steps_done, "train_seconds": result.train_seconds,
                "val_curve": result.val_curve, "settings": settings}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    per_image = exact_bits_per_dim(model, dataset.test, device)
    mean, se = bits_mean_se(per_image)
    return {"model": "gated PixelCNN (autoregressive)", "test_bpd": mean, "test_bpd_se": se,
            "val_bpd": meta["best_val_bpd"], "params": num_params, "train_seconds": meta["train_seconds"],
            "steps": meta["steps_done"], "best_step": meta["best_step"], "exact": True,
            "notes": f"{args.ar_layers} gated layers x {args.ar_channels} ch, dropout {dropout}",
            "settings": settings, "run_dir": str(run_dir), "val_curve": meta["val_curve"],
            "reused_run": bool(meta.get("reused")), "test_bpd_per_image": per_image.tolist()}


# ----- the diffusion model ----------------------------------------------------------------------------------
def blackout_overrides(args: argparse.Namespace) -> list[str]:
    return [f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.seed={args.seed}",
            f"train.eval_every={args.eval_every}", f"train.sample_every={args.steps + 1}",
            f"train.checkpoint_every={args.steps}", f"train.device={args.device}",
            f"evaluate.t_samples={args.t_samples}"]


class BudgetTrainer(Trainer):
    """The library Trainer, stopped at the first step past ``wall_budget`` seconds (then validated and
    checkpointed as a last step would be)."""

    def __init__(self, *args, wall_budget: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wall_budget = wall_budget
        self.started: float | None = None

    def train_step(self) -> dict:
        self.started = self.started or time.time()
        record = super().train_step()
        if self.wall_budget is not None and time.time() - self.started > self.wall_budget:
            self.config.train.steps = self.step       # fit() validates and saves at step == steps, then stops
        return record


def run_blackout(args: argparse.Namespace, config, run_dir: Path) -> dict:
    meta_path = run_dir / "benchmark_train.json"
    wanted = {"overrides": blackout_overrides(args), "wall_budget": args.wall_budget}
    if args.reuse and meta_path.is_file() and json.loads(meta_path.read_text())["settings"] == wanted:
        meta = json.loads(meta_path.read_text())
        meta["reused"] = True
        print(f"[blackout] reusing {run_dir}", file=sys.stderr)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        trainer = BudgetTrainer(config, run_dir, progress=False, wall_budget=args.wall_budget,
                                log=lambda msg: print(f"[blackout] {msg}", file=sys.stderr))
        start = time.time()
        result = trainer.fit()
        meta = {"settings": wanted, "train_seconds": time.time() - start, "steps_done": result.step,
                "best_step": result.best_step, "best_val_bpd": result.best_val_nll_bits_per_dim}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val_curve = [[r["step"], r["val_nll_bits_per_dim"]] for r in records if "val_nll_bits_per_dim" in r]
    run = load_run(run_dir, "best", args.device)
    num_params = sum(p.numel() for p in run.denoiser.parameters())
    start = time.time()
    nll = evaluate_run(run, "test", t_samples=args.t_samples, seed=args.seed, progress=False)
    per_image = blackout_bits_per_image(run, args.t_samples, args.seed)
    assert abs(float(per_image.mean()) - nll.nll_bits_per_dim) < 1e-6 * max(1.0, nll.nll_bits_per_dim), \
        "per-image replay of evaluate_run disagrees with it"
    return {"model": "Blackout diffusion (ELBO bound)", "test_bpd": nll.nll_bits_per_dim,
            "test_bpd_se": nll.nll_bits_per_dim_stderr, "val_bpd": meta["best_val_bpd"], "params": num_params,
            "train_seconds": meta["train_seconds"], "steps": meta["steps_done"], "best_step": meta["best_step"],
            "exact": False,
            "notes": (f"{config.model.backbone} {list(config.model.channel_mults)}x{config.model.base_channels}, "
                      f"{config.process.parameterization} param.; {args.t_samples} t-samples/image"),
            "nll_parts_bpd": {"diffusion": nll.diffusion_bits_per_dim, "prior": nll.prior_bits_per_dim,
                              "reconstruction": nll.reconstruction_bits_per_dim},
            "prior": nll.prior, "eval_seconds": time.time() - start, "run_dir": str(run_dir),
            "checkpoint": str(run.checkpoint), "val_curve": val_curve, "reused_run": bool(meta.get("reused")),
            "test_bpd_per_image": per_image.tolist()}


@torch.no_grad()
def blackout_bits_per_image(run, t_samples: int, seed: int) -> torch.Tensor:
    """Per-image test bound in bits/dim: the same batches, generator and draws as ``evaluate_run``, kept per
    image so that differences to the baselines can be paired."""
    data = run.dataset.split("test")
    batch = run.config.evaluate.batch_size
    generator = torch.Generator(device=run.device).manual_seed(seed)
    totals = [estimate_elbo(run.process, run.denoiser, data[i:i + batch].to(run.device), run.schedule,
                            build_proposal(run.config), generator, num_samples=t_samples).total.cpu()
              for i in range(0, data.shape[0], batch)]
    return torch.cat(totals).double() / (data[0].numel() * math.log(2.0))


# ----- report -----------------------------------------------------------------------------------------------
def add_paired_differences(rows: list[dict]) -> None:
    """For each row, test bits/dim minus Blackout's on the same images (mean ± SE of the paired differences)."""
    reference = next((r for r in rows if r["model"].startswith("Blackout")), None)
    for r in rows:
        if reference is None or r is reference:
            continue
        diff = torch.tensor(r["test_bpd_per_image"]) - torch.tensor(reference["test_bpd_per_image"])
        r["minus_blackout_bpd"], r["minus_blackout_bpd_se"] = bits_mean_se(diff)


def format_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n:,}"


def markdown_table(rows: list[dict]) -> str:
    lines = [("| model | test NLL (bits/dim) | minus Blackout, paired | best val (bits/dim) | params | steps (best) "
              "| train s | notes |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bound = "" if r["exact"] else " (bound)"
        steps = f"{r['steps']} ({r['best_step']})" if r["steps"] else "-"
        diff = (f"{r['minus_blackout_bpd']:+.3f} ± {r['minus_blackout_bpd_se']:.3f}" if "minus_blackout_bpd" in r
                else "-")
        lines.append(f"| {r['model']} | {r['test_bpd']:.3f} ± {r['test_bpd_se']:.3f}{bound} | {diff} "
                     f"| {r['val_bpd']:.3f} | {format_count(r['params'])} | {steps} | {r['train_seconds']:.0f} "
                     f"| {r['notes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    out = Path(args.out)
    tag = f"{args.steps}steps_bs{args.batch_size}_seed{args.seed}"
    dataset = load_dataset("digits")
    config = load_config(None, blackout_overrides(args))
    started = time.time()
    rows = []
    for name in MODELS:                  # cheapest first
        if name not in args.only:
            continue
        print(f"[{name}] running", file=sys.stderr, flush=True)
        if name == "categorical":
            rows.append(run_categorical(dataset))
        elif name == "pixelcnn":
            ar_rows = [run_pixelcnn(args, config, dataset, out / "runs" / f"digits_nll_pixelcnn_{tag}_drop{d:g}",
                                    device, d) for d in args.ar_dropout]
            best = min(ar_rows, key=lambda r: r["val_bpd"])
            for r in ar_rows:
                r["selected"] = r is best
                if len(ar_rows) > 1:
                    r["notes"] += "; **selected on val**" if r is best else "; not selected"
            rows.extend(ar_rows)
        else:
            rows.append(run_blackout(args, config, out / "runs" / f"digits_nll_blackout_{tag}"))
    add_paired_differences(rows)
    table = markdown_table(rows)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"Digits 8x8, 17 levels: test NLL (297 images, ± standard error over images); "
              f"{args.steps} steps, batch {args.batch_size}, seed {args.seed}; {stamp}; "
              f"{platform.machine()} CPU x{os.cpu_count()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads\n\n")
    print(header + table)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ("" if set(args.only) == set(MODELS) else "_" + "_".join(args.only))
    (out / f"digits_nll{suffix}.md").write_text(header + table)
    payload = {"command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]), "args": vars(args),
               "date": stamp, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "torch": torch.__version__, "threads": torch.get_num_threads()},
               "blackout_config": to_dict(config), "dataset": {k: int(v.shape[0]) for k, v in
                                                               (("train", dataset.train), ("val", dataset.val),
                                                                ("test", dataset.test))},
               "total_seconds": time.time() - started, "results": rows}
    (out / f"digits_nll{suffix}.json").write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
