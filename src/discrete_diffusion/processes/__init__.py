"""Forward processes (one file each) and their registry."""

from __future__ import annotations

from typing import Any

from .base import ForwardProcess, Prediction, expand_to_sites, sample_categorical
from .blackout import BlackoutProcess
from .generators import GENERATORS, spectral_gap
from .jump import JumpProcess
from .masking import MaskingProcess
from .matrix import MatrixProcess
from .uniform import UniformProcess

PROCESSES: dict[str, type[ForwardProcess]] = {
    cls.name: cls for cls in (BlackoutProcess, MaskingProcess, UniformProcess, MatrixProcess, JumpProcess)
}


def build_process(name: str, num_states: int, **options: Any) -> ForwardProcess:
    """Build a forward process by registry name; unknown names raise ValueError listing the valid ones."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid processes: {', '.join(sorted(PROCESSES))}")
    try:
        return PROCESSES[name](num_states=num_states, **options)
    except TypeError as err:
        raise ValueError(f"bad options for process {name!r}: {err}") from None


__all__ = ["ForwardProcess", "Prediction", "expand_to_sites", "sample_categorical", "BlackoutProcess",
           "MaskingProcess", "UniformProcess", "MatrixProcess", "JumpProcess", "GENERATORS", "spectral_gap",
           "PROCESSES", "build_process"]
