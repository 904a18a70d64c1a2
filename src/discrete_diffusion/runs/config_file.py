"""The run directory's ``config.yaml``: the resolved config, written atomically."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .atomic_io import atomic_write_text

__all__ = ["save_config"]


def save_config(config: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically, never through a symbolic link: runs/atomic_io.py)."""
    atomic_write_text(Path(path), OmegaConf.to_yaml(config))
