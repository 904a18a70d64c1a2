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
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.limits import DEFAULT_MAX_BYTES
from ..data.npy_reader import _check_sizes as check_npy_sizes
from ..data.npy_reader import parse_npy, read_npy_header
from ..runs.atomic_io import atomic_write
from ..runs.json_reader import read_run_json

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


def read_samples(path: Path, max_bytes: int | None = None, site_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` (numeric dtypes only; its size and its states as int64 bounded by
    ``max_bytes``, default :data:`~discrete_diffusion.data.limits.DEFAULT_MAX_BYTES`; with ``site_shape``, of shape
    (N, *site_shape)). The header is read and checked (dtype, shape, declared size against the file's) before the
    payload, so a file it rules out is never read whole (issue 19 item 12)."""
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = read_npy_header(f, str(path), "samples")
        if site_shape is not None and (len(header.shape) != len(site_shape) + 1
                                       or tuple(header.shape[1:]) != tuple(site_shape)):
            raise ValueError(f"{path}: samples must have shape (N, {', '.join(map(str, site_shape))}) for this run, "
                             f"the .npy header says {header.shape}")
        check_npy_sizes(header, size - header.offset, max_bytes, str(path))
        f.seek(0)
        raw = bytearray(f.read(size + 1))
    return parse_npy(raw, max_bytes, str(path))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def read_sample_record(npy: Path) -> dict[str, Any]:
    """``{"sampler", "steps", "nfe", "seed"}`` from the ``.json`` written next to ``npy`` by ``ddiff sample``
    (each ``None`` when the file or the field is missing or of the wrong type; ``steps`` is ``None`` for
    samplers that take no steps)."""
    from ..samplers import SAMPLERS

    out: dict[str, Any] = {"sampler": None, "steps": None, "nfe": None, "seed": None}
    record_path = npy.with_suffix(".json")
    if not record_path.exists() and not record_path.is_symlink():
        return out
    try:  # bounded (size, depth, number length), never blocking on a FIFO: runs/json_reader.py
        record = read_run_json(record_path, _MAX_RECORD_BYTES, "sample record", follow=True)
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

