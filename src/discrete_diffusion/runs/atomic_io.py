"""Crash-safe, link-safe file writes: every file the library writes goes through this module.

Crash safety: a file is written to a same-directory temp file, flushed, fsync'ed, moved into place with
``os.replace`` and the directory is fsync'ed. After a crash at any point the destination holds either its
old content or the complete new content.

Link safety (a run directory may come from someone else, docs/bad-input.md "Hostile run directories"):

- temp files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a random name, so a planted file or
  symbolic link is never opened; ``os.replace`` replaces a link at the destination, never its target;
- appends (``metrics.jsonl``) open with ``O_NOFOLLOW`` and refuse anything but a regular file with one link;
- the directory a file is written into is checked with ``lstat`` (not ``stat``): a symbolic link there is
  refused. Directories inside a run directory are created with :func:`ensure_dir`, which checks every
  component below the user-given root. The root itself (the path the user typed) may be a link:
  :func:`user_dir` resolves it once.

The checks use ``lstat`` before the write; they protect against links planted in a directory before the
command starts, not against an attacker racing the command with write access to the same directory.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import uuid
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["UnsafePathError", "append_text", "atomic_write", "atomic_write_text", "commit", "ensure_dir",
           "fsync_dir", "open_new", "probe_writable", "read_text_nofollow", "refuse_link", "sha256_file",
           "tmp_path", "unlink_quietly", "user_dir"]

log = logging.getLogger(__name__)

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # absent on Windows: the lstat checks remain
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted at an append target must not block the open


class UnsafePathError(ValueError):
    """A write would follow a symbolic link or write into something that is not a regular file/directory."""


def _link_error(path: Path) -> UnsafePathError:
    return UnsafePathError(f"{path} is a symbolic link; refusing to write through it (remove the link or use "
                           "another output directory)")


def refuse_link(path: Path) -> None:
    """Raise :class:`UnsafePathError` when ``path`` exists as a symbolic link (``lstat``; a missing path passes)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(path)


def _check_dir(directory: Path) -> None:
    """``directory`` must exist as a real directory (``lstat``: a symbolic link is refused)."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise _link_error(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{directory} is not a directory")


def user_dir(path: str | os.PathLike) -> Path:
    """A directory path the user typed: followed if it is a symbolic link (the user chose it), returned as is
    otherwise. Everything below it is then checked by :func:`ensure_dir` and :func:`atomic_write`."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def ensure_dir(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Create ``directory`` (and missing parents) and check that no component from below ``root`` down to
    ``directory`` is a symbolic link or a non-directory. ``root`` (default: ``directory``'s parent) is
    created with ``mkdir(parents=True)`` and may itself be reached through links (a path the user typed)."""
    directory = Path(directory)
    root = directory.parent if root is None else Path(root)
    try:
        parts = directory.relative_to(root).parts
    except ValueError:
        raise ValueError(f"internal: {directory} is not below {root}") from None
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        _check_dir(current)
    return directory


def open_new(path: Path, mode: int = 0o644) -> int:
    """Create ``path`` exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) for writing; returns the descriptor.
    Fails when anything, also a dangling symbolic link, exists at ``path``."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY, mode)


def tmp_path(directory: Path, name: str) -> Path:
    """A fresh temp-file name next to ``name``: ``.NAME.<32 hex>.tmp``."""
    return directory / f".{name}.{uuid.uuid4().hex}.tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` via a same-directory temp file (created ``O_EXCL | O_NOFOLLOW``), fsync, ``os.replace``,
    fsync(dir). ``write(f)`` gets the binary file object. The parent directory must exist and must not be a
    symbolic link; a link at ``path`` itself is replaced by the new regular file (its target is untouched)."""
    path = Path(path)
    _check_dir(path.parent)
    tmp = tmp_path(path.parent, path.name)
    try:
        with open(tmp, "wb", opener=lambda name, _flags: open_new(Path(name))) as f:  # f.name is the path
            write(f)
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    finally:
        unlink_quietly(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append UTF-8 ``text`` to ``path`` (created if missing), never through a symbolic link: opened with
    ``O_NOFOLLOW``; a FIFO, device, directory or hard-linked file there is refused."""
    path = Path(path)
    _check_dir(path.parent)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise _link_error(path) from None
        if err.errno == errno.ENXIO:  # a FIFO without a reader (O_NONBLOCK)
            raise UnsafePathError(f"{path} is not a regular file; refusing to append to it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafePathError(f"{path} is not a regular file with a single link; refusing to append to it")
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def read_text_nofollow(path: str | os.PathLike) -> str | None:
    """The UTF-8 text of the regular file ``path`` (undecodable bytes replaced), ``None`` when it is missing;
    a symbolic link or a non-regular file there raises :class:`UnsafePathError`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP or path.is_symlink():
            raise UnsafePathError(f"{path} is a symbolic link; refusing to follow it") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafePathError(f"{path} is not a regular file")
        return f.read().decode("utf-8", errors="replace")


def probe_writable(directory: Path) -> None:
    """Check that files can be created in ``directory`` (a real directory, not a link): create and remove a
    fresh temp file. Raises ``OSError`` or :class:`UnsafePathError`."""
    _check_dir(directory)
    probe = tmp_path(directory, "write_test")
    os.close(open_new(probe))
    os.unlink(probe)


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
