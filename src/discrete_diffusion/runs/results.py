"""What a finished Trainer run hands on: its validation curve, its best EMA weights, and those weights as one
safetensors file (the planner's and the classifier's ``*.safetensors``, ``fit_exact_model``'s ``weights_path``)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save
from torch import nn

from .atomic_io import atomic_write, read_text_nofollow
from .json_reader import loads_bounded
from .weights import find_latest_checkpoint, load_model_weights

__all__ = ["validation_curve", "load_best_weights", "export_weights"]


def validation_curve(run_dir: str | Path, key: str) -> list[list[float]]:
    """``[[step, value], ...]`` of every validation line of ``RUN_DIR/metrics.jsonl`` that holds ``key``."""
    text = read_text_nofollow(Path(run_dir) / "metrics.jsonl") or ""
    rows = []
    for line in text.splitlines():
        try:
            record = loads_bounded(line, "metrics.jsonl line")
        except ValueError:
            continue
        if isinstance(record, dict) and key in record and isinstance(record.get("step"), int):
            rows.append([record["step"], record[key]])
    return rows


def load_best_weights(run_dir: str | Path, module: nn.Module, expected_config: dict | None = None) -> Path:
    """Load the EMA weights of ``RUN_DIR/best`` (else of the newest checkpoint) into ``module``; returns the
    checkpoint's manifest. Every check of :func:`~discrete_diffusion.train.checkpoint.load_model_weights` applies."""
    run_dir = Path(run_dir)
    found = find_latest_checkpoint(run_dir / "best") or find_latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise ValueError(f"no complete checkpoint under {run_dir} (expected best/ or checkpoints/)")
    load_model_weights(found, module, use_ema=True, expected_config=expected_config)
    return found


def export_weights(module: nn.Module, path: str | Path) -> None:
    """``module``'s state dict as one safetensors file at ``path`` (atomic, never through a symbolic link)."""
    blob = save({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    atomic_write(Path(path), lambda f: f.write(blob))
