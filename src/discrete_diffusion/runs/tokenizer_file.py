"""The run directory's ``tokenizer.json`` (BPE text runs): written atomically at training time, read back only
as a regular file (never through a link) whose SHA-256 matches the one recorded in ``data.json``."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from ..data.tokenizer import MAX_TOKENIZER_BYTES, TOKENIZER_NAME
from .atomic_io import atomic_write
from .data_record import MANIFEST_NAME, _read_manifest

__all__ = ["write_run_tokenizer", "read_run_tokenizer", "run_tokenizer_json"]


def write_run_tokenizer(run_dir: str | os.PathLike, json_text: str) -> Path:
    """Write ``RUN_DIR/tokenizer.json`` atomically (a fresh temp file renamed over it; a symlink there is
    replaced, never followed) and return its path."""
    path = Path(run_dir) / TOKENIZER_NAME
    atomic_write(path, lambda f: f.write(json_text.encode("utf-8")))
    return path


def read_run_tokenizer(run_dir: str | os.PathLike, sha256: str) -> str:
    """The JSON of ``RUN_DIR/tokenizer.json`` after checking it is a regular file of at most
    ``MAX_TOKENIZER_BYTES`` bytes whose SHA-256 is ``sha256`` (the one recorded in ``data.json``).

    Raises:
        ValueError: missing, a symlink or not a regular file, too large, a different checksum, or not UTF-8.
    """
    path = Path(run_dir) / TOKENIZER_NAME
    missing = ValueError(f"{path}: the run's tokenizer is missing or not a regular file; it was written at training "
                         f"time and the model's token ids depend on it")
    try:  # never through a symbolic link, and only a regular file
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise missing from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise missing
        if info.st_size > MAX_TOKENIZER_BYTES:
            raise ValueError(f"{path}: the tokenizer file is over {MAX_TOKENIZER_BYTES} bytes; it is not one ddiff "
                             f"wrote")
        raw = f.read(MAX_TOKENIZER_BYTES + 1)
    if len(raw) > MAX_TOKENIZER_BYTES:
        raise ValueError(f"{path}: the tokenizer file is over {MAX_TOKENIZER_BYTES} bytes; it is not one ddiff wrote")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: the tokenizer changed since training (sha256 {sha256} recorded in data.json, "
                         f"{digest} now); restore the file written by `ddiff train`")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the tokenizer file is not UTF-8") from None


def run_tokenizer_json(run_dir: str | os.PathLike) -> str:
    """The JSON of ``RUN_DIR/tokenizer.json`` after checking its SHA-256 against ``data.json``.

    Raises:
        ValueError: no manifest, a manifest without a tokenizer checksum, or a missing, oversized or changed
            tokenizer file (one line naming the file; see :func:`~discrete_diffusion.data.tokenizer.read_run_tokenizer`).
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        raise ValueError(f"{run_dir} has no {MANIFEST_NAME}: a data.tokenizer=bpe run needs the checksum of its "
                         f"tokenizer recorded there at training time")
    entry = _read_manifest(path)["files"].get("tokenizer")
    if entry is None:
        raise ValueError(f"{path} records no tokenizer checksum, but the config has data.tokenizer=bpe")
    return read_run_tokenizer(run_dir, entry["sha256"])
