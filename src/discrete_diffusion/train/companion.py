"""Networks trained for a diffusion run, on its data, splits and schedule: the DDPD planner (``ddiff
train-planner``) and the noisy classifier (``ddiff train-classifier``).

Each trains through the :class:`~discrete_diffusion.train.trainer.Trainer` into a run-like directory (default
``RUN_DIR/planner`` or ``RUN_DIR/classifier``): config.yaml, data.json, metrics.jsonl, checkpoints/, best/ and
the lock, as ``ddiff train`` writes them, so ``--resume``, torchrun and ``train.precision=bf16`` work as for a
diffusion run. At the end rank 0 writes the best EMA weights as one safetensors file (what ``load_planner`` /
``load_classifier`` read) and ``metrics.json``.

Its config is the run's config (``--resume``: the directory's own config.yaml) with ``model.*`` and ``train.*``
overrides; every other section must stay the run's, so the network models the noise of that data under that
process. A ``--device`` other than auto replaces ``train.device``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from ..config import load_config, load_run_config, to_dict
from ..runs.atomic_io import refuse_link, user_dir
from .task import Task
from .trainer import Trainer, TrainResult, resumable_checkpoint

__all__ = ["CompanionRun", "companion_dir", "companion_config", "train_companion"]

#: The sections a companion's config may change; the others are the run's.
OWN_SECTIONS = ("model", "train")


def companion_dir(run_dir: str | Path, out_dir: str | Path | None, name: str) -> Path:
    """``out_dir`` as the user typed it (a link there is followed), or ``RUN_DIR/name``, which must not be a
    symbolic link (UnsafePathError, one line)."""
    if out_dir is not None:
        return user_dir(out_dir)
    out = user_dir(run_dir) / name
    refuse_link(out)
    return out


def companion_config(run_dir: Path, overrides: list[str] | None, out: Path, resume: bool, device: str, what: str,
                     command: str) -> DictConfig:
    """The companion's config: ``RUN_DIR/config.yaml`` (``resume``: ``OUT/config.yaml``, which must hold a
    checkpoint to resume) with ``overrides``; ``train.device = device`` unless ``device`` is "auto" (then the
    config's). ValueError when a section other than model and train differs from the run's."""
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    if resume:
        resumable_checkpoint(out, f"{command} {run_dir}")
    # resuming: the companion's own config.yaml, with the legacy architecture of keys it lacks; a new companion
    # gets today's defaults for the model.* keys its run's config.yaml lacks
    config = load_config((out if resume else run_dir) / "config.yaml", overrides, legacy_from=out / "config.yaml"
                         if resume else None)
    mine, run = to_dict(config), to_dict(load_run_config(run_dir / "config.yaml"))
    for section in mine:
        if section not in OWN_SECTIONS and mine[section] != run[section]:
            changed = f"not {section}.*" if not resume else f"but {out / 'config.yaml'} differs in {section}.*"
            raise ValueError(f"a {what} is trained on its run's data and process: override only model.* and train.* "
                             f"keys, {changed}")
    if device != "auto":
        config.train.device = device
    return config


@dataclass
class CompanionRun:
    """A finished companion training: the trainer (its task holds the module), its result and the seconds it took."""

    trainer: Trainer
    result: TrainResult
    seconds: float


def train_companion(task: Task, config: DictConfig, out: Path, resume: bool, progress: bool,
                    finish: Callable[[CompanionRun], dict]) -> dict | None:
    """Train ``task`` into ``out``, then run ``finish`` on rank 0 (load the best weights, write them and
    metrics.json); returns what ``finish`` returned on rank 0, None on the other ranks."""
    trainer = Trainer(config, out, progress=progress, task=task)
    start = time.time()
    result = trainer.fit(resume=resume)
    run = CompanionRun(trainer, result, time.time() - start)
    return trainer.ctx.on_main(lambda: finish(run), "writing the weights and metrics.json")
