"""Classifier-free guidance on class-conditional digits: sample accuracy, diversity, Frechet distance and test NLL
against the guidance scale gamma, for Blackout and for masking (issue 12's benchmark).

References: Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; Nisonoff et al., "Unlocking Guidance for
Discrete State-Space Diffusion and Flow Models", ICLR 2025 (Blackout's rate-space form); Rojas et al. 2025 (the
normalised masking form); docs/guidance.md says which form each process uses.

For each process a class-conditional U-Net is trained on the bundled 8x8 digits (17 levels) with
``model.num_classes=null`` (10 classes + a null class) and ``train.cond_dropout`` (the null-class rate, so the same
network also learns p(x0 | x_t)); ``--reuse`` picks up a finished run directory with the same settings. Then, for
every gamma (0 = unconditional model, 1 = conditional, > 1 sharper), ``--per-class`` samples of each of the 10
classes are drawn with the bridge sampler and scored with the library's quality classifier
(``evaluate.image_quality.load_or_train_classifier``: a small CNN trained on the clean training split, separately
from the diffusion model):

- accuracy: the fraction of samples the classifier assigns to their intended class (and the worst class's);
- within-class entropy: the entropy (bits) of the predicted-class histogram within one intended class, averaged
  over classes (0 = every sample of a class is read as one class; a diversity proxy that guidance drives to 0),
  and the all-class entropy of all samples' predicted classes (log2 10 = 3.32 bits when balanced);
- within-class L1: the mean pairwise L1 distance between two samples of the same class, in levels per pixel,
  averaged over classes; the same number of the real test images is the reference;
- FD, KID, recall, coverage: classifier-feature metrics of all samples against the training split
  (``evaluate.image_quality.image_family``), beside the same metrics of the test split;
- mean level and zero pixels: the mean pixel value (0..16) and the fraction of pixels at 0 (large gamma brightens
  strokes and scatters stray pixels, which raises the L1 distance without being diversity);
- test NLL: the ELBO bound on -log p(x | c) (each test image with its class) and on -log p(x) (the null class), in
  bits per dimension. Guidance does not change the model's likelihood, so it is reported once per model.

With ``--classifier-guidance`` it also measures classifier (predictor) guidance (Nisonoff et al., ICLR 2025:
R(x -> y | c) = R(x -> y) [p_t(c | y) / p_t(c | x)]^gamma, ``guidance/classifier.py``): a noisy classifier p_t(c | x_t)
is trained per run with ``ddiff train-classifier RUN`` (an MLP, ``classifier_overrides``), and samples are drawn on
the run's unconditional prediction (its null class, as ``ddiff sample --classifier`` does) with tau-leaping (the
bridge samplers never see the rates, so they cannot be guided this way), exact form at every gamma and the Taylor
form at ``--taylor-gammas`` (masking only: Blackout's network input is not one_hot(x_t)). Beside them, classifier-free
guidance is drawn again with the same sampler, steps and sample count, so that the two guidance kinds are compared
on one sampler. Every row is scored as the bridge rows are. The exact form costs one classifier call per candidate
move (Blackout: one birth per site below N; masking: K values of every masked site) at every step;
``--cg-per-class`` and ``--cg-steps`` (per process: ``masking=10``) bound that cost.

    python benchmarks/conditional_guidance.py            # trains both models (~10 min each on a loaded CPU core)
    python benchmarks/conditional_guidance.py --reuse    # reuse finished runs under OUT/runs/conditional_guidance
    python benchmarks/conditional_guidance.py --reuse --classifier-guidance --keep-cfg   # add the classifier-guidance
        # tables and keep the bridge rows of OUT/conditional_guidance.json (same settings) instead of redrawing them

Writes OUT/conditional_guidance.{md,json} and docs/images/guidance_{blackout,masking}.png (a grid of the samples
at the chosen gamma: row c = class c).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from discrete_diffusion.builders import build_proposal
from discrete_diffusion.cli import main as ddiff
from discrete_diffusion.config import load_config, to_dict
from discrete_diffusion.denoiser import ConditionalDenoiser
from discrete_diffusion.evaluate.feature_metrics import class_entropy_bits
from discrete_diffusion.evaluate.image_quality import image_family, load_or_train_classifier
from discrete_diffusion.guidance.classifier import GUIDED_SAMPLERS
from discrete_diffusion.guidance.classifier_train import load_classifier
from discrete_diffusion.likelihood import evaluate_nll
from discrete_diffusion.pipeline import Conditioning, LoadedRun, evaluate_run, generate_samples, load_run
from discrete_diffusion.report.grids import save_image_grid
from discrete_diffusion.samplers import build_sampler

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = ("blackout", "masking")
#: The accuracy the issue aims for at some gamma <= 2.
TARGET_ACCURACY = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--processes", nargs="+", choices=PROCESSES, default=list(PROCESSES))
    p.add_argument("--gammas", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0], help="guidance scales")
    p.add_argument("--per-class", type=int, default=50, help="samples per class (10 classes) at each gamma")
    p.add_argument("--sampler", default="bridge", help="sampler (registry name) for both processes")
    p.add_argument("--sampler-steps", type=int, default=100, help="sampler steps")
    p.add_argument("--train-steps", type=int, default=2500, help="optimizer steps per model")
    p.add_argument("--time-limit", type=float, default=10.0, help="training wall-clock cap per model, minutes")
    p.add_argument("--base-channels", type=int, default=32, help="U-Net width")
    p.add_argument("--cond-dropout", type=float, default=0.15, help="train.cond_dropout (null-class rate)")
    p.add_argument("--t-samples", type=int, default=16, help="importance draws of t per test image for the NLL")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.add_argument("--reuse", action="store_true", help="reuse finished run directories with the same settings")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--images", default=str(ROOT / "docs" / "images"), help="folder of the sample grids")
    p.add_argument("--classifier-guidance", action="store_true",
                   help="also measure classifier guidance and classifier-free guidance on --cg-sampler")
    p.add_argument("--keep-cfg", action="store_true", help="keep the bridge rows (and NLL) of OUT/conditional_guidance"
                   ".json, which must have the same settings, instead of drawing them again")
    p.add_argument("--cg-sampler", default="tau-leaping", choices=GUIDED_SAMPLERS[:2],
                   help="sampler of the classifier-guidance comparison")
    p.add_argument("--cg-steps", nargs="+", default=["100"], metavar="[PROCESS=]N",
                   help="steps of the classifier-guidance comparison (all processes, or one)")
    p.add_argument("--cg-per-class", nargs="+", default=["50"], metavar="[PROCESS=]N",
                   help="samples per class of the classifier-guidance comparison (all processes, or one)")
    p.add_argument("--taylor-gammas", type=float, nargs="*", default=[1.0, 2.0],
                   help="gammas of the Taylor-form rows (masking; Blackout has no Taylor form)")
    p.add_argument("--classifier-steps", type=int, default=3000, help="optimizer steps of each noisy classifier")
    args = p.parse_args(argv)
    if args.per_class < 2 or args.sampler_steps < 1 or args.train_steps < 1 or args.t_samples < 1:
        p.error("--per-class must be >= 2 and --sampler-steps, --train-steps, --t-samples >= 1")
    if any(not g >= 0 for g in args.gammas) or any(not g >= 0 for g in args.taylor_gammas):
        p.error("--gammas and --taylor-gammas must be >= 0")
    try:
        args.cg_steps = per_process(args.cg_steps, 1)
        args.cg_per_class = per_process(args.cg_per_class, 2)
    except ValueError as err:
        p.error(str(err))
    if args.classifier_steps < 1:
        p.error("--classifier-steps must be >= 1")
    if args.keep_cfg and not args.classifier_guidance:
        p.error("--keep-cfg only makes sense with --classifier-guidance")
    return args


def per_process(items: list[str], minimum: int) -> dict[str, int]:
    """``["100", "masking=20"]`` -> {"blackout": 100, "masking": 20}: a bare N sets every process, PROCESS=N one."""
    out: dict[str, int] = {}
    for item in items:
        name, _, value = item.rpartition("=")
        if name and name not in PROCESSES:
            raise ValueError(f"unknown process {name!r} in {item!r}: expected one of {', '.join(PROCESSES)}")
        if not value.isdigit() or int(value) < minimum:
            raise ValueError(f"expected [PROCESS=]N with an integer N >= {minimum}, got {item!r}")
        out.update({name: int(value)} if name else dict.fromkeys(PROCESSES, int(value)))
    missing = [name for name in PROCESSES if name not in out]
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}: give a bare N for every process")
    return out


def train_overrides(process: str, args: argparse.Namespace) -> list[str]:
    """The ``ddiff train`` overrides of one model (recorded in the results)."""
    return [f"process.name={process}", "model.num_classes=null", f"train.cond_dropout={args.cond_dropout}",
            f"train.steps={args.train_steps}", "train.batch_size=64", "train.eval_every=500",
            "train.sample_every=100000", "train.checkpoint_every=500", "train.warmup_steps=100",
            f"model.base_channels={args.base_channels}", "train.device=cpu", f"train.seed={args.seed}",
            f"train.time_limit_minutes={args.time_limit:g}"]


def matches(run_dir: Path, overrides: list[str], checkpoint: bool = True) -> bool:
    """Whether ``run_dir`` holds a run whose config has every override's value (and a checkpoint, unless
    ``checkpoint`` is False: a classifier folder)."""
    if not (run_dir / "config.yaml").is_file() or (
            checkpoint and not any((run_dir / d).is_dir() for d in ("best", "checkpoints"))):
        return False
    config = to_dict(load_config(run_dir / "config.yaml"))
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        have = config[section][name]
        if str(have).lower() != value.lower() and not (key == "model.num_classes" and value == "null"
                                                       and have in (None, 10)):
            try:
                if float(have) == float(value):
                    continue
            except (TypeError, ValueError):
                pass
            return False
    return True


def training_summary(run_dir: Path) -> dict:
    """Steps reached, training seconds and the last / best validation NLL from ``metrics.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_nll_bits_per_dim" in r]
    best = min(val, key=lambda r: r["val_nll_bits_per_dim"]) if val else None
    return {"steps": train[-1]["step"] if train else 0, "train_seconds": train[-1].get("elapsed_s") if train else None,
            "best_val_nll_bits_per_dim": best and best["val_nll_bits_per_dim"], "best_val_step": best and best["step"]}


def within_class_l1(x: torch.Tensor) -> float:
    """Mean pairwise L1 distance between distinct rows of ``x`` (n, *sites), in levels per site (n >= 2)."""
    flat = x.reshape(x.shape[0], -1).double()
    n = flat.shape[0]
    return float(torch.cdist(flat, flat, p=1).sum() / (n * (n - 1) * flat.shape[1]))


def per_class_scores(x: torch.Tensor, intended: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> dict:
    """Accuracy (overall and worst class), mean within-class entropy of predicted classes (bits), mean
    within-class pairwise L1 (levels per pixel), and the mean pixel level and fraction of zero pixels.
    x (n, H, W), intended and predicted (n,)."""
    acc, ent, l1 = [], [], []
    for c in range(num_classes):
        rows = intended == c
        if int(rows.sum()) < 2:
            continue
        acc.append(float((predicted[rows] == c).double().mean()))
        ent.append(class_entropy_bits(predicted[rows], num_classes))
        l1.append(within_class_l1(x[rows]))
    return {"accuracy": float((predicted == intended).double().mean()), "worst_class_accuracy": min(acc),
            "mean_level": float(x.double().mean()), "zero_fraction": float((x == 0).double().mean()),
            "within_class_entropy_bits": sum(ent) / len(ent), "within_class_l1": sum(l1) / len(l1)}


def test_nll(run: LoadedRun, t_samples: int, seed: int) -> dict:
    """ELBO bounds (bits/dim) on the test split: -log p(x | c) with each image's class, and -log p(x) via the null
    class."""
    cond = evaluate_run(run, "test", t_samples=t_samples, seed=seed, progress=False)
    null = ConditionalDenoiser(run.denoiser, run.denoiser.num_classes)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    uncond = evaluate_nll(run.process, null, run.schedule, run.dataset.test, build_proposal(run.config), t_samples,
                          256, generator, run.device)
    return {"cond_bits_per_dim": cond.nll_bits_per_dim, "cond_stderr": cond.nll_bits_per_dim_stderr,
            "null_bits_per_dim": uncond.nll_bits_per_dim, "null_stderr": uncond.nll_bits_per_dim_stderr,
            "prior": cond.prior, "t_samples": t_samples}


def classifier_overrides(args: argparse.Namespace) -> list[str]:
    """The ``ddiff train-classifier`` overrides of each noisy classifier: a residual MLP (cheap per call, which the
    exact form's one call per candidate move needs), unconditional, on the run's data, process and schedule."""
    return ["model.backbone=mlp", "model.hidden=256", "model.depth=3", "model.dropout=0.1", "model.num_classes=0",
            f"train.steps={args.classifier_steps}", "train.batch_size=128", "train.eval_every=500",
            "train.warmup_steps=100", "train.device=cpu", f"train.seed={args.seed}"]


def noisy_classifier(run: LoadedRun, run_dir: Path, args: argparse.Namespace) -> tuple[object, dict, bool]:
    """Train (or, with --reuse and the same overrides, reuse) ``RUN/classifier``; returns the loaded classifier, its
    metrics.json and whether it was reused."""
    out, overrides = run_dir / "classifier", classifier_overrides(args)
    reused = args.reuse and (out / "metrics.json").is_file() and matches(out, overrides, checkpoint=False)
    if not reused:
        print(f"[{run_dir.name}] ddiff train-classifier {run_dir} {' '.join(overrides)}", flush=True)
        shutil.rmtree(out, ignore_errors=True)   # a classifier directory holds its checkpoints: start anew
        if ddiff(["train-classifier", str(run_dir), "--out", str(out), "--no-progress", *overrides]) != 0:
            raise SystemExit(f"training the classifier of {run_dir} failed")
    return load_classifier(out, run), json.loads((out / "metrics.json").read_text()), reused


class CountingClassifier:
    """A noisy classifier that counts the rows it evaluates (the exact form's candidate moves plus one base row per
    sample and step; the Taylor form's gradient calls): ``rows`` and ``calls``."""

    def __init__(self, classifier) -> None:
        self.classifier, self.rows, self.calls = classifier, 0, 0

    def __getattr__(self, name: str):
        return getattr(self.classifier, name)

    def __call__(self, xt: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        self.rows, self.calls = self.rows + xt.shape[0], self.calls + 1
        return self.classifier(xt, lam)

    def onehot_log_probs(self, onehot: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        self.rows, self.calls = self.rows + onehot.shape[0], self.calls + 1
        return self.classifier.onehot_log_probs(onehot, lam)


def score(run: LoadedRun, clf, x: torch.Tensor, intended: torch.Tensor, runs: Path) -> dict:
    """Every column of a row (``per_class_scores`` and the classifier-feature family) for samples x (n, H, W)."""
    _, predicted = clf.features_and_classes(x)
    features = image_family(run, x, run.dataset.test, cache_dir=runs / "quality")
    return {**per_class_scores(x, intended, predicted, run.denoiser.num_classes),
            **{k: v["samples"] for k, v in features.items()}}


def guidance_comparison(process: str, run: LoadedRun, run_dir: Path, clf, args: argparse.Namespace,
                        runs: Path) -> dict:
    """Classifier-free and classifier guidance (exact form; Taylor form at --taylor-gammas where the process has
    one) on one sampler, at every gamma, with the same seed and sample count, scored like the bridge rows."""
    noisy, metrics, reused = noisy_classifier(run, run_dir, args)
    per_class, steps = args.cg_per_class[process], args.cg_steps[process]
    classes = [c for c in range(run.denoiser.num_classes) for _ in range(per_class)]
    intended = torch.tensor(classes)
    sampler = build_sampler(args.cg_sampler, num_steps=steps)
    configs = [("classifier-free", None, g) for g in args.gammas] + [("classifier", "exact", g) for g in args.gammas]
    if run.process.input_kind == "tokens":          # the Taylor form needs the input one_hot(x_t)
        configs += [("classifier", "taylor", g) for g in args.taylor_gammas]
    rows = []
    for kind, form, gamma in configs:
        counter = CountingClassifier(noisy)
        cond = Conditioning(classes=classes, guidance=float(gamma)) if form is None else Conditioning(
            classes=classes, guidance=float(gamma), classifier=counter, guidance_form=form)
        start = time.perf_counter()
        x = generate_samples(run, sampler, len(classes), len(classes), seed=args.seed, progress=False,
                             conditioning=cond)
        seconds = time.perf_counter() - start
        row = {"guidance": kind, "form": form, "gamma": float(gamma), **score(run, clf, x, intended, runs),
               "sample_seconds": round(seconds, 1),
               "classifier_rows_per_sample_step": round(counter.rows / (len(classes) * steps), 1)}
        rows.append(row)
        print(f"[{process}] {kind} {form or ''} gamma {gamma:g} ({args.cg_sampler} {steps}): accuracy "
              f"{row['accuracy']:.3f}, FD {row['frechet_distance']:.3f}, within-class L1 {row['within_class_l1']:.3f} "
              f"({seconds:.0f} s)", flush=True)
    levels = {k: v["val_accuracy"] for k, v in metrics["at_noise_levels"].items()}
    return {"sampler": args.cg_sampler, "steps": steps, "per_class": per_class, "rows": rows,
            "noisy_classifier": {"overrides": classifier_overrides(args), "reused": reused,
                                 "val_accuracy_at": levels, "val_ce_bits": metrics["val_ce_bits"],
                                 "steps_done": metrics["steps_done"], "best_step": metrics["best_step"],
                                 "train_seconds": metrics["train_seconds"], "parameters": metrics["parameters"]}}


def kept_results(out: Path, args: argparse.Namespace) -> dict[str, dict]:
    """The bridge results per process of OUT/conditional_guidance.json (--keep-cfg), checked to have the same
    settings as this invocation."""
    path = out / "conditional_guidance.json"
    if not path.is_file():
        raise SystemExit(f"--keep-cfg needs {path} from an earlier run")
    old = json.loads(path.read_text())
    for key in ("gammas", "per_class", "sampler", "sampler_steps", "train_steps", "time_limit", "base_channels",
                "cond_dropout", "t_samples", "seed"):
        if old["args"][key] != getattr(args, key):
            raise SystemExit(f"--keep-cfg: {path} has {key} = {old['args'][key]!r}, this run {getattr(args, key)!r}")
    kept = {r["process"]: {k: v for k, v in r.items() if k != "comparison"} for r in old["results"]}
    for r in kept.values():
        r["bridge_rows_from"] = {"command": old.get("bridge_rows_from", {}).get("command", old["command"]),
                                 "date": old.get("bridge_rows_from", {}).get("date", old["date"])}
    return kept


def choose_gamma(rows: list[dict]) -> float:
    """The gamma of the picture: the smallest reaching TARGET_ACCURACY, else the most accurate (smallest on ties)."""
    reached = [r["gamma"] for r in rows if r["accuracy"] >= TARGET_ACCURACY]
    if reached:
        return min(reached)
    return max(rows, key=lambda r: (r["accuracy"], -r["gamma"]))["gamma"]


def run_process(process: str, args: argparse.Namespace, runs: Path, images: Path, kept: dict | None = None) -> dict:
    run_dir = runs / process
    overrides = train_overrides(process, args)
    reused = args.reuse and matches(run_dir, overrides)
    if not reused:
        if (run_dir / "config.yaml").exists():
            raise SystemExit(f"{run_dir} holds another run: remove it, or pass --reuse with its settings")
        print(f"[{process}] training: ddiff train --out {run_dir} {' '.join(overrides)}", flush=True)
        if ddiff(["train", "--out", str(run_dir), "--no-progress", *overrides]) != 0:
            raise SystemExit(f"training {process} failed")
    run = load_run(run_dir, device="cpu")
    num_classes = run.denoiser.num_classes
    clf = load_or_train_classifier(run.dataset, runs / "quality", device=run.device)
    if kept is not None:
        if process not in kept:
            raise SystemExit(f"--keep-cfg: the earlier results have no {process} rows")
        return {**kept[process], "comparison": guidance_comparison(process, run, run_dir, clf, args, runs)}
    test, test_labels = run.dataset.test, run.dataset.test_labels
    _, test_pred = clf.features_and_classes(test)
    reference = per_class_scores(test, test_labels, test_pred, num_classes)
    nll = test_nll(run, args.t_samples, args.seed)
    print(f"[{process}] test NLL -log p(x|c) {nll['cond_bits_per_dim']:.4f}, -log p(x) {nll['null_bits_per_dim']:.4f}"
          " bits/dim", flush=True)
    classes = [c for c in range(num_classes) for _ in range(args.per_class)]
    intended = torch.tensor(classes)
    sampler = build_sampler(args.sampler, num_steps=args.sampler_steps)
    rows, samples_by_gamma, feature_ref = [], {}, None
    for gamma in args.gammas:
        start = time.perf_counter()
        x = generate_samples(run, sampler, len(classes), len(classes), seed=args.seed, progress=False,
                             conditioning=Conditioning(classes=classes, guidance=float(gamma)))
        seconds = time.perf_counter() - start
        _, predicted = clf.features_and_classes(x)
        features = image_family(run, x, test, cache_dir=runs / "quality")
        feature_ref = {k: v["reference"] for k, v in features.items()}
        row = {"gamma": float(gamma), **per_class_scores(x, intended, predicted, num_classes),
               **{k: v["samples"] for k, v in features.items()}, "sample_seconds": round(seconds, 1)}
        rows.append(row)
        samples_by_gamma[float(gamma)] = x
        print(f"[{process}] gamma {gamma:g}: accuracy {row['accuracy']:.3f}, FD {row['frechet_distance']:.3f}, "
              f"within-class L1 {row['within_class_l1']:.3f} ({seconds:.0f} s)", flush=True)
    best = choose_gamma(rows)
    shown = torch.cat([samples_by_gamma[best][intended == c][:10] for c in range(num_classes)])
    grid = save_image_grid(shown, run.dataset.num_states, images / f"guidance_{process}.png", nrow=10)
    result = {"process": process, "run_dir": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(
        run_dir), "reused": reused, "overrides": overrides, "training": training_summary(run_dir),
              "classifier": {"test_accuracy": clf.test_accuracy, "status": clf.status}, "test_nll": nll,
              "reference": {**reference, **feature_ref, "num_images": int(test.shape[0])}, "rows": rows,
              "grid_gamma": best, "grid": str(grid.relative_to(ROOT)) if grid.is_relative_to(ROOT) else str(grid)}
    if args.classifier_guidance:
        result["comparison"] = guidance_comparison(process, run, run_dir, clf, args, runs)
    return result


def markdown(results: list[dict], args: argparse.Namespace, command: str, date: str) -> str:
    n = args.per_class * 10
    compared = all("comparison" in r for r in results)
    kept = results[0].get("bridge_rows_from")
    scope = ("Classifier-free guidance with the bridge sampler (first table of each process), then classifier-free "
             "and classifier guidance with one guided-rate sampler (second table; see there). " if compared else
             "Only classifier-free guidance is measured (run with `--classifier-guidance` for classifier guidance). ")
    if kept:
        scope += (f"The bridge rows and the NLL are kept from `{kept['command']}` ({kept['date']}), same settings. ")
    lines = [f"# {'Classifier-free and classifier' if compared else 'Classifier-free'} guidance on class-conditional "
             f"digits", "",
             f"`{command}` ({date}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"CPU, 1 thread)", "",
             scope +
             f"{args.per_class} samples per class x 10 classes = {n} samples per gamma, {args.sampler} sampler, "
             f"{args.sampler_steps} steps, seed {args.seed}. Accuracy: the quality classifier's "
             f"(a small CNN trained on "
             f"the clean training split, test accuracy {results[0]['classifier']['test_accuracy']:.3f}) agreement with "
             f"the intended class. Within-class entropy: entropy (bits) of the predicted classes within one intended "
             f"class, mean over classes (0: every sample of a class is read as one class). All-class entropy: the "
             f"same over all samples (log2 10 = 3.32 when balanced). L1: mean pairwise L1 distance of two samples of "
             f"one class, levels per pixel, mean "
             f"over classes. FD / KID / recall / coverage: classifier features against the training split. Mean level, "
             f"zero pixels: the mean pixel value (0..16) and the fraction of pixels at 0. The "
             f"reference row is the real test split ({results[0]['reference']['num_images']} images; its FD carries a "
             f"larger small-sample bias than the {n} samples'), scored the same way.", ""]
    for r in results:
        t, nll = r["training"], r["test_nll"]
        lines += [f"## {r['process']}", "",
                  f"Trained {t['steps']} steps ({t['train_seconds']} s of training; best validation bound "
                  f"{t['best_val_nll_bits_per_dim']:.4f} bits/dim at step {t['best_val_step']}). Test NLL bound "
                  f"(t-samples {nll['t_samples']}, prior {nll['prior']}): -log p(x | c) = "
                  f"{nll['cond_bits_per_dim']:.4f} ± {nll['cond_stderr']:.4f} bits/dim, -log p(x) (null class) = "
                  f"{nll['null_bits_per_dim']:.4f} ± {nll['null_stderr']:.4f} bits/dim; gamma does not change them.",
                  "",
                  "| gamma | accuracy | worst class | within-class entropy (bits) | all-class entropy (bits) | "
                  "within-class L1 | FD | KID | recall | "
                  "coverage | mean level | zero pixels | sampling s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['gamma']:g} | {row['accuracy']:.3f} | {row['worst_class_accuracy']:.2f} | "
                         f"{row['within_class_entropy_bits']:.3f} | {row['class_entropy_bits']:.3f} | "
                         f"{row['within_class_l1']:.3f} | "
                         f"{row['frechet_distance']:.3f} | {row['kid']:.4f} | {row['recall']:.3f} | "
                         f"{row['coverage']:.3f} | {row['mean_level']:.2f} | {row['zero_fraction']:.3f} | "
                         f"{row['sample_seconds']:.0f} |")
        ref = r["reference"]
        lines += [f"| test images | {ref['accuracy']:.3f} | {ref['worst_class_accuracy']:.2f} | "
                  f"{ref['within_class_entropy_bits']:.3f} | {ref['class_entropy_bits']:.3f} | "
                  f"{ref['within_class_l1']:.3f} | {ref['frechet_distance']:.3f} | "
                  f"{ref['kid']:.4f} | {ref['recall']:.3f} | {ref['coverage']:.3f} | {ref['mean_level']:.2f} | "
                  f"{ref['zero_fraction']:.3f} | |", "",
                  f"Picture: `{r['grid']}` at gamma = {r['grid_gamma']:g} (the smallest gamma reaching "
                  f"{TARGET_ACCURACY:.0%} accuracy, else the most accurate); row c = class c.", ""]
        if "comparison" in r:
            lines += comparison_markdown(r["process"], r["comparison"])
    return "\n".join(lines)


def comparison_markdown(process: str, comp: dict) -> list[str]:
    """The same-sampler table of classifier-free and classifier guidance of one process."""
    nc = comp["noisy_classifier"]
    levels = " / ".join(f"{v:.3f}" for v in nc["val_accuracy_at"].values())
    times = " / ".join(k.split("=")[1] for k in nc["val_accuracy_at"])
    lines = [f"### {process}: classifier-free and classifier guidance, {comp['sampler']} {comp['steps']} steps", "",
             f"{comp['per_class']} samples per class x 10 classes = {comp['per_class'] * 10} samples per row, seed as "
             f"above, same sampler for both kinds. Classifier guidance: "
             f"rates R(x -> y) [p_t(c | y) / p_t(c | x)]^gamma "
             f"on the run's null-class (unconditional) prediction; gamma 0 is the unconditional model for both kinds. "
             f"Noisy classifier (`ddiff train-classifier RUN {' '.join(nc['overrides'])}`; {nc['parameters']:,} "
             f"parameters, {nc['steps_done']} steps in {nc['train_seconds']:.0f} s, best at step {nc['best_step']}, "
             f"validation cross-entropy {nc['val_ce_bits']:.3f} bits): validation accuracy {levels} at t = {times}. "
             f"Exact form: one classifier row per candidate move per step; Taylor form: one gradient per step. "
             f"Classifier rows per sample-step: rows the classifier evaluated (candidates and the current state) / "
             f"(samples x steps).", "",
             "| guidance | form | gamma | accuracy | worst class | "
             "within-class entropy (bits) | all-class entropy (bits) | "
             "within-class L1 | FD | KID | recall | coverage | mean level | zero pixels | sampling s | "
             "classifier rows per "
             "sample-step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in comp["rows"]:
        lines.append(f"| {row['guidance']} | {row['form'] or ''} | {row['gamma']:g} | {row['accuracy']:.3f} | "
                     f"{row['worst_class_accuracy']:.2f} | {row['within_class_entropy_bits']:.3f} | "
                     f"{row['class_entropy_bits']:.3f} | {row['within_class_l1']:.3f} | "
                     f"{row['frechet_distance']:.3f} | "
                     f"{row['kid']:.4f} | {row['recall']:.3f} | {row['coverage']:.3f} | {row['mean_level']:.2f} | "
                     f"{row['zero_fraction']:.3f} | {row['sample_seconds']:.0f} | "
                     f"{row['classifier_rows_per_sample_step']:g} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out, images = Path(args.out), Path(args.images)
    runs = out / "runs" / "conditional_guidance"
    out.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/conditional_guidance.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    kept = kept_results(out, args) if args.keep_cfg else None
    results = [run_process(p, args, runs, images, kept) for p in args.processes]
    text = markdown(results, args, command.strip(), date)
    print(text)
    (out / "conditional_guidance.md").write_text(text + "\n")
    payload = {"command": command.strip(), "date": date, "torch": torch.__version__, "args": vars(args),
               "target_accuracy": TARGET_ACCURACY,
               "guidance": "classifier-free and classifier" if args.classifier_guidance else "classifier-free only",
               "results": results}
    if kept:
        payload["bridge_rows_from"] = results[0]["bridge_rows_from"]
    (out / "conditional_guidance.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
