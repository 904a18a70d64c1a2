"""The run directory's ``tokenizer.json`` (BPE text runs): written atomically at training time, read back only
as a regular file (never through a link) whose SHA-256 matches the one recorded in ``data.json``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..data.tokenizer import MAX_TOKENIZER_BYTES, TOKENIZER_NAME, check_tokenizer_json
from .atomic_io import atomic_write
from .data_record import MANIFEST_NAME, _read_manifest
from .json_reader import read_regular_bytes

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
        ValueError: missing, a symlink or not a regular file (a FIFO is refused at once), too large, a different
            checksum, or not UTF-8.
    """
    path = Path(run_dir) / TOKENIZER_NAME
    try:  # never through a symbolic link, never blocking on a FIFO (O_NONBLOCK), only a regular file
        raw = read_regular_bytes(path, MAX_TOKENIZER_BYTES, "tokenizer file")
    except FileNotFoundError:
        raise ValueError(f"{path}: the run's tokenizer is missing; it was written at training time and the model's "
                         f"token ids depend on it") from None
    except ValueError as err:
        raise ValueError(f"{err} (the run's tokenizer is written by `ddiff train` as a regular file)") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: the tokenizer changed since training (sha256 {sha256} recorded in data.json, "
                         f"{digest} now); restore the file written by `ddiff train`")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the tokenizer file is not UTF-8") from None
    check_tokenizer_json(text, str(path))  # structure checked here too, so a fault names RUN/tokenizer.json
    return text


def run_tokenizer_json(run_dir: str | os.PathLike) -> str:
    """The JSON of ``RUN_DIR/tokenizer.json`` after checking its SHA-256 against ``data.json``.

    Raises:
        ValueError: no manifest, a manifest without a tokenizer checksum, or a missing, oversized or changed
            tokenizer file (one line naming the file; see :func:`read_run_tokenizer`).
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        raise ValueError(f"{run_dir} has no {MANIFEST_NAME}: a data.tokenizer=bpe run needs the checksum of its "
                         f"tokenizer recorded there at training time")
    entry = _read_manifest(path)["files"].get("tokenizer")
    if entry is None:
        raise ValueError(f"{path} records no tokenizer checksum, but the config has data.tokenizer=bpe")
    return read_run_tokenizer(run_dir, entry["sha256"])
