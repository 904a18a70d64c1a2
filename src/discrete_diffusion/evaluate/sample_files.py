"""Reading the sample files of ``ddiff sample`` for ``ddiff evaluate --samples``, and writing quality records.

``ddiff sample`` writes ``STEM.npy`` (states ``(N, *sites)``) and ``STEM.json`` (``{"sampler": {"name",
"num_steps", ...}, "seed", "nfe_last_batch", ...}``). Both are untrusted here: the ``.npy`` is read with the
bounded reader (no pickle, sizes checked before allocating) and every field of the ``.json`` is type-checked;
a field of the wrong type reads as unknown (``None``). Quality records are written atomically into a real
directory, never through a symbolic link.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..data.limits import DEFAULT_MAX_BYTES
from ..data.npy_reader import parse_npy
from ..runs.atomic_io import atomic_write

__all__ = ["MAX_SAMPLE_FILES", "sample_files", "read_samples", "read_sample_record", "write_quality_record",
           "ensure_real_dir"]

#: At most this many ``.npy`` files are evaluated from one folder.
MAX_SAMPLE_FILES = 1000
_MAX_RECORD_BYTES = 1 << 20


def sample_files(path: Path) -> list[Path]:
    """``[path]`` for an ``.npy`` file, or the ``.npy`` files of a folder (sorted by name, not recursive)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
        if not files:
            raise ValueError(f"no .npy sample files in {path} (write some with `ddiff sample RUN --out {path}`)")
        if len(files) > MAX_SAMPLE_FILES:
            raise ValueError(f"{path} holds {len(files)} .npy files; at most {MAX_SAMPLE_FILES} are evaluated at once")
        return files
    if not path.exists():
        raise ValueError(f"--samples {path} does not exist (expected an .npy file or a folder of them)")
    if path.suffix != ".npy" or not path.is_file():
        raise ValueError(f"--samples {path} is not an .npy file or a folder of them")
    return [path]


def read_samples(path: Path, max_bytes: int | None = None) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` (numeric dtypes only; its size and its states as int64 bounded by
    ``max_bytes``, default :data:`~discrete_diffusion.data.limits.DEFAULT_MAX_BYTES`)."""
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path} has {size} bytes, over the limit of {max_bytes}")
    return parse_npy(bytearray(path.read_bytes()), max_bytes, str(path))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def read_sample_record(npy: Path) -> dict[str, Any]:
    """``{"sampler", "steps", "nfe", "seed"}`` from the ``.json`` written next to ``npy`` by ``ddiff sample``
    (each ``None`` when the file or the field is missing or of the wrong type; ``steps`` is ``None`` for
    samplers that take no steps)."""
    from ..samplers import SAMPLERS

    out: dict[str, Any] = {"sampler": None, "steps": None, "nfe": None, "seed": None}
    record_path = npy.with_suffix(".json")
    if not record_path.is_file():
        return out
    with open(record_path, "rb") as f:
        raw = f.read(_MAX_RECORD_BYTES + 1)
    try:
        if len(raw) > _MAX_RECORD_BYTES:
            raise ValueError("too large")
        record = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{record_path} is not a sample record written by `ddiff sample` ({exc})") from None
    if not isinstance(record, dict):
        return out
    sampler = record.get("sampler")
    if isinstance(sampler, dict) and isinstance(sampler.get("name"), str):
        out["sampler"] = sampler["name"][:200]
        takes_steps = getattr(SAMPLERS.get(out["sampler"]), "uses_steps", True)
        out["steps"] = _int_or_none(sampler.get("num_steps")) if takes_steps else None
    nfe = record.get("nfe_last_batch")
    if isinstance(nfe, (int, float)) and not isinstance(nfe, bool) and math.isfinite(nfe):
        out["nfe"] = float(nfe)
    out["seed"] = _int_or_none(record.get("seed"))
    return out


def ensure_real_dir(path: Path) -> Path:
    """Create the directory ``path`` if needed; refuse a symbolic link (no write may follow one)."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; quality files are written only into a real directory")
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def write_quality_record(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically (a symlink at ``path`` is replaced, never followed)."""
    ensure_real_dir(path.parent)
    text = json.dumps(payload, indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path

