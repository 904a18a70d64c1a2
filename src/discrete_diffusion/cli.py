"""The ``ddiff`` command line: demo, train, sample, evaluate, train-planner, train-classifier, report, posterior."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .posterior_cli import add_posterior_parser, cmd_posterior
from .sample_conditioning import conditioning_from_args, conditioning_suffix

#: The demo: 1500 steps (validation NLL plateaus near 1.70 bits/dim after about 1250 steps and the model then
#: overfits the 1350 training images), validation every 250 steps to pick the best EMA checkpoint, and a
#: 8-minute safety limit on training so the whole demo stays under 10 minutes on a slow 2-core machine.
DEMO_OVERRIDES = ["train.steps=1500", "train.eval_every=250", "train.eval_t_samples=8", "train.sample_every=100000",
                  "train.checkpoint_every=500", "train.time_limit_minutes=8", "sample.steps=200",
                  "evaluate.t_samples=16"]


def _datasets_help() -> str:
    from .data import DATASETS
    from .processes import PROCESSES
    from .samplers import SAMPLERS
    from .schedules import SCHEDULES
    return (f"datasets: {', '.join(sorted(DATASETS))}\nprocesses: {', '.join(sorted(PROCESSES))}\n"
            f"schedules: {', '.join(sorted(SCHEDULES))}\nsamplers: {', '.join(sorted(SAMPLERS))}")


def _add_sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="sampler name (default: the run's sample.sampler)")
    p.add_argument("--steps", type=int, default=None,
                   help="number of sampler steps, at most 1000000 (default: sample.steps; exact samplers ignore it)")
    p.add_argument("--temperature", type=float, default=None, help="divide log p(x0 | x_t) by this (> 0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling on p(x0 | x_t), in (0, 1]")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable x0 values (k >= 1; 0 = off)")
    p.add_argument("--cache", action="store_true", default=None,
                   help="reuse predictions of rows whose x_t did not change (masking only; approximate with a "
                        "trained network, which is conditioned on the noise level)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sampler option, repeatable, value parsed as YAML: e.g. -o theta=0.4, "
                        "-o multi_jump=first, -o eta=0.05 -o strategy=rescale, -o final_denoise=false")


def sampler_options(args: argparse.Namespace) -> dict:
    """The sampler options given on the command line (flags and --option KEY=VALUE)."""
    import yaml

    options: dict = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"malformed --option {item!r}: expected KEY=VALUE, e.g. --option theta=0.4")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"malformed --option {item!r}: cannot parse the value {value!r}") from None
    for key in ("temperature", "top_p", "top_k", "cache"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def _add_companion_options(parser: argparse.ArgumentParser, run_help: str, name: str) -> None:
    """The arguments shared by train-planner and train-classifier (a network trained for a run, into its own
    run-like directory, default RUN_DIR/NAME)."""
    parser.add_argument("run_dir", help=run_help)
    parser.add_argument("overrides", nargs="*", help="model.key=value and train.key=value overrides")
    parser.add_argument("--out", default=None, help=f"output folder (default: RUN_DIR/{name})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training in --out from its latest checkpoint (config from "
                             "--out/config.yaml plus overrides, e.g. a larger train.steps)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N; other than auto it replaces train.device (default: the "
                             "config's train.device)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddiff", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Exact continuous-time diffusion models on discrete state spaces (Blackout, and more).",
        epilog="Run `ddiff COMMAND --help` for each command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train Blackout on the bundled digits, sample, and evaluate (about 5 min on CPU)",
                          description="Train a Blackout diffusion model on scikit-learn's 8x8 digits (17 levels, "
                                      "1350/150/297 train/val/test split), draw a sample grid with the exact bridge "
                                      "sampler, and report the test NLL bound in bits per dimension. Writes "
                                      "samples.png, samples.npy and metrics.json into --out.")
    demo.add_argument("--out", default="ddiff-demo", help="output folder (default: ./ddiff-demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default 1500)")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    train = sub.add_parser("train", help="train a model from a config file and key=value overrides",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train a model. The config is built from defaults, then --config FILE "
                                       "(YAML), then overrides such as train.steps=1000 data.name=array "
                                       "data.path=x.npy. The resolved config, metrics.jsonl, checkpoints and "
                                       "sample grids go into --out. process.schedule defaults to the process's "
                                       "grid: blackout for process.name=blackout, log-linear for masking, uniform "
                                       "and matrix; a schedule you set is kept. Ctrl-C stops training; resume "
                                       "from the last checkpoint with --resume.",
                           epilog=_datasets_help())
    train.add_argument("overrides", nargs="*", help="section.key=value overrides (sections: data, process, model, "
                                                     "train, sample, evaluate)")
    train.add_argument("--config", default=None, help="YAML config file")
    train.add_argument("--out", required=True, help="run directory to create (or resume with --resume)")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sample = sub.add_parser("sample", help="draw samples from a trained run",
                            description="Draw samples from RUN_DIR's EMA weights; writes an .npy array "
                                        "(N, *sites), a .json record of the sampler and its options and, for "
                                        "images, a PNG grid, named {sampler}_{steps}steps_seed{seed}.{npy,json,png} "
                                        "(e.g. bridge_200steps_seed0.npy), or {sampler}_seed{seed}.* for exact "
                                        "samplers, which take no steps (exact_seed0.npy); ddpd adds -planner / "
                                        "-masked to {sampler} with --planner / --masked-denoiser; conditioning "
                                        "adds _class{C} (_classes for several), _g{gamma} and _infill.",
                            epilog=_datasets_help(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    _add_sample_options(sample)
    sample.add_argument("--num-samples", "--num", dest="num", type=int, default=None,
                        help="number of samples (default: sample.num_samples); under torchrun spell it --num-samples "
                             "(torchrun reads --num as its own --numa-binding)")
    sample.add_argument("--batch-size", type=int, default=None, help="samples per batch")
    sample.add_argument("--seed", type=int, default=0, help="random seed in 0..2^62 (same seed, same samples)")
    sample.add_argument("--out", default=None, help="output folder (default: RUN_DIR/samples)")
    sample.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which weights")
    sample.add_argument("--planner", default=None, metavar="DIR",
                        help="ddpd sampler on uniform noise: a planner trained by `ddiff train-planner` (its output "
                             "folder, e.g. RUN_DIR/planner) instead of the planner derived from the denoiser")
    sample.add_argument("--masked-denoiser", default=None, metavar="RUN",
                        help="ddpd sampler on uniform noise: a masking-process run of the same data whose denoiser "
                             "fills the sites the planner calls noise (DDPD's pairing; docs/samplers.md)")
    sample.add_argument("--class", dest="classes", action="append", default=None, metavar="C",
                        help="class-conditional runs: the class of the samples; repeat it or give a list (3,5) to "
                             "cycle over rows, or 'all' for one class per row cycling through every class")
    sample.add_argument("--guidance", type=float, default=None, metavar="GAMMA",
                        help="classifier-free guidance scale with --class: 0 unconditional, 1 conditional (default), "
                             "> 1 sharper (docs/guidance.md); with --classifier the classifier guidance scale")
    sample.add_argument("--classifier", default=None, metavar="DIR",
                        help="classifier guidance on the reverse rates with a classifier from `ddiff train-classifier` "
                             "(e.g. RUN_DIR/classifier), towards --class; samplers tau-leaping, euler (exact: masking)")
    sample.add_argument("--guidance-form", default="exact", choices=["exact", "taylor"],
                        help="with --classifier: exact (one classifier call per candidate move) or taylor (one "
                             "gradient, first order; one-hot input processes)")
    sample.add_argument("--infill", default=None, metavar="KNOWN.npy",
                        help="infilling: an .npy of the run's site shape with the known values (used with --mask)")
    sample.add_argument("--mask", default=None, metavar="MASK.npy",
                        help="infilling: an .npy of the run's site shape, true (1) where --infill's value is known")
    sample.add_argument("--prompt", default=None, metavar="TEXT",
                        help="text runs: a template, each '_' a blank to fill, shorter than seq_len = blanks after")
    sample.add_argument("--allow-data-change", action="store_true",
                        help="use the data even if its checksum differs from the one recorded at training (warns)")
    sample.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    sample.add_argument("--no-progress", action="store_true", help="hide progress bars")

    evaluate = sub.add_parser("evaluate", help="test NLL upper bound in bits per dimension, or sample quality",
                              description="Estimate the negative ELBO of a data split in bits per dimension, "
                                          "with its standard error over examples. With --samples PATH (an .npy "
                                          "file or a folder of them from `ddiff sample`), or --sampler / --steps / "
                                          "--num-samples (samples drawn now), report sample-quality metrics beside "
                                          "those of held-out real data of --split, and write "
                                          "RUN_DIR/quality/STEM.json (docs/quality.md).")
    evaluate.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"],
                          help="data split (likelihood), or the split of the real reference data (sample quality)")
    evaluate.add_argument("--samples", default=None, metavar="PATH",
                          help="sample quality of an .npy file or of each .npy file in a folder")
    _add_sample_options(evaluate)
    evaluate.add_argument("--num-samples", dest="num", type=int, default=None,
                          help="sample quality of this many samples drawn now (default: sample.num_samples)")
    evaluate.add_argument("--t-samples", type=int, default=None, help="importance draws of t per example")
    evaluate.add_argument("--judge-steps", type=int, default=None, metavar="N",
                          help="text sample quality: training steps of the AR judge (default 800; docs/quality.md)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="examples (or samples drawn) per batch")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed in 0..2^62 (also of samples drawn now)")
    evaluate.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which weights")
    evaluate.add_argument("--json", action="store_true",
                          help="print the result as JSON (key nll_bits_per_dim; sample quality: the quality record)")
    evaluate.add_argument("--allow-data-change", action="store_true",
                          help="evaluate even if a data file's checksum differs from the one recorded at training "
                               "(warns); without it such a run is refused")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")

    planner = sub.add_parser("train-planner", help="train a DDPD planner network for a uniform-noise run",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Train a planner (P(site is noise | x_t), binary cross-entropy on draws of "
                                         "the forward process) for the ddpd sampler, on RUN_DIR's data and schedule. "
                                         "The run's model and train sections are the planner's unless overridden "
                                         "(model.* and train.* only, e.g. model.depth=2 train.steps=500). It trains "
                                         "with `ddiff train`'s loop into a run-like directory (config.yaml, data.json, "
                                         "metrics.jsonl, checkpoints/, best/), so --resume, torchrun and "
                                         "train.precision=bf16 work as for `ddiff train`; at the end it writes "
                                         "planner.safetensors (the best EMA weights) and metrics.json (validation "
                                         "BCE, and that of the planner derived from the run's denoiser on the same "
                                         "draws). Ctrl-C stops training; continue with --resume.",
                             epilog="then: ddiff sample RUN_DIR --sampler ddpd --planner RUN_DIR/planner")
    _add_companion_options(planner, "a run directory of a uniform-noise model (`ddiff train process.name=uniform`)",
                           "planner")

    clf = sub.add_parser("train-classifier", help="train a noisy classifier p(c | x_t) for classifier guidance",
                         description="Train a noise-conditioned classifier (cross-entropy on (x_t ~ q_t(. | x0), c), "
                                     "t ~ U(0, 1) through the run's schedule) on RUN_DIR's labelled data. The run's "
                                     "model and train sections are the classifier's unless overridden (model.* and "
                                     "train.* only). It trains with `ddiff train`'s loop into a run-like directory "
                                     "(config.yaml, data.json, metrics.jsonl, checkpoints/, best/), so --resume, "
                                     "torchrun and train.precision=bf16 work as for `ddiff train`; at the end it "
                                     "writes classifier.safetensors (the best EMA weights) and metrics.json "
                                     "(validation accuracy and cross-entropy at a few noise levels). Ctrl-C stops "
                                     "training; continue with --resume.",
                         epilog="then: ddiff sample RUN_DIR --sampler tau-leaping --class 3 --classifier "
                                "RUN_DIR/classifier --guidance 2")
    _add_companion_options(clf, "a run directory whose data have class labels", "classifier")

    report = sub.add_parser("report", help="write a PNG and an HTML page: samples, training curves, sample quality",
                            description="Summarise RUN_DIR in one PNG and a self-contained HTML page (the PNG "
                                        "inline, tables as text): a grid of the newest RUN_DIR/samples/*.npy "
                                        "(decoded text for text and DNA runs), loss and bits/dim against step from "
                                        "metrics.jsonl (its last 32 MiB; corrupt lines and NaN skipped and counted), "
                                        "and, if RUN_DIR/quality/*.json exist (`ddiff evaluate --samples`), a "
                                        "quality-vs-NFE curve per sampler and a table of every metric. Missing "
                                        "parts are listed in the report. See docs/report.md.")
    report.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    report.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    report.add_argument("--samples", default=None, metavar="PATH",
                        help="the samples to show: a .npy, or a .txt of decoded text (default: the newest "
                             "RUN_DIR/samples/*.npy)")
    report.add_argument("--metric", default=None, metavar="NAME",
                        help="quality metric of the NFE chart (default: the first metric common to all "
                             "RUN_DIR/quality/*.json)")
    add_posterior_parser(sub, _add_sample_options)
    return parser


def run_training(config_path: str | None, overrides: list[str], out: str, resume: bool, progress: bool):
    from .config import load_config
    from .train.trainer import Trainer, resumable_checkpoint

    out_dir = Path(out)
    if resume:  # nothing to resume is an error, before anything is built or written
        resumable_checkpoint(out_dir)
    if resume and config_path is None:
        config_path = str(out_dir / "config.yaml")
    # resuming: the run's architecture keys absent from its config.yaml mean the architecture it was trained with
    config = load_config(config_path, overrides, legacy_from=out_dir / "config.yaml" if resume else None)
    trainer = Trainer(config, out_dir, progress=progress)
    return trainer.fit(resume=resume)


def cmd_demo(args: argparse.Namespace) -> int:
    from .builders import build_sampler_from
    from .pipeline import evaluate_run, generate_samples, load_run, save_samples, write_json
    from .train.atomic_io import user_dir
    from .train.distributed import env_world

    if env_world()[1] > 1:
        raise ValueError("`ddiff demo` runs in one process; under torchrun use `ddiff train`, `ddiff sample` and "
                         "`ddiff evaluate`")
    start = time.time()
    overrides = DEMO_OVERRIDES + [f"train.device={args.device}"]
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    out = user_dir(args.out)
    result = run_training(None, overrides, str(out), resume=False, progress=not args.no_progress)
    train_s = time.time() - start
    run = load_run(out, "best", args.device)
    sampler = build_sampler_from(run.config)
    samples = generate_samples(run, sampler, 64, seed=0, progress=not args.no_progress)
    paths = save_samples(samples, run, out)
    nll = evaluate_run(run, "test", progress=not args.no_progress)
    metrics = {**nll.to_dict(), "split": "test", "dataset": run.config.data.name, "process": run.config.process.name,
               "best_step": result.best_step, "best_val_nll_bits_per_dim": result.best_val_nll_bits_per_dim,
               "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - start, 1),
               "sampler": sampler.name, "sampler_steps": sampler.num_steps, "checkpoint": str(run.checkpoint)}
    write_json(out / "metrics.json", metrics)
    print(f"\ntest NLL: {nll.nll_bits_per_dim:.4f} ± {nll.nll_bits_per_dim_stderr:.4f} bits/dim "
          f"(best validation step {result.best_step}, {metrics['total_seconds']:.0f} s in all)")
    print(f"samples:  {paths['png']}\n          {paths['npy']}\nmetrics:  {out / 'metrics.json'}\n"
          f"run dir:  {out} (config.yaml, metrics.jsonl, checkpoints/, best/)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train.distributed import env_world

    result = run_training(args.config, args.overrides, args.out, args.resume, not args.no_progress)
    best = (f"best validation NLL {result.best_val_nll_bits_per_dim:.4f} bits/dim at step {result.best_step}"
            if result.best_step is not None else "no validation yet")
    if env_world()[0] == 0:
        print(f"trained to step {result.step}; {best}; run dir {result.run_dir}")
    return 0


def ddpd_networks(args: argparse.Namespace, run, device: str) -> dict:
    """The ddpd sampler's extra networks named on the command line: --planner and --masked-denoiser."""
    if args.planner is None and args.masked_denoiser is None:
        return {}
    from .config import to_dict
    from .pipeline import load_run
    from .planner import load_planner

    name = args.sampler or run.config.sample.sampler
    flag = "--planner" if args.planner is not None else "--masked-denoiser"
    if name != "ddpd":
        raise ValueError(f"{flag} is an option of the ddpd sampler, got sampler {name!r}; add --sampler ddpd")
    options = {}
    if args.planner is not None:
        options["planner"] = load_planner(args.planner, run)
    if args.masked_denoiser is not None:
        masked = load_run(args.masked_denoiser, args.checkpoint, device, args.allow_data_change)
        if run.process.name != "uniform" or masked.process.name != "masking":
            raise ValueError(f"--masked-denoiser pairs a uniform-noise run with a masking run of the same data, got "
                             f"{run.process.name!r} and {masked.process.name!r}")
        if to_dict(masked.config)["data"] != to_dict(run.config)["data"]:
            raise ValueError(f"--masked-denoiser {args.masked_denoiser} was trained on other data than "
                             f"{args.run_dir} (their data sections differ)")
        options["masked_denoiser"] = masked.denoiser
    return options


def sample_stem(sampler, seed: int, extras: str = "") -> str:
    """File stem of samples: {sampler}{extras}_{steps}steps_seed{seed}, or {sampler}{extras}_seed{seed} for exact
    samplers, which take no steps."""
    steps = f"_{sampler.num_steps}steps" if sampler.uses_steps else ""
    return f"{sampler.name}{extras}{steps}_seed{seed}"


def cmd_sample(args: argparse.Namespace) -> int:
    from .builders import build_sampler_from
    from .pipeline import generate_samples, load_run, save_samples, write_json
    from .train.atomic_io import user_dir
    from .train.distributed import sample_sharded, setup

    ctx, device = setup(args.device)  # under torchrun the samples are split over the ranks
    run = load_run(args.run_dir, args.checkpoint, str(device), args.allow_data_change)
    options = {**sampler_options(args), **ddpd_networks(args, run, str(device))}
    sampler = build_sampler_from(run.config, args.sampler, args.steps, options)
    num = run.config.sample.num_samples if args.num is None else args.num
    batch_size = run.config.sample.batch_size if args.batch_size is None else args.batch_size
    if num < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num} and {batch_size}")
    progress = not args.no_progress and ctx.is_main
    conditioning = conditioning_from_args(args, run)
    conditioning.check(run)       # one-line errors before any sampling
    samples = sample_sharded(ctx, lambda n, seed: generate_samples(run, sampler, n, batch_size, seed, progress,
                                                                   conditioning),
                             num, tuple(run.dataset.site_shape), args.seed)
    if not ctx.is_main:
        return 0
    out = user_dir(args.out) if args.out else user_dir(args.run_dir) / "samples"  # links inside RUN_DIR refused
    extras = ("-planner" if args.planner else "") + ("-masked" if args.masked_denoiser else "")
    stem = sample_stem(sampler, args.seed, extras) + conditioning_suffix(conditioning)
    paths = save_samples(samples, run, out, stem=stem)
    paths["json"] = str(out / f"{stem}.json")
    record = sampler.config()
    for key in ("planner", "masked_denoiser"):
        if getattr(args, key):
            record[key] = str(Path(getattr(args, key)).resolve())
    if conditioning.classes is not None or conditioning.known is not None:
        record["conditioning"] = {"classes": conditioning.classes, "guidance": conditioning.guidance,
                                  "infill_sites": None if conditioning.known is None else int(conditioning.known.sum())}
        if conditioning.classifier is not None:
            record["conditioning"].update(classifier=str(Path(args.classifier).resolve()),
                                          guidance_form=conditioning.guidance_form)
    write_json(out / f"{stem}.json", {"sampler": record, "num_samples": num, "seed": args.seed,
                                      "batch_size": batch_size, "network_calls_last_batch": sampler.network_calls,
                                      "nfe_last_batch": sampler.nfe, "run_dir": str(Path(args.run_dir).resolve()),
                                      "checkpoint": str(run.checkpoint), "files": dict(paths)})
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .builders import build_proposal
    from .pipeline import evaluate_run, likelihood_unit, load_run, per_char_fields
    from .train.distributed import evaluate_nll_sharded, setup

    if quality_requested(args):
        return cmd_evaluate_quality(args)
    if args.judge_steps is not None:
        raise ValueError("--judge-steps is an option of sample quality (with --samples or --sampler), not of the "
                         "likelihood evaluation")
    ctx, device = setup(args.device)  # under torchrun the examples are split over the ranks
    run = load_run(args.run_dir, args.checkpoint, str(device), args.allow_data_change)
    if not ctx.enabled:
        result = evaluate_run(run, args.split, args.t_samples, args.batch_size, args.seed, progress=not args.no_progress)
    else:
        t_samples = run.config.evaluate.t_samples if args.t_samples is None else args.t_samples
        batch_size = run.config.evaluate.batch_size if args.batch_size is None else args.batch_size
        if t_samples < 1 or batch_size < 1:
            raise ValueError(f"t_samples and batch_size must be >= 1, got {t_samples} and {batch_size}")
        result = evaluate_nll_sharded(ctx, run.process, run.denoiser, run.schedule, run.dataset.split(args.split),
                                      build_proposal(run.config), t_samples, batch_size, args.seed, run.device)
        if not ctx.is_main:
            return 0
    per_char = per_char_fields(run.dataset, args.split, result)  # BPE text: bits per token and per character
    if args.json:
        print(json.dumps({**result.to_dict(), **per_char, "unit": likelihood_unit(run.dataset), "split": args.split,
                          "checkpoint": str(run.checkpoint)}, indent=2))
    else:
        chars = (f" = {per_char['nll_bits_per_char']:.4f} ± {per_char['nll_bits_per_char_stderr']:.4f} bits/char"
                 if per_char else "")
        print(f"{args.split} NLL <= {result.nll_bits_per_dim:.4f} ± {result.nll_bits_per_dim_stderr:.4f} "
              f"{likelihood_unit(run.dataset)}{chars} "
              f"({result.num_examples} examples, {result.t_samples} t-samples each; prior: {result.prior})")
    return 0


#: Upper bound of `ddiff evaluate --judge-steps` (the default judge takes 800).
MAX_JUDGE_STEPS = 1_000_000


def quality_requested(args: argparse.Namespace) -> bool:
    """Whether `ddiff evaluate` was asked for sample quality (--samples, or any option to draw samples)."""
    return (args.samples is not None or args.num is not None or args.sampler is not None or args.steps is not None
            or bool(sampler_options(args)))


def cmd_evaluate_quality(args: argparse.Namespace) -> int:
    """`ddiff evaluate RUN --samples PATH` or `--sampler/--steps/--num-samples`: sample quality (docs/quality.md)."""
    import json

    from .builders import build_sampler_from
    from .evaluate.quality import evaluate_quality
    from .evaluate.text_quality import ARJudgeConfig
    from .evaluate.sample_files import read_sample_record, read_samples, sample_files, write_quality_record
    from .pipeline import generate_samples, load_run
    from .train.distributed import env_world

    if env_world()[1] > 1:
        raise ValueError("`ddiff evaluate` of sample quality runs in one process; run it without torchrun")
    drawing = args.num is not None or args.sampler is not None or args.steps is not None or sampler_options(args)
    if args.samples is not None and drawing:
        raise ValueError("give --samples PATH (saved samples) or --sampler/--steps/--num-samples and sampler options "
                         "(samples drawn now), not both")
    if args.t_samples is not None:
        raise ValueError("--t-samples is an option of the likelihood evaluation, not of sample quality")
    judge = None
    if args.judge_steps is not None:
        if not 1 <= args.judge_steps <= MAX_JUDGE_STEPS:
            raise ValueError(f"--judge-steps must be in 1..{MAX_JUDGE_STEPS}, got {args.judge_steps}")
        judge = ARJudgeConfig(steps=args.judge_steps)
    files = sample_files(Path(args.samples)) if args.samples is not None else []
    run = load_run(args.run_dir, args.checkpoint, args.device, args.allow_data_change)
    progress = not args.no_progress
    jobs = []  # (stem, samples, record)
    for path in files:
        jobs.append((path.stem, read_samples(path, run.config.data.max_bytes),
                     {**read_sample_record(path), "samples_path": str(path.resolve())}))
    if args.samples is None:
        sampler = build_sampler_from(run.config, args.sampler, args.steps, sampler_options(args))
        num = run.config.sample.num_samples if args.num is None else args.num
        batch_size = run.config.sample.batch_size if args.batch_size is None else args.batch_size
        samples = generate_samples(run, sampler, num, batch_size, args.seed, progress)
        jobs.append((sample_stem(sampler, args.seed), samples,
                     {"sampler": sampler.name, "steps": sampler.num_steps if sampler.uses_steps else None,
                      "nfe": float(sampler.nfe), "seed": args.seed, "samples_path": None}))
    quality_dir = Path(args.run_dir) / "quality"
    payloads = []
    for stem, samples, record in jobs:
        result = evaluate_quality(run, samples, reference_split=args.split, cache_dir=quality_dir, progress=progress,
                                  text_judge=judge)
        payload = {"sampler": record["sampler"], "steps": record["steps"], "nfe": record["nfe"], "seed": record["seed"],
                   "num_samples": int(samples.shape[0]), "family": result.family, "metrics": result.metrics,
                   "samples_path": record["samples_path"], "extra": result.extra}
        written = write_quality_record(quality_dir / f"{stem}.json", payload)
        payloads.append(payload)
        if not args.json:
            print(format_quality(stem, payload) + f"\nquality: {written}")
    if args.json:
        print(json.dumps(payloads[0] if len(payloads) == 1 else payloads, indent=2))
    return 0


def format_quality(stem: str, payload: dict) -> str:
    """The table of one quality record: metric, samples, reference; then the classifier accuracy and notes."""
    extra = payload["extra"]
    lines = [f"{stem}: {payload['family']} metrics of {extra['num_samples']} samples and of {extra['num_reference']} "
             f"{extra['reference_split']} examples (reference), each against the {extra['target']}",
             f"{'metric':<22} {'samples':>12} {'reference':>12}"]
    for name, values in payload["metrics"].items():
        lines.append(f"{name:<22} {values['samples']:>12.5g} {values['reference']:>12.5g}")
    if "classifier_test_accuracy" in extra:
        lines.append(f"classifier accuracy on the test split: {100 * extra['classifier_test_accuracy']:.1f} % "
                     f"({extra['classifier_status']})")
    lines += [f"note: {note}" for note in extra["notes"]]
    return "\n".join(lines)


def cmd_train_planner(args: argparse.Namespace) -> int:
    from .planner import train_planner

    metrics = train_planner(args.run_dir, args.overrides, args.out, args.device, progress=not args.no_progress,
                            resume=args.resume)
    if metrics is not None:  # rank 0
        print(f"planner validation BCE {metrics['val_bce_bits_per_site']:.4f} bits/site at step "
              f"{metrics['best_step']} (planner derived from the run's denoiser: "
              f"{metrics['denoiser_planner_val_bce_bits_per_site']:.4f}); weights {metrics['weights']}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from .guidance.classifier_train import train_classifier

    metrics = train_classifier(args.run_dir, args.overrides, args.out, args.device, progress=not args.no_progress,
                               resume=args.resume)
    if metrics is not None:  # rank 0
        levels = ", ".join(f"{k} {v['val_accuracy']:.3f}" for k, v in metrics["at_noise_levels"].items())
        print(f"classifier validation CE {metrics['val_ce_bits']:.4f} bits at step {metrics['best_step']}; accuracy "
              f"{levels}; weights {metrics['weights']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    report, paths = write_report(args.run_dir, args.out, args.samples, args.metric)
    for note in report.notes:
        print(f"note: {note}")
    print(f"png:  {paths['png']}\nhtml: {paths['html']}")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a malformed --device or an out-of-range --seed before any work (ValueError)."""
    from .config import check_device, check_seed

    if getattr(args, "device", None) is not None:
        check_device(args.device, "--device")
    if getattr(args, "seed", None) is not None:
        check_seed(args.seed, "--seed")


#: The training commands and how each is resumed after a Ctrl-C.
RESUMABLE = {"train": "ddiff train", "demo": "ddiff train", "train-planner": "ddiff train-planner",
             "train-classifier": "ddiff train-classifier"}


def interrupted_note(args: argparse.Namespace) -> str:
    """What a Ctrl-C left behind: for the training commands the last checkpoint and how to resume."""
    command = RESUMABLE.get(args.command)
    if command is None:
        return "stopped before finishing; run the command again"
    from .train.checkpoint import find_latest_checkpoint

    if args.command in ("train", "demo"):
        out = Path(args.out)
    else:  # train-planner, train-classifier: RUN_DIR/planner or RUN_DIR/classifier unless --out
        command = f"{command} {args.run_dir}"
        out = Path(args.out) if args.out is not None else Path(args.run_dir) / args.command.removeprefix("train-")
    try:
        latest = find_latest_checkpoint(out / "checkpoints") if (out / "checkpoints").is_dir() else None
    except (OSError, ValueError):
        latest = None
    if not (out / "config.yaml").is_file():
        return "training had not started; nothing to resume"
    kept = f"the last checkpoint is {latest}" if latest is not None else "no checkpoint had been written yet"
    return f"{kept}; resume with: {command} --out {out} --resume"


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate,
            "train-planner": cmd_train_planner, "train-classifier": cmd_train_classifier, "report": cmd_report,
            "posterior": cmd_posterior}


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors (bad input, impossible settings, a NaN loss, a full disk) print one line
    ``ddiff COMMAND: error: ...`` and return 2; Ctrl-C prints one line (for training: the last checkpoint and
    how to resume) and returns 130. Under torchrun the process group is left on the way out."""
    from .train.distributed import env_world, teardown

    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"ddiff {args.command}: interrupted; {interrupted_note(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as err:
        try:
            rank, world, _ = env_world()
        except ValueError:
            rank, world = 0, 1
        where = f" (rank {rank})" if world > 1 else ""
        print(f"ddiff {args.command}{where}: error: {err}", file=sys.stderr)
        return 2
    finally:
        teardown()


if __name__ == "__main__":
    sys.exit(main())
