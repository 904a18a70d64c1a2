"""``ddiff ARGS`` in a child process, for the kill tests of tests/test_faults.py (not a test module).

FAULT_LOCKSTEP=1: every ``os.fsync`` is announced on stdout as ``FSYNC <path>`` and waits for a line on
stdin before it runs, so the parent can SIGKILL the child at an exact point of a checkpoint write (a temp
file written but not renamed, a manifest renamed but its directory not yet synced, ...).
FAULT_FSYNC_DELAY=seconds: announce every fsync (``FSYNCED <path>``) without waiting and sleep that long in it
(widens the windows for random kills).
"""

import os
import sys
import time

import torch

torch.set_num_threads(1)  # the same arithmetic as the in-process reference run (tests/conftest.py)

_real_fsync = os.fsync


def _lockstep_fsync(fd: int) -> None:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = "?"
    print(f"FSYNC {path}", flush=True)
    if not sys.stdin.readline():  # the parent went away
        os._exit(3)
    _real_fsync(fd)


def _slow_fsync(fd: int) -> None:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = "?"
    print(f"FSYNCED {path}", flush=True)  # announce only (FAULT_LOCKSTEP unset): the parent does not answer
    time.sleep(float(os.environ["FAULT_FSYNC_DELAY"]))
    _real_fsync(fd)


if os.environ.get("FAULT_LOCKSTEP"):
    os.fsync = _lockstep_fsync
elif os.environ.get("FAULT_FSYNC_DELAY"):
    os.fsync = _slow_fsync

from discrete_diffusion.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
