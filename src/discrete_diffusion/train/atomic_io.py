"""Crash-safe file writes: same-directory temp file, flush, fsync, ``os.replace``, fsync of the directory.

After a crash at any point the destination holds either its old content or the complete new content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Callable

__all__ = ["atomic_write", "commit", "fsync_dir", "sha256_file", "tmp_path", "unlink_quietly"]

log = logging.getLogger(__name__)


def tmp_path(directory: Path, name: str) -> Path:
    return directory / f".{name}.{uuid.uuid4().hex}.tmp"


def atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write ``path`` via a same-directory temp file, fsync, ``os.replace``, fsync(dir)."""
    tmp = tmp_path(path.parent, path.name)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    finally:
        unlink_quietly(tmp)


def commit(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)
