"""An exclusive lock on a run directory for the lifetime of a training (``ddiff train``, also ``--resume``).

Two trainings on one ``--out`` would interleave their metrics and mix config and checkpoints; the second
one must fail at once. The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``RUN/.lock`` (opened with
``O_NOFOLLOW``, never through a planted symbolic link). The kernel drops it when the process exits, also on
SIGKILL, so a crashed run never leaves a stale lock. ``flock`` locks belong to the open file description:
a second open in the same process conflicts too.

Under torchrun only rank 0 takes it (the trainer calls it on the main rank). On platforms without
``fcntl`` (Windows) no lock is taken: two trainings on one directory are then the user's responsibility.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunDirectoryLocked", "RunLock"]

LOCK_NAME = ".lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RunDirectoryLocked(ValueError):
    """Another process holds the run directory's lock."""


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/.lock`` exclusively (the directory must exist)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirectoryLocked` at once (no waiting)."""
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP or self.path.is_symlink():
                raise ValueError(f"{self.path} is a symbolic link; refusing to follow it (remove it)") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{self.path} is not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirectoryLocked(f"run directory {self.run_dir} is in use by another training (which holds "
                                         f"the lock {self.path}); wait for it to finish or use another --out") from None
            raise
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the lock file stays; it is harmless and reused)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
