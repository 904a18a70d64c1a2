"""Character-level text datasets from any UTF-8 file (``"text"``); the KJV corpus is :mod:`.kjv`.

Tokenisation is one token per Unicode code point (a "character"); nothing is normalised (line endings,
case and whitespace are kept as in the file), except that a leading UTF-8 byte-order mark is dropped.

Splits are contiguous blocks of the text, by position (no shuffling, so no window of the validation or
test text overlaps a training window and nothing leaks across the boundary): with ``n`` characters, the
last ``round(n * test_fraction)`` characters form the test block, the ``round(n * val_fraction)`` before
them the validation block, and everything before that the training block. Each block is then cut into
non-overlapping windows of ``seq_len`` characters, in order; the remainder of a block shorter than
``seq_len`` is dropped (the count is in ``metadata["dropped_chars"]``). ``split_seed`` is accepted for
a uniform loader signature but does not affect this positional split. With ``val_path`` / ``test_path``
(:func:`load_text_file`) that file is the validation / test block and the text is split only into the others.

Vocabulary: the sorted unique characters of the *training* block (or the ``vocab`` passed in). When the
validation or test block (or, with a given ``vocab``, the training block) contains a character outside
the vocabulary, one extra symbol :data:`UNK` (``"<unk>"``) is appended and every such character maps to
its index; ``metadata["unk_index"]`` is that index, or ``None`` when no UNK was needed, and
``metadata["unk_count"]`` counts the replaced characters per split. ``metadata["vocab"]`` is the list of
symbols (JSON-serialisable), so a run directory can decode samples with :func:`decode_text`.
``num_states = len(metadata["vocab"])``.

Subwords: with ``tokenizer="bpe"`` and ``vocab_size=N`` (config ``data.tokenizer=bpe data.vocab_size=N``) the
blocks are split as above and tokenised by :mod:`~discrete_diffusion.data.bpe_text`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DiscreteDataset, split_counts
from .bpe_text import bpe_dataset, token_windows
from .limits import DEFAULT_MAX_BYTES, check_decoded, check_max_bytes
from .normalize import TEXT8_VOCAB, check_normalize, normalize_text
from .tokenizer import TOKENIZER_KINDS

__all__ = ["UNK", "EOS", "load_text_file", "dataset_from_text", "read_utf8", "encode_text", "decode_text"]

#: Vocabulary entry for characters not in the vocabulary (multi-character, so it cannot clash).
UNK = "<unk>"
#: Vocabulary entry of the end-of-sequence token of line / document datasets (:mod:`.text_formats`).
EOS = "<eos>"
_SPECIAL = (UNK, EOS)

_BOM = "\ufeff"
_ENCODE_CHUNK = 1 << 20


def read_utf8(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Read a whole file as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the bytes are not valid UTF-8 (names the file and the byte offset), the file is
            empty, or it is over ``max_bytes // 8`` bytes (each byte can become one 8-byte state; see
            :mod:`~discrete_diffusion.data.limits`).
    """
    return _read_utf8(Path(path).expanduser(), check_max_bytes(max_bytes))[0]


def _read_utf8(p: Path, max_bytes: int) -> tuple[str, str]:
    """The text of ``p`` and the SHA-256 of exactly the bytes decoded."""
    if not p.is_file():
        raise FileNotFoundError(f"text file not found: {p}")
    check_decoded(p.stat().st_size, max_bytes, f"{p}: the text file")
    raw = p.read_bytes()
    check_decoded(len(raw), max_bytes, f"{p}: the text file")
    if not raw:
        raise ValueError(f"{p}: the text file is empty")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 4]
        raise ValueError(
            f"{p}: not valid UTF-8 at byte offset {exc.start} ({exc.reason}; bytes {bad!r}); "
            f"convert the file to UTF-8 first (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if text.startswith(_BOM):
        text = text[1:]
    if not text:
        raise ValueError(f"{p}: the text file is empty")
    return text, digest


def _vocab_list(vocab: str | Sequence[str]) -> list[str]:
    symbols = list(vocab)
    if not symbols:
        raise ValueError("vocab must not be empty")
    for s in symbols:
        if not isinstance(s, str) or (len(s) != 1 and s not in _SPECIAL):
            raise ValueError(f"vocab entries must be single characters (or {UNK!r}, {EOS!r}), got {s!r}")
    if len(set(symbols)) != len(symbols):
        raise ValueError("vocab entries must be distinct")
    return symbols


def encode_text(text: str, vocab: str | Sequence[str]) -> Tensor:
    """Map each character of ``text`` to its index in ``vocab``: ``(len(text),)`` long.

    Characters outside the vocabulary map to the index of :data:`UNK` when ``vocab`` contains it;
    otherwise they raise ``ValueError`` naming the first one and its position.
    """
    symbols = _vocab_list(vocab)
    table = np.array(sorted(ord(s) for s in symbols if s not in _SPECIAL), dtype=np.int64)
    index_of = {ord(s): i for i, s in enumerate(symbols) if s not in _SPECIAL}
    order = np.array([index_of[int(c)] for c in table], dtype=np.int64)
    out = np.empty(len(text), dtype=np.int64)
    for start in range(0, len(text), _ENCODE_CHUNK):  # in chunks: temporaries stay small for long texts
        piece = text[start : start + _ENCODE_CHUNK]
        codes = np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        pos_c = np.minimum(np.searchsorted(table, codes), max(len(table) - 1, 0))
        known = (table[pos_c] == codes) if len(table) else np.zeros(codes.shape, dtype=bool)
        chunk = out[start : start + len(piece)]
        chunk[known] = order[pos_c[known]]
        if not known.all():
            if UNK not in symbols:
                i = int(np.argmin(known))
                raise ValueError(
                    f"character {piece[i]!r} (U+{ord(piece[i]):04X}) at position {start + i} is not in the "
                    f"vocabulary and the vocabulary has no {UNK!r} entry"
                )
            chunk[~known] = symbols.index(UNK)
    return torch.from_numpy(out)


def decode_text(tokens: Tensor | Sequence[Sequence[int]], vocab: str | Sequence[str]) -> list[str]:
    """Turn token rows back into strings: ``(N, L)`` (or ``(L,)``) ints -> ``N`` strings.

    Each index is replaced by its vocabulary entry (the UNK entry appears as ``"<unk>"``). An index
    outside ``0..len(vocab)-1`` (e.g. a mask index) is rendered as ``"\\ufffd"``.
    """
    symbols = list(vocab)
    t = torch.as_tensor(tokens)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"tokens must have shape (N, L), got {tuple(t.shape)}")
    k = len(symbols)
    return ["".join(symbols[i] if 0 <= i < k else "\ufffd" for i in row) for row in t.tolist()]


def dataset_from_text(
    text: str,
    *,
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    vocab: str | Sequence[str] | None = None,
    name: str = "text",
    metadata: dict[str, Any] | None = None,
    where: str = "text",
    val_text: str | None = None,
    test_text: str | None = None,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    tokenizer_json: str | None = None,
    normalize: str | None = None,
) -> DiscreteDataset:
    """Character-level :class:`DiscreteDataset` from a string (see the module docstring for the rules).

    ``normalize="text8"`` (:mod:`~discrete_diffusion.data.normalize`) rewrites ``text`` (and ``val_text`` /
    ``test_text``) to 27 symbols *before* the split; the character vocabulary is then :data:`TEXT8_VOCAB` (unless
    ``vocab`` is given) and ``metadata["normalize"]`` records the rule (``"none"`` when not normalised).

    ``val_text`` / ``test_text``, when given, are the validation / test blocks instead of a fraction of
    ``text`` (their fraction is then ignored and ``text`` is split only into the remaining blocks).
    ``tokenizer="bpe"`` tokenises with byte-level BPE of ``vocab_size`` tokens, trained on the training block,
    or the given ``tokenizer_json`` (a run's cached tokenizer) without training.
    Returns ``kind="sequence"`` splits of shape ``(n, seq_len)``; ``val``/``test`` may be empty when their
    block is shorter than ``seq_len``.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    seq_len = int(seq_len)
    normalize = check_normalize(normalize)
    if normalize != "none":
        raw_chars = len(text)
        text = normalize_text(text, normalize)
        val_text = None if val_text is None else normalize_text(val_text, normalize)
        test_text = None if test_text is None else normalize_text(test_text, normalize)
        if vocab is None and tokenizer == "char":
            vocab = TEXT8_VOCAB
        metadata = {**(metadata or {}), "normalized_from_chars": raw_chars}
    metadata = {**(metadata or {}), "normalize": normalize}
    if not text or (normalize != "none" and not text.strip()):
        after = f" after data.normalize={normalize}" if normalize != "none" else ""
        raise ValueError(f"{where}: the text is empty{after}")
    n = len(text)
    if val_text is not None:
        val_fraction = 0.0
    if test_text is not None:
        test_fraction = 0.0
    n_train, n_val, n_test = split_counts(n, val_fraction, test_fraction)
    blocks = {
        "train": text[:n_train],
        "val": text[n_train : n_train + n_val] if val_text is None else val_text,
        "test": text[n_train + n_val :] if test_text is None else test_text,
    }
    if tokenizer not in TOKENIZER_KINDS:
        raise ValueError(f"data.tokenizer must be one of {', '.join(TOKENIZER_KINDS)}, got {tokenizer!r}")
    if tokenizer == "bpe":
        if vocab is not None:
            raise ValueError("a fixed character vocab cannot be combined with data.tokenizer=bpe")
        return bpe_dataset(blocks, seq_len=seq_len, vocab_size=vocab_size, tokenizer_json=tokenizer_json,
                            name=name, metadata=metadata, where=where, split={
                                "method": "contiguous blocks by position: train | val | test",
                                "chars": {split: len(b) for split, b in blocks.items()},
                                "separate_files": [s for s, t in (("val", val_text), ("test", test_text))
                                                   if t is not None],
                                "val_fraction": float(val_fraction), "test_fraction": float(test_fraction),
                                "split_seed": int(split_seed)})
    if vocab_size is not None or tokenizer_json is not None:
        raise ValueError(f"data.vocab_size applies to data.tokenizer=bpe only, got vocab_size={vocab_size} with "
                         f"data.tokenizer={tokenizer}")
    if n_train < seq_len:
        raise ValueError(
            f"{where}: the training block has {n_train} characters, fewer than seq_len={seq_len}; "
            f"use a smaller seq_len or a longer text"
        )
    if vocab is None:
        symbols = sorted(set(blocks["train"]))
    else:
        symbols = [s for s in _vocab_list(vocab) if s != UNK]
    known = set(symbols)
    unk_count = {split: sum(b.count(ch) for ch in set(b) - known) for split, b in blocks.items()}
    need_unk = any(unk_count.values()) or (vocab is not None and UNK in list(vocab))
    if need_unk:
        symbols = symbols + [UNK]
    parts = {split: token_windows(encode_text(b, symbols), seq_len) for split, b in blocks.items()}
    dropped = {split: len(b) - parts[split].numel() for split, b in blocks.items()}
    meta = dict(metadata or {})
    meta.update(
        vocab=symbols,
        unk_index=symbols.index(UNK) if need_unk else None,
        unk_count=unk_count,
        seq_len=seq_len,
        num_chars=n,
        dropped_chars=dropped,
        split={
            "method": "contiguous blocks by position: train | val | test",
            "chars": {split: len(b) for split, b in blocks.items()},
            "separate_files": [split for split, t in (("val", val_text), ("test", test_text)) if t is not None],
            "val_fraction": float(val_fraction),
            "test_fraction": float(test_fraction),
            "split_seed": int(split_seed),
        },
    )
    return DiscreteDataset(
        train=parts["train"], val=parts["val"], test=parts["test"], num_states=len(symbols),
        name=name, kind="sequence", metadata=meta,
    )


def load_text_file(
    path: str | os.PathLike,
    seq_len: int = 256,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    vocab: str | Sequence[str] | None = None,
    name: str = "text",
    val_path: str | os.PathLike | None = None,
    test_path: str | os.PathLike | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    tokenizer_json: str | None = None,
    normalize: str | None = None,
) -> DiscreteDataset:
    """Character-level dataset from any UTF-8 text file (registry name ``"text"``).

    Args:
        path: the text file (UTF-8; a BOM is dropped).
        seq_len: window length; windows do not overlap.
        val_fraction, test_fraction: sizes of the validation and test blocks (the end of the text).
        split_seed: unused by the positional split; kept for a uniform loader signature.
        vocab: a fixed vocabulary (string or list of characters, optionally with ``"<unk>"``), e.g. the
            ``metadata["vocab"]`` of an earlier run; ``None`` builds it from the training block.
        val_path, test_path: separate UTF-8 files that are the validation / test block (config
            ``data.val_path`` / ``data.test_path``); ``path`` is then not split for that block.
        max_bytes: memory budget (config ``data.max_bytes``); each file may hold at most ``max_bytes // 8``
            bytes, since every byte can become one 8-byte state.
        tokenizer, vocab_size: ``"char"`` (one state per character) or ``"bpe"`` with ``vocab_size`` tokens
            (config ``data.tokenizer`` / ``data.vocab_size``; see the module docstring).
        tokenizer_json: with ``"bpe"``, a trained tokenizer to use instead of training one (a run's
            ``tokenizer.json``, after its checksum was checked).
        normalize: ``"text8"`` to reduce the text to 27 symbols before the split (config ``data.normalize``).

    ``metadata["files"]`` maps ``path`` / ``val_path`` / ``test_path`` to the file and its SHA-256.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8 (file and byte offset named), empty file, text too short for ``seq_len``,
            files over the budget.
    """
    max_bytes = check_max_bytes(max_bytes)
    p = Path(path).expanduser()
    text, digest = _read_utf8(p, max_bytes)
    files = {"path": {"file": str(p.resolve()), "sha256": digest}}
    extra: dict[str, str] = {}
    total = len(text)
    for option, split, other in (("val_path", "val", val_path), ("test_path", "test", test_path)):
        if other is not None:
            q = Path(other).expanduser()
            extra[split], other_digest = _read_utf8(q, max_bytes)
            files[option] = {"file": str(q.resolve()), "sha256": other_digest}
            total += len(extra[split])
            check_decoded(total, max_bytes, f"{p}: the text files together")
    return dataset_from_text(
        text, seq_len=seq_len, val_fraction=val_fraction, test_fraction=test_fraction,
        split_seed=split_seed, vocab=vocab, name=name, where=str(p),
        metadata={"source": str(p.resolve()), "files": files},
        val_text=extra.get("val"), test_text=extra.get("test"),
        tokenizer=tokenizer, vocab_size=vocab_size, tokenizer_json=tokenizer_json, normalize=normalize,
    )
