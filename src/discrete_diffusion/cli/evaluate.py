"""``ddiff evaluate``: the test likelihood of a run, and the quality of samples beside held-out data."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_batch, check_count, check_sample_sizes, sample_stem, sampler_options


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..builders import build_proposal
    from ..distributed import setup
    from ..likelihood import evaluate_nll_sharded
    from ..pipeline import evaluate_run, likelihood_unit, load_run, per_char_fields

    if quality_requested(args):
        return cmd_evaluate_quality(args)
    if args.judge_steps is not None:
        raise ValueError("--judge-steps is an option of sample quality (with --samples or --sampler), not of the "
                         "likelihood evaluation")
    if args.t_samples is not None:
        check_count(args.t_samples, "--t-samples", MAX_T_SAMPLES)
    if args.batch_size is not None:
        check_count(args.batch_size, "--batch-size")
    ctx, device = setup(args.device)  # under torchrun the examples are split over the ranks
    run = load_run(args.run_dir, args.checkpoint, str(device), args.allow_data_change)
    if args.batch_size is not None:   # a batch of examples: its predictions bounded as sampling's are
        check_batch(run, args.batch_size, "--batch-size")
    if not ctx.enabled:
        result = evaluate_run(run, args.split, args.t_samples, args.batch_size, args.seed,
                              progress=not args.no_progress)
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
#: Upper bound of `ddiff evaluate --t-samples` (importance draws of t per example; the default is 16).
MAX_T_SAMPLES = 1_000_000


def quality_requested(args: argparse.Namespace) -> bool:
    """Whether `ddiff evaluate` was asked for sample quality (--samples, or any option to draw samples)."""
    return (args.samples is not None or args.num is not None or args.sampler is not None or args.steps is not None
            or bool(sampler_options(args)))


def cmd_evaluate_quality(args: argparse.Namespace) -> int:
    """`ddiff evaluate RUN --samples PATH` or `--sampler/--steps/--num-samples`: sample quality (docs/quality.md)."""
    import json

    from ..builders import build_sampler_from
    from ..distributed import env_world
    from ..evaluate.quality import evaluate_quality
    from ..evaluate.sample_files import read_sample_record, read_samples, sample_files, write_quality_record
    from ..evaluate.text_quality import ARJudgeConfig
    from ..pipeline import generate_samples, load_run

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
        jobs.append((path.stem, read_samples(path, run.config.data.max_bytes, tuple(run.dataset.site_shape)),
                     {**read_sample_record(path), "samples_path": str(path.resolve())}))
    if args.samples is None:
        sampler = build_sampler_from(run.config, args.sampler, args.steps, sampler_options(args))
        num = run.config.sample.num_samples if args.num is None else args.num
        batch_size = run.config.sample.batch_size if args.batch_size is None else args.batch_size
        check_count(num, "--num-samples")
        check_count(batch_size, "--batch-size")
        check_sample_sizes(run, num, batch_size, "--num-samples", "--batch-size")  # before anything is allocated
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
