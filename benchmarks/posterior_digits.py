"""Posterior sampling on 8x8 digits (17 levels) with trained diffusion priors: inpainting the lower half, and
denoising binomially thinned images (issue 13's digits benchmark).

Priors: two unconditional U-Net runs on the bundled digits, one Blackout and one masking (``--blackout-run``,
``--masking-run``: finished run directories, only read; without them small ones are trained into
OUT/runs/posterior_digits/{blackout,masking}, reused when they exist). Test images: the first ``--images`` of the
test split; ``--samples`` posterior samples each, drawn by ``ddiff posterior``'s own loop
(``posterior_cli.draw_posterior``). dps: tau-leaping, ``--steps`` steps (65 network rows per sample and step on
8x8 Blackout). split-gibbs: 250 iterations (``--gibbs-option``), each prior step the bridge sampler with 8 steps
(``--gibbs-sampler``, ``--gibbs-steps``) started from x_t = z, so about the same network rows per sample as dps.

Tasks and methods:
- inpaint: the top half observed, the lower half hidden (y = the top half, -1 below). The masking prior with
  ``infill`` (exact given the network's conditionals; sampler ``--infill-sampler``, default exact simulation), the
  Blackout prior with ``dps`` (biased) and ``split-gibbs`` when this build has it. Scored on the hidden half.
- thinning p = 0.1 and 0.3: y ~ Binomial(x0, p) per pixel, the Blackout prior with ``dps`` and ``split-gibbs``.
  Scored on every pixel.
Baselines (closed form, no network):
- measurement only: thinning, y / p clipped to 0..16; inpainting, the observed half as is and the per-pixel training
  mean in the hidden half;
- independent-pixel prior: the exact posterior when the prior is the product of the per-pixel training marginals
  p_d(k) (counts of the 1350 training images, add-1/2 smoothed so that no y is impossible):
  p(x0^d = k | y) ∝ p_d(k) p(y_d | k) per pixel; its mean, and its expected one-sample accuracy
  sum_k p(k | y) [k = x0^d].
  For inpainting its mean is the measurement-only estimate (the hidden pixels are independent of the observed ones).
Scores (``posterior/metrics.py``): per-pixel accuracy of the rounded posterior mean, sample-wise accuracy (a single
sample's, averaged), PSNR of the posterior mean (peak 16, MSE pooled over images and scored pixels); y-consistent: the
fraction of samples with p(y | x0) > 0 (for inpainting: the observed half kept exactly; for thinning: x0 >= y), and
of (sample, pixel) pairs whose own factor p(y_d | x0^d) is > 0 (inpainting: over the observed pixels).

    python benchmarks/posterior_digits.py --blackout-run RUNS/digits_blackout --masking-run RUNS/digits_masking
    python benchmarks/posterior_digits.py                  # trains both priors first (about 2 x 10 min on a CPU core)

Writes OUT/posterior_digits.{md,json} (OUT = benchmarks/results) and docs/images/posterior_digits.png (for the first
``--picture`` images of each task: observation / 2 samples / posterior mean / truth; unobserved pixels dark red,
thinned observations shown as y / p).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from discrete_diffusion.cli import main as ddiff
from discrete_diffusion.cli.posterior import draw_posterior, observation_levels, posterior_grid
from discrete_diffusion.cli.posterior_inputs import half_mask
from discrete_diffusion.pipeline import LoadedRun, load_run
from discrete_diffusion.posterior import POSTERIOR_METHODS, InpaintOperator, ThinningOperator, inpaint_observation
from discrete_diffusion.posterior.metrics import estimate_scores, sample_scores
from discrete_diffusion.report.grids import image_grid
from discrete_diffusion.runs.atomic_io import atomic_write, atomic_write_text, ensure_dir
from discrete_diffusion.samplers import build_sampler

ROOT = Path(__file__).resolve().parents[1]
#: Overrides of the priors trained when no run directory is given (the 8-minute limit keeps each under 10 min).
TRAIN = ["train.steps=1500", "train.eval_every=250", "train.eval_t_samples=8", "train.sample_every=100000",
         "train.checkpoint_every=500", "train.time_limit_minutes=8", "train.device=cpu"]
PEAK = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blackout-run", default=None, help="a finished Blackout digits run (default: train one into OUT)")
    p.add_argument("--masking-run", default=None, help="a finished masking digits run (default: train one into OUT)")
    p.add_argument("--images", type=int, default=12, help="test images per task (the first of the test split)")
    p.add_argument("--samples", type=int, default=4, help="posterior samples per image")
    p.add_argument("--steps", type=int, default=32, help="tau-leaping steps of dps")
    p.add_argument("--infill-sampler", default="exact", help="sampler of masking infill (default: exact simulation)")
    p.add_argument("--infill-steps", type=int, default=128, help="steps of --infill-sampler when it takes steps")
    p.add_argument("--gibbs-sampler", default="bridge", help="split gibbs: the prior step's sampler (bridge)")
    p.add_argument("--gibbs-steps", type=int, default=8, help="split gibbs: steps of each prior step (8)")
    p.add_argument("--gibbs-option", action="append", default=["iterations=250"], metavar="KEY=VALUE",
                   help="a split-gibbs option (YAML value), repeatable (default iterations=250: 250 x 8 = 2000 "
                        "network rows per sample, about dps's 65 x 32)")
    p.add_argument("--methods", default="dps,split-gibbs",
                   help="methods on the Blackout prior (those missing from this build are skipped)")
    p.add_argument("--train-steps", type=int, default=1500, help="steps of the priors trained when no run is given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--picture", type=int, default=4, help="images per task in the picture")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--image-out", default=str(ROOT / "docs" / "images" / "posterior_digits.png"))
    return p.parse_args(argv)


def prior_run(given: str | None, process: str, out: Path, steps: int = 1500) -> tuple[Path, str]:
    """The run directory of a prior: the one given, else a small one trained (or reused) under OUT."""
    if given is not None:
        return Path(given), "given"
    run_dir = out / "runs" / "posterior_digits" / process
    if (run_dir / "best").is_dir():
        return run_dir, "reused"
    overrides = [f"process.name={process}", *TRAIN, f"train.steps={steps}"]
    assert ddiff(["train", "--out", str(run_dir), "--no-progress", *overrides]) == 0
    return run_dir, "trained: " + " ".join(overrides)


def run_summary(run_dir: Path, run: LoadedRun, how: str) -> dict:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [m for m in metrics if "val_nll_bits_per_dim" in m]
    best = min(vals, key=lambda m: m["val_nll_bits_per_dim"]) if vals else None
    return {"run_dir": str(run_dir.resolve()), "how": how, "checkpoint": str(run.checkpoint),
            "process": run.process.name, "best_val_nll_bits_per_dim": best and best["val_nll_bits_per_dim"],
            "best_step": best and best["step"], "trained_steps": max((m.get("step", 0) for m in metrics), default=0)}


def pixel_marginals(train: torch.Tensor, k: int) -> torch.Tensor:
    """p_d(k): per-pixel training frequencies, add-1/2 smoothed, (*sites, K) float64."""
    counts = torch.nn.functional.one_hot(train, k).double().sum(0)
    return (counts + 0.5) / (train.shape[0] + 0.5 * k)


def independent_posterior(marginals: torch.Tensor, site_log_like: torch.Tensor) -> torch.Tensor:
    """p(x0^d = k | y) ∝ p_d(k) exp(l_d(k)) for a per-site log-likelihood table (N, *sites, K): (N, *sites, K)."""
    return torch.softmax(marginals.log()[None] + site_log_like, -1)


def independent_scores(post: torch.Tensor, truth: torch.Tensor, region: torch.Tensor | None) -> dict:
    """Scores of the independent-pixel posterior: its mean, and its expected one-sample accuracy."""
    values = torch.arange(post.shape[-1], dtype=torch.float64)
    mean = (post * values).sum(-1)
    hit = torch.gather(post, -1, truth[..., None])[..., 0]
    keep = torch.ones_like(truth, dtype=torch.bool) if region is None else region.expand_as(truth)
    return {**estimate_scores(mean, truth, PEAK + 1, region), "sample_accuracy": float(hit[keep].mean())}


def accuracy_se(estimate: torch.Tensor, truth: torch.Tensor, region: torch.Tensor | None) -> float:
    """Standard error over images of the per-image accuracy of round(estimate) (N, *sites) on the scored pixels."""
    keep = torch.ones_like(truth, dtype=torch.bool) if region is None else region.expand_as(truth)
    hits = ((torch.round(estimate.double()) == truth.double()) & keep).reshape(truth.shape[0], -1).sum(1)
    per_image = hits.double() / keep.reshape(truth.shape[0], -1).sum(1)
    return float(per_image.std() / per_image.numel() ** 0.5)


def consistent(operator, samples: torch.Tensor, y: torch.Tensor, region: torch.Tensor | None) -> tuple[float, float]:
    """(fraction of samples (N, S, *sites) with p(y | x0) > 0 for their observation y (N, *sites), fraction of
    (sample, pixel) pairs whose own factor p(y_d | x0^d) is > 0 over the pixels ``region`` (None: all) marks)."""
    n, s = samples.shape[:2]
    ll = operator.log_likelihood(samples.reshape(n * s, *samples.shape[2:]), y.repeat_interleave(s, 0))
    table = operator.site_log_likelihood(y, tuple(samples.shape[2:]))                   # (N, *sites, K)
    site_ok = torch.isfinite(torch.gather(table[:, None].expand(*samples.shape, -1), -1, samples[..., None])[..., 0])
    keep = torch.ones_like(site_ok) if region is None else region[:, None].expand_as(site_ok)
    return float(torch.isfinite(ll).double().mean()), float(site_ok[keep].double().mean())


def options_from(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/posterior_digits.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out)
    blackout_dir, blackout_how = prior_run(args.blackout_run, "blackout", out, args.train_steps)
    masking_dir, masking_how = prior_run(args.masking_run, "masking", out, args.train_steps)
    blackout, masking = load_run(blackout_dir, device="cpu"), load_run(masking_dir, device="cpu")
    k = blackout.dataset.num_states
    truth = blackout.dataset.split("test")[:args.images]
    marginals = pixel_marginals(blackout.dataset.split("train"), k)
    sites = tuple(truth.shape[1:])
    methods = [m for m in args.methods.split(",") if POSTERIOR_METHODS.get(m) is not None]
    skipped = [m for m in args.methods.split(",") if m not in methods]
    gibbs = options_from(args.gibbs_option)         # later items win: --gibbs-option iterations=100 replaces 250
    tau = build_sampler("tau-leaping", num_steps=args.steps)
    gibbs_sampler = build_sampler(args.gibbs_sampler, num_steps=args.gibbs_steps)
    samplers = {"dps": tau, "split-gibbs": gibbs_sampler}
    infill_sampler = build_sampler(args.infill_sampler, num_steps=args.infill_steps)

    observed = half_mask("top-half", sites)[None]
    hidden = ~observed
    tasks = [{"name": "inpaint lower half", "operator": InpaintOperator(k), "y": inpaint_observation(truth, observed),
              "region": hidden, "runs": [("masking", masking, "infill", infill_sampler, {})] +
              [("blackout", blackout, m, samplers.get(m, tau), gibbs if m == "split-gibbs" else {})
                       for m in methods]}]
    for p in (0.1, 0.3):
        op = ThinningOperator(k, p)
        tasks.append({"name": f"thinning p = {p:g}", "operator": op,
                      "y": op.simulate(truth, torch.Generator().manual_seed(args.seed)), "region": None,
                      "runs": [("blackout", blackout, m, samplers.get(m, tau), gibbs if m == "split-gibbs" else {})
                       for m in methods]})

    results, panels = [], []
    for task in tasks:
        op, y, region = task["operator"], task["y"], task["region"]
        rows = []
        if op.name == "thinning":
            only = (y.double() / op.p).clamp(0, PEAK)
        else:
            only = torch.where(observed, truth.double(), (marginals * torch.arange(k)).sum(-1)[None])
        rows.append({"prior": "none", "method": "measurement only", **estimate_scores(only, truth, k, region),
                     "accuracy_se": accuracy_se(only, truth, region),
                     "sample_accuracy": None, "consistent": None, "consistent_pixels": None, "rows_per_sample": 0,
                     "seconds": 0.0})
        post = independent_posterior(marginals, op.site_log_likelihood(y, sites))
        rows.append({"prior": "independent pixels", "method": "exact", **independent_scores(post, truth, region),
                     "accuracy_se": accuracy_se((post * torch.arange(k)).sum(-1), truth, region),
                     "consistent": 1.0, "consistent_pixels": 1.0, "rows_per_sample": 0, "seconds": 0.0})
        for prior_name, run, method, sampler, options in task["runs"]:
            samples, cost = draw_posterior(method, run, op, y, args.samples, 64, sampler, args.seed, options)
            whole, pixels = consistent(op, samples, y, observed if op.name == "inpaint" else None)
            row = {"prior": prior_name, "method": method, **sample_scores(samples, truth, k, region),
                   "accuracy_se": accuracy_se(samples.double().mean(1), truth, region),
                   "consistent": whole, "consistent_pixels": pixels, "sampler": sampler.config(), "options": options,
                   "rows_per_sample": cost["network_rows"] / (samples.shape[0] * samples.shape[1]),
                   "seconds": cost["seconds"]}
            rows.append(row)
            print(f"{task['name']}: {prior_name} {method}: accuracy {row['accuracy']:.3f}, one sample "
                  f"{row['sample_accuracy']:.3f}, PSNR {row['psnr']:.2f} dB, consistent {row['consistent']:.3f} "
                  f"(pixels {row['consistent_pixels']:.3f}), "
                  f"{cost['seconds']:.0f} s", flush=True)
            n = min(args.picture, samples.shape[0])
            view = observation_levels(op, y[:n], sites, k)
            panels.append((f"{task['name'].replace('inpaint lower half', 'inpaint')}\n{prior_name}: {method}",
                           image_grid(posterior_grid(samples[:n], view, truth[:n], k, columns=n, sample_rows=2),
                                      k, nrow=n, scale=4)))
        results.append({"task": task["name"], "operator": op.name, "p": getattr(op, "p", None), "rows": rows})

    record = {"command": command, "date": date, "machine": platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "images": args.images, "samples": args.samples, "seed": args.seed,
              "steps": args.steps, "skipped_methods": skipped,
              "gibbs": {"options": gibbs, "sampler": gibbs_sampler.config()},
              "priors": {"blackout": run_summary(blackout_dir, blackout, blackout_how),
                         "masking": run_summary(masking_dir, masking, masking_how)},
              "results": results}
    text = markdown(record)
    print(text)
    ensure_dir(out)
    atomic_write_text(out / "posterior_digits.json", json.dumps(record, indent=2) + "\n")
    atomic_write_text(out / "posterior_digits.md", text)
    save_panels(panels, Path(args.image_out))
    print(f"wrote {out / 'posterior_digits.md'}, {out / 'posterior_digits.json'}, {args.image_out}")


def save_panels(panels: list[tuple[str, np.ndarray]], path: Path) -> None:
    """The panels side by side under their titles, on white, written atomically as PNG."""
    from PIL import Image, ImageDraw

    gap, title = 12, 28
    height = max(p.shape[0] for _, p in panels) + title
    width = sum(p.shape[1] for _, p in panels) + gap * (len(panels) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    left = 0
    for name, panel in panels:
        canvas.paste(Image.fromarray(panel), (left, title))
        draw.multiline_text((left + 2, 1), name, fill="black", spacing=2)
        left += panel.shape[1] + gap
    ensure_dir(path.parent)
    atomic_write(path, lambda f: canvas.save(f, format="PNG"))


def markdown(record: dict) -> str:
    pri = record["priors"]
    gibbs = (f"{record['gibbs']['options']}, prior step {record['gibbs']['sampler']['name']} "
             f"{record['gibbs']['sampler']['num_steps']} steps")
    lines = ["# Posterior sampling on digits: inpainting and binomial thinning", "",
             f"`{record['command']}` ({record['date']}; {record['machine']}, torch {record['torch']}, CPU, "
             f"{record['threads']} thread)", "",
             f"{record['images']} test images (the first of the test split), {record['samples']} posterior samples "
             f"each, seed {record['seed']}. dps: tau-leaping, {record['steps']} steps. split-gibbs: {gibbs}. Priors: "
             f"Blackout `{pri['blackout']['run_dir']}` (best validation bound "
             f"{pri['blackout']['best_val_nll_bits_per_dim']:.4f} "
             f"bits/dim at step {pri['blackout']['best_step']}), masking `{pri['masking']['run_dir']}` (best "
             f"{pri['masking']['best_val_nll_bits_per_dim']:.4f} bits/dim at step {pri['masking']['best_step']}). "
             "Accuracy: per-pixel accuracy of the rounded posterior mean (± standard error over images); one sample: "
             "the accuracy of a single "
             "posterior sample (for the independent-pixel prior, its exact expectation); PSNR of the posterior mean "
             "(peak 16, MSE pooled); y-consistent samples: the fraction of samples with p(y | x0) > 0, and pixels: of "
             "(sample, pixel) pairs with p(y_d | x0^d) > 0 (inpainting: over the observed half); rows per sample: "
             "network rows evaluated per posterior sample. Inpainting is scored on the hidden lower half, thinning "
             "on every pixel. Baselines: measurement only (thinning y / p clipped; inpainting the per-pixel training "
             "mean in the hidden half) and the exact posterior under an independent-pixel prior (per-pixel training "
             "marginals)."]
    if record["skipped_methods"]:
        lines += ["", f"Not in this build (skipped): {', '.join(record['skipped_methods'])}."]
    for task in record["results"]:
        lines += ["", f"## {task['task']}", "",
                  "| prior | method | accuracy | one sample | PSNR (dB) | y-consistent samples | y-consistent pixels "
                  "| rows per sample | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in task["rows"]:
            fmt = lambda v, f: "—" if v is None else format(v, f)  # noqa: E731
            lines.append(f"| {r['prior']} | {r['method']} | {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | "
                         f"{fmt(r['sample_accuracy'], '.3f')} | "
                         f"{r['psnr']:.2f} | {fmt(r['consistent'], '.3f')} | {fmt(r['consistent_pixels'], '.3f')} | "
                         f"{r['rows_per_sample']:.0f} | "
                         f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
