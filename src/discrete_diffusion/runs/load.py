"""Loading a run directory: rebuild config, data, process, schedule and the EMA denoiser from ``RUN_DIR``
alone (``config.yaml``, ``data.json``, ``tokenizer.json`` for BPE text, ``best/`` or ``checkpoints/``), after
checking the data against the checksums recorded at training time. Nothing is unpickled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ..builders import (
    build_dataset,
    build_denoiser,
    build_process_from,
    build_schedule_from,
    resolve_device,
    resolve_num_classes,
    resolve_process_options,
)
from ..config import MODEL_SECTIONS, load_run_config, to_dict
from ..data import DiscreteDataset
from ..denoiser import NetworkDenoiser
from ..processes import ForwardProcess
from ..schedules import Schedule
from .atomic_io import atomic_write_text
from .data_record import check_data_manifest
from .tokenizer_file import run_tokenizer_json
from .weights import find_latest_checkpoint, load_model_weights

__all__ = ["LoadedRun", "find_weights", "load_run", "write_json"]


@dataclass
class LoadedRun:
    config: DictConfig
    dataset: DiscreteDataset
    process: ForwardProcess
    schedule: Schedule
    denoiser: NetworkDenoiser
    device: torch.device
    checkpoint: Path


def find_weights(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint to use: "best" (lowest validation NLL; falls back to latest) or "latest"."""
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    found = find_latest_checkpoint(run_dir / "best") if which == "best" else None
    found = found or find_latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise ValueError(f"no complete checkpoint under {run_dir} (expected best/ or checkpoints/); "
                         f"train one with `ddiff train --out {run_dir}`")
    return found


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto",
             allow_data_change: bool = False) -> LoadedRun:
    """Rebuild config, data, process, schedule and the EMA denoiser from ``run_dir``.

    The data are checked against the checksums recorded at training time (``data.json``): a changed file
    raises :class:`~discrete_diffusion.runs.data_record.DataChangedError` unless ``allow_data_change``, which
    warns instead (see :func:`~discrete_diffusion.runs.data_record.check_data_manifest`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_run_config(run_dir / "config.yaml")
    dev = resolve_device(device)
    dataset = build_dataset(config, run_tokenizer_json(run_dir) if config.data.tokenizer == "bpe" else None)
    check_data_manifest(run_dir, dataset, allow_change=allow_data_change)
    resolve_process_options(config, dataset)     # a no-op for a run trained here (config.yaml records them)
    process = build_process_from(config, dataset.num_states)
    denoiser = build_denoiser(config, process, dataset.site_shape, resolve_num_classes(config, dataset))
    checkpoint = find_weights(run_dir, which)
    full = to_dict(config)  # a config.yaml edited after training must still describe the saved model
    load_model_weights(checkpoint, denoiser, use_ema=True, expected_config={k: full[k] for k in MODEL_SECTIONS})
    denoiser.to(dev).eval()
    return LoadedRun(config, dataset, process, build_schedule_from(config), denoiser, dev, checkpoint)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically and never through a symbolic link."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
