"""Checks of a run config's training settings, before anything is built or written."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from ..builders import (
    build_objective_from,
    build_sampler_from,
    build_schedule_from,
    build_weighting_from,
)
from ..config import check_values

#: Values of ``train.precision``.
PRECISIONS = ("fp32", "bf16")
#: Values of ``train.sharding`` (train/sharding.py).
SHARDINGS = ("none", "fsdp")
#: A schedule must bring alpha(1) at least this close to 0: the prior at t = 1 is then (nearly) pure noise.
MAX_ALPHA_AT_ONE = 0.01


def check_train_config(config: DictConfig, world_size: int = 1) -> None:
    """Refuse impossible settings before anything is built or written (ValueError listing every problem)."""
    check_values(config)  # finiteness and ranges of every number, the device string
    tc = config.train
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for key in ("steps", "batch_size", "grad_accumulation", "eval_every", "checkpoint_every", "sample_every",
                "keep_last", "eval_t_samples"):
        need(tc[key] is None and key == "eval_t_samples" or tc[key] >= 1, f"train.{key} must be >= 1, got {tc[key]}")
    need(config.evaluate.batch_size >= 1, f"evaluate.batch_size must be >= 1, got {config.evaluate.batch_size}")
    need(tc.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {tc.warmup_steps}")
    need(math.isfinite(tc.lr) and tc.lr > 0, f"train.lr must be > 0, got {tc.lr}")
    need(tc.weight_decay >= 0, f"train.weight_decay must be >= 0, got {tc.weight_decay}")
    need(tc.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = no clipping), got {tc.grad_clip}")
    need(0.0 <= tc.ema_decay <= 1.0, f"train.ema_decay must lie in [0, 1], got {tc.ema_decay}")
    need(0.0 <= tc.min_lr_ratio <= 1.0, f"train.min_lr_ratio must lie in [0, 1], got {tc.min_lr_ratio}")
    need(tc.time_limit_minutes is None or tc.time_limit_minutes > 0,
         f"train.time_limit_minutes must be > 0 (or null), got {tc.time_limit_minutes}")
    need(tc.precision in PRECISIONS, f"unknown train.precision {tc.precision!r}; valid: {', '.join(PRECISIONS)}")
    sharding = tc.get("sharding", "none")
    need(sharding in SHARDINGS, f"unknown train.sharding {sharding!r}; valid: {', '.join(SHARDINGS)}")
    need(not (sharding == "fsdp" and tc.compile),
         "train.compile=true is not supported with train.sharding=fsdp; use one of them")
    if tc.batch_size >= 1 and tc.grad_accumulation >= 1:
        parts = world_size * tc.grad_accumulation
        need(tc.batch_size % parts == 0,
             f"train.batch_size ({tc.batch_size}) must be divisible by world size x train.grad_accumulation "
             f"({world_size} x {tc.grad_accumulation} = {parts}): it is the global batch of one optimizer step")
    if problems:
        raise ValueError("impossible training settings: " + "; ".join(problems))
    schedule = build_schedule_from(config)  # unknown names raise, listing the valid ones
    build_sampler_from(config)  # used for sample grids mid-run: fail now, not at the first grid
    build_weighting_from(config)
    build_objective_from(config)
    if not schedule.alpha_min <= MAX_ALPHA_AT_ONE:
        raise ValueError(
            f"impossible setting: schedule {schedule.name!r} has alpha(1) = {schedule.alpha_min:.4g}, but "
            f"t = 1 must be (nearly) pure noise, alpha(1) <= {MAX_ALPHA_AT_ONE}; lower process.eps "
            f"(log-linear, cosine) or raise process.t_end (blackout)")
