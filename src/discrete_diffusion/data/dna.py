"""DNA sequences from FASTA files (``"fasta"``) and the E. coli 536 genome (``"ecoli"``).

Alphabet: ``A, C, G, T -> 0, 1, 2, 3`` (case-insensitive; soft-masked lower case is read as upper case),
``num_states = 4``, ``kind = "sequence"``.

File format: plain or gzip-compressed FASTA (gzip is recognised by its magic bytes ``1f 8b``, not by the
file name). The first non-blank line must be a ``>`` header; lines starting with ``;`` are comments;
whitespace inside sequence lines is ignored. A record's name is the first word of its header.

Windows: each record is cut into non-overlapping windows of ``seq_len`` bases, in order; windows never
span two records (a junction between records is not biology) and the last ``len % seq_len`` bases of a
record are dropped. Splits are contiguous by position: the windows of all records in file order, the last
``round(n * test_fraction)`` windows are the test split, the ``round(n * val_fraction)`` before them the
validation split, the rest the training split (for a single genome: the end of the chromosome is the
test set). ``split_seed`` is accepted for a uniform loader signature and does not affect the split.

Any character other than ACGT (``N``, IUPAC ambiguity codes such as ``R``/``Y``, gaps ``-``) is an error
naming the character, the record and the 1-based position in the record, unless ``unknown="skip"``, which
drops every window that contains one (the number dropped is in ``metadata["skipped_windows"]``).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .arrays import file_sha256
from .base import DiscreteDataset, split_counts
from .fashion_mnist import DatasetUnavailableError

__all__ = [
    "DNA_ALPHABET",
    "UNKNOWN_POLICIES",
    "ECOLI_DEBIAN_PACKAGE",
    "ECOLI_PATH",
    "FastaRecord",
    "read_fasta",
    "load_fasta",
    "load_ecoli",
    "encode_dna",
    "decode_dna",
]

#: Base for state ``i``.
DNA_ALPHABET = "ACGT"
#: Allowed values of the ``unknown`` option.
UNKNOWN_POLICIES = ("error", "skip")
#: Debian/Ubuntu package that ships the E. coli 536 genome (Bowtie's example files).
ECOLI_DEBIAN_PACKAGE = "bowtie-examples"
#: Where :data:`ECOLI_DEBIAN_PACKAGE` installs it.
ECOLI_PATH = Path("/usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz")

_GZIP_MAGIC = b"\x1f\x8b"
_BAD = 255
_LUT = np.full(256, _BAD, dtype=np.uint8)
for _i, _c in enumerate(DNA_ALPHABET):
    _LUT[ord(_c)] = _i
    _LUT[ord(_c.lower())] = _i
_WHITESPACE = b" \t\r\n\v\f"


class FastaRecord:
    """One FASTA record: ``name`` (first word of the header), ``header`` and ``codes`` (uint8, 255 = not ACGT)."""

    __slots__ = ("name", "header", "codes", "raw")

    def __init__(self, name: str, header: str, raw: bytes) -> None:
        self.name, self.header, self.raw = name, header, raw
        self.codes = _LUT[np.frombuffer(raw, dtype=np.uint8)]

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def _read_bytes(p: Path) -> bytes:
    raw = p.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise ValueError(f"{p}: truncated gzip file ({exc})") from None
    except (OSError, zlib.error) as exc:
        raise ValueError(f"{p}: corrupt gzip file ({exc})") from None


def read_fasta(path: str | os.PathLike) -> list[FastaRecord]:
    """Parse a plain or gzipped FASTA file into records (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file, truncated/corrupt gzip, no ``>`` header before the first sequence line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"FASTA file not found: {p}")
    data = _read_bytes(p)
    lines = data.split(b"\n")
    records: list[FastaRecord] = []
    header: bytes | None = None
    chunks: list[bytes] = []

    def flush() -> None:
        if header is None:
            return
        text = header.decode("utf-8", "replace").strip()
        name = text.split()[0] if text.split() else f"record{len(records) + 1}"
        records.append(FastaRecord(name, text, b"".join(chunks).translate(None, _WHITESPACE)))

    for lineno, line in enumerate(lines, 1):
        if line.startswith(b">"):
            flush()
            header, chunks = line[1:], []
        elif line.startswith(b";"):
            continue
        elif header is None:
            if line.strip():
                raise ValueError(
                    f"{p}: not a FASTA file: line {lineno} comes before any '>' header "
                    f"(starts with {line[:40]!r})"
                )
        else:
            chunks.append(line)
    flush()
    if not records:
        what = "empty" if not data.strip() else "without a '>' header"
        raise ValueError(f"{p}: FASTA file is {what}")
    return records


def _describe_char(byte: int) -> str:
    return repr(chr(byte)) if 32 <= byte < 127 else f"byte 0x{byte:02x}"


def load_fasta(
    path: str | os.PathLike,
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    unknown: str = "error",
    name: str = "fasta",
) -> DiscreteDataset:
    """DNA windows from a plain or gzipped FASTA file (registry name ``"fasta"``).

    Args:
        path: the FASTA file (``.fa``, ``.fna``, ``.fasta``, gzipped or not).
        seq_len: window length in bases.
        val_fraction, test_fraction: fractions of windows for the validation and test splits (the end of
            the file).
        split_seed: unused by the positional split; kept for a uniform loader signature.
        unknown: ``"error"`` (any non-ACGT character raises) or ``"skip"`` (drop windows containing one).

    Raises:
        ValueError: bad option, file errors as in :func:`read_fasta`, a non-ACGT character with
            ``unknown="error"`` (names it, the record and the 1-based position), no complete window.
    """
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}; got {unknown!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    seq_len = int(seq_len)
    p = Path(path).expanduser()
    records = read_fasta(p)
    windows: list[np.ndarray] = []
    skipped = 0
    for rec in records:
        bad = rec.codes == _BAD
        if unknown == "error" and bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{p}: record {rec.name!r} has the non-ACGT character {_describe_char(rec.raw[i])} at "
                f"position {i + 1}; only A, C, G, T (any case) are allowed; pass unknown='skip' to drop "
                f"the windows that contain such characters"
            )
        n = len(rec) // seq_len
        w = rec.codes[: n * seq_len].reshape(n, seq_len)
        if unknown == "skip":
            keep = (w != _BAD).all(axis=1)
            skipped += int((~keep).sum())
            w = w[keep]
        windows.append(w)
    allw = np.concatenate(windows, axis=0) if windows else np.zeros((0, seq_len), np.uint8)
    total = int(allw.shape[0])
    if total == 0:
        longest = max(len(r) for r in records)
        raise ValueError(
            f"{p}: no complete window of seq_len={seq_len} bases"
            + (" without non-ACGT characters" if skipped else "")
            + f" (longest record: {longest} bases)"
        )
    n_train, n_val, n_test = split_counts(total, val_fraction, test_fraction)
    x = torch.from_numpy(allw.astype(np.int64))
    meta: dict[str, Any] = {
        "source": str(p.resolve()),
        "sha256": file_sha256(p),
        "alphabet": DNA_ALPHABET,
        "seq_len": seq_len,
        "records": len(records),
        "record_names": [r.name for r in records[:20]],
        "bases": int(sum(len(r) for r in records)),
        "unknown": unknown,
        "skipped_windows": skipped,
        "vocab": list("ACGT"),
        "split": {
            "method": "contiguous windows by position: train | val | test",
            "windows": {"train": n_train, "val": n_val, "test": n_test},
            "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction),
            "split_seed": int(split_seed),
        },
    }
    return DiscreteDataset(
        train=x[:n_train].clone(), val=x[n_train : n_train + n_val].clone(), test=x[n_train + n_val :].clone(),
        num_states=4, name=name, kind="sequence", metadata=meta,
    )


def load_ecoli(
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    path: str | os.PathLike | None = None,
) -> DiscreteDataset:
    """The E. coli 536 genome (NC_008253, 4.9 Mbp, ACGT only; registry name ``"ecoli"``).

    Read from :data:`ECOLI_PATH`, installed by the Debian/Ubuntu package ``bowtie-examples``, or from
    ``path``. Windows and splits as in :func:`load_fasta`.

    Raises:
        DatasetUnavailableError: the file is missing (names the apt package).
    """
    p = Path(path).expanduser() if path is not None else ECOLI_PATH
    if not p.is_file():
        raise DatasetUnavailableError(
            f"dataset 'ecoli' needs {p}, installed by the Debian/Ubuntu package {ECOLI_DEBIAN_PACKAGE!r} "
            f"(apt-get install {ECOLI_DEBIAN_PACKAGE}); or pass path=<NC_008253 FASTA file>"
        )
    return load_fasta(p, seq_len=seq_len, val_fraction=val_fraction, test_fraction=test_fraction,
                      split_seed=split_seed, unknown="error", name="ecoli")


def encode_dna(seq: str) -> Tensor:
    """``"ACGT..."`` (any case) -> ``(len,)`` long in 0..3; other characters raise ``ValueError``."""
    codes = _LUT[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
    if (codes == _BAD).any():
        i = int(np.argmax(codes == _BAD))
        raise ValueError(f"non-ACGT character {seq[i]!r} at position {i + 1}")
    return torch.from_numpy(codes.astype(np.int64))


def decode_dna(tokens: Tensor | Any) -> list[str]:
    """Token rows back to base strings: ``(N, L)`` (or ``(L,)``) ints in 0..3 -> ``N`` strings.

    Values outside 0..3 (e.g. a mask index) are written as ``"N"``.
    """
    t = torch.as_tensor(tokens)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"tokens must have shape (N, L), got {tuple(t.shape)}")
    lut = np.frombuffer(b"ACGT" + b"N", dtype=np.uint8)
    arr = t.detach().cpu().numpy().astype(np.int64)
    arr = np.where((arr >= 0) & (arr < 4), arr, 4)
    return [lut[row].tobytes().decode("ascii") for row in arr]
