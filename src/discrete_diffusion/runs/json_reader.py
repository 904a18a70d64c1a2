"""The one bounded JSON reader of the run directory (issue 19 item 7).

Every JSON file the library reads from a run directory (``data.json``, checkpoint manifests, quality caches
``quality/classifier/meta.json`` and ``quality/ar_model/config.json``, sample records ``STEM.json``, the report's
inputs, ``tokenizer.json`` through :mod:`.tokenizer_file`) goes through :func:`read_run_json` or, for text
already read (a line of ``metrics.jsonl``), :func:`~discrete_diffusion.data.bounded_json.loads_bounded`:

- the file is opened without following a symbolic link and without blocking (``O_NONBLOCK``: a FIFO there is
  refused at once, never waited on), and must be a regular file;
- at most ``limit`` bytes are read (``fstat`` first, then a read bounded to ``limit + 1``);
- the parse is bounded in nesting depth and number length (no ``RecursionError``, no digit-limit message).

Any fault is one ``ValueError`` naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from ..data.bounded_json import MAX_JSON_DEPTH, MAX_NUMBER_CHARS, loads_bounded

__all__ = ["read_run_json", "read_regular_bytes", "loads_bounded"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def read_regular_bytes(path: str | os.PathLike, limit: int, what: str = "file", follow: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``); never through a link unless ``follow`` (a path
    the user typed), never blocking on a FIFO. ``FileNotFoundError`` when it is missing; ``ValueError`` (one line
    naming the path) for a link, a FIFO, a device, a directory or a file over ``limit`` bytes."""
    path = Path(path)
    flags = os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else _NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP or (not follow and path.is_symlink()):
            raise ValueError(f"{path}: the {what} is a symbolic link, not a regular file; it is never "
                             "followed") from None
        raise ValueError(f"{path}: cannot open the {what} ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: the {what} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{path}: the {what} is over {limit} bytes ({info.st_size})")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"{path}: the {what} is over {limit} bytes")
    return raw


def read_run_json(path: str | os.PathLike, limit: int, what: str = "JSON file", follow: bool = False,
                  max_depth: int = MAX_JSON_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS) -> Any:
    """The parsed JSON of ``path`` read by :func:`read_regular_bytes` and parsed by
    :func:`~discrete_diffusion.data.bounded_json.loads_bounded` (ValueError naming the file; FileNotFoundError
    when it is missing)."""
    raw = read_regular_bytes(path, limit, what, follow)
    return loads_bounded(raw, f"{path}", max_bytes=limit, max_depth=max_depth, max_number_chars=max_number_chars)
