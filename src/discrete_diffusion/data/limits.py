"""Size limits for loading untrusted data files, checked *before* anything large is allocated.

A small file can describe a huge array: a ``.npy`` header claiming shape ``(2**40, 16)``, a zip member or a
gzip stream of zeros that inflates a thousand-fold, a PNG whose header declares 8000 x 8000 pixels. Every
loader therefore computes, from headers and file sizes alone, how much memory the load will need and
refuses with a one-line ``ValueError`` when it exceeds the budget.

The budget is ``max_bytes`` (config key ``data.max_bytes``; default :data:`DEFAULT_MAX_BYTES` = 1 GiB) and
applies to two quantities:

* the *states*: the loaded data as ``torch.long`` (8 bytes per site and example) must fit in ``max_bytes``;
* the *raw bytes* read or inflated from a file (the ``.npy`` payload, each ``.npz`` member, decompressed
  FASTA, decoded pixels) must fit in ``max_bytes`` too. Text and FASTA files can turn every byte into one
  8-byte state, so their decoded size may be at most ``max_bytes // 8``.

Measured peak memory (``python benchmarks/data_load_memory.py``: 64 Mi sites from a uint8 ``.npy``, a text
file and a gzip FASTA): a load peaks at about 1.7-2.2 x the int64 states it returns (the states, the copies
made by the train/val/test split, and the file's bytes), so the default of 1 GiB of states keeps a load
under about 2.5 GiB. Raise ``data.max_bytes`` on a machine with room for it.

``num_states`` is bounded by :data:`MAX_NUM_STATES` (65,536): the denoiser emits one logit per state and
site, so larger vocabularies exhaust memory long before training starts.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_MAX_BYTES", "MAX_NUM_STATES", "STATE_BYTES", "check_max_bytes", "check_num_states",
           "check_states", "check_raw", "check_decoded", "human_bytes"]

#: Default budget of :mod:`discrete_diffusion.data` loads, in bytes (config key ``data.max_bytes``).
DEFAULT_MAX_BYTES = 1 << 30
#: Largest accepted number of states per site.
MAX_NUM_STATES = 1 << 16
#: Bytes per loaded state (``torch.long``).
STATE_BYTES = 8


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``; exact for small counts."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def check_max_bytes(max_bytes: int) -> int:
    """Validate the ``max_bytes`` option (a positive integer) and return it as ``int``."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise ValueError(f"max_bytes (data.max_bytes) must be a positive integer number of bytes, got {max_bytes!r}")
    return int(max_bytes)


def check_num_states(num_states: int | None, where: str = "") -> None:
    """Refuse ``num_states`` outside ``1..MAX_NUM_STATES`` (``None`` passes: inferred later)."""
    if num_states is None:
        return
    if isinstance(num_states, bool) or not isinstance(num_states, (int, np.integer)):
        raise ValueError(f"num_states must be an integer, got {num_states!r}")
    if not 1 <= int(num_states) <= MAX_NUM_STATES:
        loc = f"{where}: " if where else ""
        raise ValueError(f"{loc}num_states={int(num_states)} is outside the allowed range 1..{MAX_NUM_STATES} "
                         f"(the denoiser emits one logit per state and site)")


def check_states(num_elements: int, max_bytes: int, what: str) -> None:
    """Refuse a load of ``num_elements`` states (8 bytes each) over ``max_bytes``.

    ``what`` describes the source, e.g. ``"x.npy: header shape (1099511627776, 16)"``.
    """
    need = int(num_elements) * STATE_BYTES
    if need > max_bytes:
        raise ValueError(f"{what} would take {human_bytes(need)} as int64 states ({int(num_elements)} values), over "
                         f"the limit data.max_bytes={max_bytes} ({human_bytes(max_bytes)}); raise data.max_bytes if "
                         f"the machine has the memory")


def check_raw(num_bytes: int, max_bytes: int, what: str) -> None:
    """Refuse reading or inflating ``num_bytes`` raw bytes over ``max_bytes``."""
    if int(num_bytes) > max_bytes:
        raise ValueError(f"{what} holds {human_bytes(int(num_bytes))} ({int(num_bytes)} bytes), over the limit "
                         f"data.max_bytes={max_bytes} ({human_bytes(max_bytes)}); raise data.max_bytes if the "
                         f"machine has the memory")


def check_decoded(num_bytes: int, max_bytes: int, what: str) -> None:
    """Refuse text / FASTA of ``num_bytes`` decoded bytes over ``max_bytes // 8`` (a byte can become a state)."""
    cap = max_bytes // STATE_BYTES
    if int(num_bytes) > cap:
        raise ValueError(f"{what} holds more than {cap} bytes ({human_bytes(cap)}); text and FASTA bytes can each "
                         f"become one 8-byte state, so at most data.max_bytes/8 bytes are read (data.max_bytes="
                         f"{max_bytes}); raise data.max_bytes if the machine has the memory")
