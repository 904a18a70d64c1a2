"""Helpers shared by the subcommands: sampler options from flags, sample file stems, argument checks, what a
Ctrl-C left behind."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def sample_stem(sampler, seed: int, extras: str = "") -> str:
    """File stem of samples: {sampler}{extras}_{steps}steps_seed{seed}, or {sampler}{extras}_seed{seed} for exact
    samplers, which take no steps."""
    steps = f"_{sampler.num_steps}steps" if sampler.uses_steps else ""
    return f"{sampler.name}{extras}{steps}_seed{seed}"


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a malformed --device or an out-of-range --seed before any work (ValueError)."""
    from ..config import check_device, check_seed

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
    from ..runs.weights import find_latest_checkpoint

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
