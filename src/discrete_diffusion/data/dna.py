"""DNA sequences from FASTA files (``"fasta"``) and the E. coli 536 genome (``"ecoli"``).

Alphabet: ``A, C, G, T -> 0, 1, 2, 3`` (case-insensitive; soft-masked lower case is read as upper case),
``num_states = 4``, ``kind = "sequence"``.

File format: plain or gzip-compressed FASTA (gzip is recognised by its magic bytes ``1f 8b``, not by the
file name). Lines may end in ``\\n``, ``\\r\\n`` or a lone ``\\r`` (classic Mac OS). The first non-blank line
must be a ``>`` header; lines starting with ``;`` are comments; whitespace inside sequence lines is ignored. A
record's name is the first word of its header.

Windows: each record is cut into non-overlapping windows of ``seq_len`` bases, in order; windows never
span two records (a junction between records is not biology) and the last ``len % seq_len`` bases of a
record are dropped. Splits are contiguous by position: the windows of all records in file order, the last
``round(n * test_fraction)`` windows are the test split, the ``round(n * val_fraction)`` before them the
validation split, the rest the training split (for a single genome: the end of the chromosome is the
test set). ``split_seed`` is accepted for a uniform loader signature and does not affect the split. With
``val_path`` / ``test_path`` the windows of that file are the validation / test split instead.

Any character other than ACGT (``N``, IUPAC ambiguity codes such as ``R``/``Y``, gaps ``-``) is an error
naming the character, the record and the 1-based position in the record, unless ``unknown="skip"``, which
drops every window that contains one (the number dropped is in ``metadata["skipped_windows"]``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DiscreteDataset, split_counts
from .fashion_mnist import DatasetUnavailableError
from .limits import DEFAULT_MAX_BYTES, STATE_BYTES, check_decoded, check_max_bytes, check_states

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
_HEADER = re.compile(rb"^>([^\n]*)", re.MULTILINE)
_COMMENT = re.compile(rb"^;[^\n]*", re.MULTILINE)
_GZIP_CHUNK = 1 << 20
#: At most this many records per FASTA file.
MAX_RECORDS = 1_000_000


class FastaRecord:
    """One FASTA record: ``name`` (first word of the header), ``header`` and ``codes`` (uint8, 255 = not ACGT)."""

    __slots__ = ("name", "header", "codes", "raw")

    def __init__(self, name: str, header: str, raw: bytes) -> None:
        self.name, self.header, self.raw = name, header, raw
        self.codes = _LUT[np.frombuffer(raw, dtype=np.uint8)]

    def __len__(self) -> int:
        return int(self.codes.shape[0])


def _read_bytes(p: Path, max_bytes: int) -> tuple[bytes, str]:
    """The decoded bytes of a plain or gzipped file and the SHA-256 of the file's bytes.

    Gzip is inflated as a stream and stopped as soon as it exceeds ``max_bytes // 8`` bytes, so a small
    gzip of zeros cannot inflate to gigabytes (see :mod:`~discrete_diffusion.data.limits`).
    """
    check_decoded(p.stat().st_size, max_bytes, f"{p}: the FASTA file")
    raw = p.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] != _GZIP_MAGIC:
        check_decoded(len(raw), max_bytes, f"{p}: the FASTA file")
        return raw, digest
    cap = max_bytes // STATE_BYTES
    chunks, total = [], 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            while True:
                chunk = stream.read(_GZIP_CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                check_decoded(total, max_bytes, f"{p}: the gzip stream inflated")
                chunks.append(chunk)
    except EOFError as exc:
        raise ValueError(f"{p}: truncated gzip file ({exc})") from None
    except (OSError, zlib.error) as exc:
        raise ValueError(f"{p}: corrupt gzip file ({exc})") from None
    assert total <= cap
    return b"".join(chunks), digest


def read_fasta(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> list[FastaRecord]:
    """Parse a plain or gzipped FASTA file into records (see the module docstring).

    Line ends may be ``\\n``, ``\\r\\n`` or a lone ``\\r`` (classic Mac OS). At most ``max_bytes // 8``
    decoded bytes and :data:`MAX_RECORDS` records are read.

    Raises:
        FileNotFoundError: no such file.
        ValueError: empty file, truncated/corrupt gzip, no ``>`` header before the first sequence line,
            a file over the limits.
    """
    return _read_fasta(Path(path).expanduser(), check_max_bytes(max_bytes))[0]


def _read_fasta(p: Path, max_bytes: int) -> tuple[list[FastaRecord], str]:
    if not p.is_file():
        raise FileNotFoundError(f"FASTA file not found: {p}")
    data, digest = _read_bytes(p, max_bytes)
    # One line end for all: CRLF (Windows) and a lone CR (classic Mac OS) become LF; comment lines are
    # blanked (line numbers kept). All in C, with no per-line Python objects.
    text = _COMMENT.sub(b"", data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
    del data
    records: list[FastaRecord] = []
    previous: re.Match[bytes] | None = None

    def flush(end: int) -> None:
        if previous is None:
            return
        header = previous.group(1).decode("utf-8", "replace").strip()
        name = header.split()[0] if header.split() else f"record{len(records) + 1}"
        records.append(FastaRecord(name, header, text[previous.end() : end].translate(None, _WHITESPACE)))

    for match in _HEADER.finditer(text):
        if previous is None:
            _check_prefix(text[: match.start()], p)
        flush(match.start())
        previous = match
        if len(records) >= MAX_RECORDS:
            raise ValueError(f"{p}: more than {MAX_RECORDS} FASTA records; split the file")
    if previous is None:
        what = "empty" if not text.strip() else "without a '>' header"
        if text.strip():
            _check_prefix(text, p)
        raise ValueError(f"{p}: FASTA file is {what}")
    flush(len(text))
    return records, digest


def _check_prefix(prefix: bytes, p: Path) -> None:
    """Only blank lines may come before the first ``>`` header."""
    stripped = prefix.lstrip(_WHITESPACE)
    if stripped:
        at = len(prefix) - len(stripped)
        lineno = prefix.count(b"\n", 0, at) + 1
        line = stripped.split(b"\n", 1)[0]
        raise ValueError(
            f"{p}: not a FASTA file: line {lineno} comes before any '>' header (starts with {line[:40]!r})"
        )


def _describe_char(byte: int) -> str:
    return repr(chr(byte)) if 32 <= byte < 127 else f"byte 0x{byte:02x}"


def _windows(records: list[FastaRecord], seq_len: int, unknown: str, p: Path) -> tuple[np.ndarray, int]:
    """All complete windows ``(n, seq_len)`` uint8 of the records, in order, and the number skipped."""
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
    if allw.shape[0] == 0:
        longest = max(len(r) for r in records)
        raise ValueError(
            f"{p}: no complete window of seq_len={seq_len} bases"
            + (" without non-ACGT characters" if skipped else "")
            + f" (longest record: {longest} bases)"
        )
    return allw, skipped


def load_fasta(
    path: str | os.PathLike,
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    unknown: str = "error",
    name: str = "fasta",
    val_path: str | os.PathLike | None = None,
    test_path: str | os.PathLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DiscreteDataset:
    """DNA windows from a plain or gzipped FASTA file (registry name ``"fasta"``).

    Args:
        path: the FASTA file (``.fa``, ``.fna``, ``.fasta``, gzipped or not).
        seq_len: window length in bases.
        val_fraction, test_fraction: fractions of windows for the validation and test splits (the end of
            the file).
        split_seed: unused by the positional split; kept for a uniform loader signature.
        unknown: ``"error"`` (any non-ACGT character raises) or ``"skip"`` (drop windows containing one).
        val_path, test_path: separate FASTA files whose windows are the validation / test split (config
            ``data.val_path`` / ``data.test_path``); ``path`` is then not split for it.
        max_bytes: memory budget (config ``data.max_bytes``): at most ``max_bytes // 8`` decoded bytes per
            file (gzip is inflated as a stream and stopped there); see :mod:`~discrete_diffusion.data.limits`.

    ``metadata["files"]`` maps ``path`` / ``val_path`` / ``test_path`` to the file and its SHA-256.

    Raises:
        ValueError: bad option, file errors as in :func:`read_fasta`, a non-ACGT character with
            ``unknown="error"`` (names it, the record and the 1-based position), no complete window.
    """
    if unknown not in UNKNOWN_POLICIES:
        raise ValueError(f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}; got {unknown!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    seq_len = int(seq_len)
    max_bytes = check_max_bytes(max_bytes)
    p = Path(path).expanduser()
    records, digest = _read_fasta(p, max_bytes)
    allw, skipped = _windows(records, seq_len, unknown, p)
    files = {"path": {"file": str(p.resolve()), "sha256": digest}}
    extra: dict[str, np.ndarray] = {}
    for option, split, other in (("val_path", "val", val_path), ("test_path", "test", test_path)):
        if other is not None:
            q = Path(other).expanduser()
            other_records, other_digest = _read_fasta(q, max_bytes)
            extra[split], other_skipped = _windows(other_records, seq_len, unknown, q)
            skipped += other_skipped
            files[option] = {"file": str(q.resolve()), "sha256": other_digest}
    check_states(allw.size + sum(w.size for w in extra.values()), max_bytes, f"{p}: the windows of all splits")
    total = int(allw.shape[0])
    n_train, n_val, n_test = split_counts(total, 0.0 if "val" in extra else val_fraction,
                                          0.0 if "test" in extra else test_fraction)
    x = torch.from_numpy(allw.astype(np.int64))
    parts = {"train": x[:n_train].clone(), "val": x[n_train : n_train + n_val].clone(),
             "test": x[n_train + n_val :].clone()}
    for split, w in extra.items():
        parts[split] = torch.from_numpy(w.astype(np.int64))
    meta: dict[str, Any] = {
        "source": str(p.resolve()),
        "sha256": digest,
        "files": files,
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
            "windows": {split: int(t.shape[0]) for split, t in parts.items()},
            "separate_files": sorted(extra),
            "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction),
            "split_seed": int(split_seed),
        },
    }
    return DiscreteDataset(
        train=parts["train"], val=parts["val"], test=parts["test"],
        num_states=4, name=name, kind="sequence", metadata=meta,
    )


def load_ecoli(
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    path: str | os.PathLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
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
                      split_seed=split_seed, unknown="error", name="ecoli", max_bytes=max_bytes)


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
