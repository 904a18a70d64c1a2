"""Helpers shared by the subcommands: sampler options from flags, sample file stems, argument checks, what a
Ctrl-C left behind."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

#: Largest value of any count flag (--num, --batch-size, --num-samples, --t-samples), whatever the memory says.
MAX_COUNT = 10**9
#: Largest predictions of one network call, float32 (batch x sites x states), that a size flag may ask for.
MAX_BATCH_LOGIT_BYTES = 8 << 30
#: Longest number typed as an option value.
_MAX_NUMBER_CHARS = 64
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_option_value(flag: str, item: str, value: str) -> object:
    """A KEY=VALUE option's value: a number typed as one is that number (``1e-3`` is the float 0.001, which YAML 1.1
    reads as a string; ``7`` an int; at most 64 characters), anything else is read as YAML (true, null, a name, a
    list). ValueError (one line naming ``flag``) for what neither reads."""
    import yaml

    text = value.strip()
    if _NUMBER.fullmatch(text):
        if len(text) > _MAX_NUMBER_CHARS:
            raise ValueError(f"malformed {flag} {item[:80]!r}: a number of {len(text)} characters (at most "
                             f"{_MAX_NUMBER_CHARS})")
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError(f"malformed {flag} {item!r}: cannot parse the value {value!r}") from None


def check_count(value: int, flag: str, limit: int = MAX_COUNT) -> int:
    """``value`` of a count flag in ``1..limit`` (ValueError naming the flag and the limit)."""
    if not 1 <= value <= limit:
        raise ValueError(f"{flag} must be in 1..{limit}, got {value}")
    return value


def check_sample_sizes(run, rows: int, batch_size: int, num_flag: str, batch_flag: str, per_row: int = 1) -> None:
    """Bound a command's sample count and batch before anything is allocated (issue 19 item 9): the samples,
    ``rows`` x sites int64 states, must fit ``data.max_bytes`` (the run's memory budget), and one batch's
    predictions, batch x sites x states float32, at most :data:`MAX_BATCH_LOGIT_BYTES`. ``per_row``: samples per
    unit of ``num_flag`` (posterior: observations). ValueError naming the flag and its limit."""
    from ..data.limits import DEFAULT_MAX_BYTES, human_bytes

    sites = max(1, math.prod(tuple(run.dataset.site_shape)))
    budget = int(run.config.data.get("max_bytes", None) or DEFAULT_MAX_BYTES)
    most = max(1, budget // (8 * sites * per_row))
    if rows * per_row * sites * 8 > budget:
        raise ValueError(f"{num_flag} {rows}: {rows * per_row} samples of {sites} sites take "
                         f"{human_bytes(rows * per_row * sites * 8)} as int64 states, over the run's "
                         f"data.max_bytes={budget} ({human_bytes(budget)}); {num_flag} is at most {most} here")
    check_batch(run, batch_size, batch_flag, min(batch_size, rows * per_row))


def check_batch(run, batch_size: int, flag: str, rows: int | None = None) -> None:
    """One network call on ``rows`` (default ``batch_size``) rows: its predictions, rows x sites x states float32,
    at most :data:`MAX_BATCH_LOGIT_BYTES` (ValueError naming ``flag`` and its limit)."""
    from ..data.limits import human_bytes

    rows = batch_size if rows is None else rows
    sites = max(1, math.prod(tuple(run.dataset.site_shape)))
    k = run.dataset.num_states          # None: counts without a maximum (jump), a mean and a missing count per site
    states = (k if k is not None else 1) + 1                     # a mask state at most
    widest = max(1, MAX_BATCH_LOGIT_BYTES // (4 * sites * states))
    if rows * sites * states * 4 > MAX_BATCH_LOGIT_BYTES:
        raise ValueError(f"{flag} {batch_size}: one batch's predictions ({rows} x {sites} sites x {states} "
                         f"states, float32) take {human_bytes(rows * sites * states * 4)}, over "
                         f"{human_bytes(MAX_BATCH_LOGIT_BYTES)}; {flag} is at most {widest} here")


def sampler_options(args: argparse.Namespace) -> dict:
    """The sampler options given on the command line (flags and --option KEY=VALUE; numbers as numbers)."""
    options: dict = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"malformed --option {item!r}: expected KEY=VALUE, e.g. --option theta=0.4")
        options[key.strip()] = parse_option_value("--option", item, value)
    for key in ("temperature", "top_p", "top_k", "cache"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def sample_stem(sampler, seed: int, extras: str = "") -> str:
    """File stem of samples: {sampler}{extras}_{steps}steps_seed{seed}, or {sampler}{extras}_seed{seed} for exact
    samplers, which take no steps; a sampler with a ``file_tag`` (the rule samplers: ``-tau0.9``) adds it after its
    name."""
    steps = f"_{sampler.num_steps}steps" if sampler.uses_steps else ""
    return f"{sampler.name}{getattr(sampler, 'file_tag', '')}{extras}{steps}_seed{seed}"


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
