"""Text files in the layouts of the language-modelling benchmarks (registry name ``"text"``, config ``data.format``).

``data.format`` says what the file is (each layout is documented in docs/text.md):

- ``plain`` (default): any UTF-8 text, split by position and cut into windows (:mod:`~discrete_diffusion.data.text`;
  unchanged from before the option existed).
- ``text8``: Mahoney's ``text8`` file (10^8 characters of a-z and space; D3PM, SEDD, MD4): the split is the papers'
  90 M / 5 M / 5 M characters, i.e. 90 % / 5 % / 5 % by position, the vocabulary the 27 symbols
  :data:`~discrete_diffusion.data.normalize.TEXT8_VOCAB`. Any other character is an error (reduce another text with
  ``data.normalize=text8``); ``data.val_path`` / ``data.test_path`` do not apply.
- ``lines``: one example a line (LM1B-style, one sentence a line). Empty lines (after normalisation) are skipped. The
  lines are split by position (the last 5 % of the lines are the test split, the 5 % before them validation, or the
  lines of ``data.val_path`` / ``data.test_path``). Each line is followed by the end-of-sequence token EOS, then
  ``data.packing=pack`` concatenates a split's lines into one stream cut into windows of ``data.seq_len`` (the
  remainder dropped; a window may start mid-sentence, as MDLM's "wrapped" LM1B), while ``data.packing=pad`` makes
  every line one row: the line, EOS, then EOS repeated to ``data.seq_len`` (a line longer than ``seq_len - 1``
  tokens is cut to ``seq_len`` tokens and has no EOS; ``metadata["truncated_lines"]`` counts them per split).
- ``documents``: long documents (OpenWebText-style) as JSON Lines, one document a line: a JSON object with a string
  field ``"text"`` or a bare JSON string. Empty documents are skipped; documents are split by position like lines;
  each document is followed by EOS, a split's documents are concatenated and cut into windows of ``data.seq_len``.

The EOS convention: EOS is one extra vocabulary symbol :data:`EOS` (``"<eos>"``, multi-character so it cannot clash
with a character) after the characters (and before ``"<unk>"``, when one is needed); ``metadata["eos"]`` is its
index, which ``ddiff sample`` on a block-diffusion run uses to stop a sample. It ends every example, so a model
learns where sentences and documents end; in ``pad`` rows everything after the first EOS is EOS. Likelihoods count
EOS as one symbol per example (bits per character then include one EOS per line or document).

With ``data.normalize=text8`` every line or document is normalised and stripped of its leading and trailing space
(the EOS marks the boundary), so the vocabulary is the 27 symbols plus EOS. The sub-word tokenizer
(``data.tokenizer=bpe``) applies to ``plain`` and ``text8`` only: a BPE EOS needs a special token in the tokenizer,
which is not built. Every file is bounded by ``data.max_bytes`` as for every loader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .base import DiscreteDataset, split_counts
from .bounded_json import loads_bounded
from .bpe_text import token_windows
from .limits import DEFAULT_MAX_BYTES, check_decoded, check_max_bytes, check_states
from .normalize import TEXT8_VOCAB, check_normalize, normalize_text
from .text import EOS, UNK, _read_utf8, dataset_from_text, encode_text, load_text_file

__all__ = ["EOS", "TEXT_FORMATS", "PACKINGS", "load_text", "examples_dataset", "read_lines", "read_documents"]

#: Accepted values of ``data.format``.
TEXT_FORMATS = ("plain", "text8", "lines", "documents")
#: Accepted values of ``data.packing`` (``lines`` only; ``documents`` are always packed).
PACKINGS = ("pack", "pad")


def read_lines(text: str) -> list[str]:
    """The lines of ``text`` (``\\n`` separated, a trailing ``\\r`` dropped), empty ones included; a final newline
    ends the last line rather than starting an empty one."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_documents(text: str, where: str) -> list[str]:
    """The documents of a JSON Lines text: each non-blank line is ``{"text": "..."}`` or ``"..."``.

    Raises:
        ValueError: a line that is not JSON, or not an object with a string ``"text"`` / a string (line named).
    """
    docs = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:  # bounded: depth and number length checked before json sees the line (a file is user input)
            value = loads_bounded(line, "line", max_bytes=len(line))
        except ValueError as exc:
            detail = str(exc).removeprefix("line: ")
            raise ValueError(f"{where}: line {number} is not valid JSON ({detail[:120]}); data.format=documents "
                             f"expects JSON Lines, one {{\"text\": ...}} object a line") from None
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise ValueError(f"{where}: line {number} is not a JSON string or an object with a string field "
                             f"\"text\" (data.format=documents)")
        docs.append(value)
    return docs


def _clean(examples: Sequence[str], normalize: str) -> list[str]:
    if normalize != "none":
        examples = [normalize_text(e, normalize).strip(" ") for e in examples]
    return [e for e in examples if e]


def examples_dataset(
    splits: dict[str, list[str]],
    *,
    seq_len: int,
    packing: str = "pack",
    normalize: str | None = None,
    vocab: str | Sequence[str] | None = None,
    name: str = "text",
    metadata: dict | None = None,
    where: str = "text",
    text_format: str = "lines",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DiscreteDataset:
    """A character-level dataset of examples (lines or documents) with an EOS after each (module docstring).

    Args:
        splits: ``{"train", "val", "test"}`` -> the examples of that split, in order (raw text).
        seq_len: the row length; packing: ``"pack"`` (one stream cut into windows) or ``"pad"`` (one example a row).
        normalize: ``None`` / ``"none"`` or ``"text8"`` (applied to each example, then stripped of spaces).
        vocab: a fixed character vocabulary (without EOS; ``"<unk>"`` allowed), else the training examples' characters
            (the 27 text8 symbols when normalised).
        max_bytes: memory budget of the padded rows (``data.max_bytes``).

    Returns ``kind="sequence"`` splits ``(n, seq_len)``; ``metadata`` gains ``vocab`` (with :data:`EOS`), ``eos``
    (its index), ``unk_index``, ``num_examples``, ``skipped_examples``, ``dropped_tokens`` or ``truncated_lines``.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if packing not in PACKINGS:
        raise ValueError(f"data.packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
    normalize = check_normalize(normalize)
    cleaned = {s: _clean(ex, normalize) for s, ex in splits.items()}
    skipped = {s: len(splits[s]) - len(cleaned[s]) for s in splits}
    if not cleaned["train"]:
        raise ValueError(f"{where}: no non-empty {text_format} in the training split")
    if vocab is not None:
        chars = [s for s in vocab if s not in (UNK, EOS)]
    elif normalize == "text8":
        chars = list(TEXT8_VOCAB)
    else:
        chars = sorted(set().union(*(set(e) for e in cleaned["train"])))
    known = set(chars)
    unk_count = {s: sum(sum(1 for ch in e if ch not in known) for e in ex) for s, ex in cleaned.items()}
    symbols = chars + [EOS] + ([UNK] if any(unk_count.values()) else [])
    eos = symbols.index(EOS)
    parts: dict[str, Tensor] = {}
    dropped, truncated = {}, {}
    for split, examples in cleaned.items():
        n = len(examples)
        lens = torch.tensor([len(e) for e in examples], dtype=torch.long)
        codes = encode_text("".join(examples), symbols)              # every example's characters, in one pass
        example_of = torch.repeat_interleave(torch.arange(n), lens)   # (chars,) the example of each character
        if packing == "pack":   # example i's characters shift right by the i EOS written before them
            stream = torch.full((codes.numel() + n,), eos, dtype=torch.long)
            stream[torch.arange(codes.numel()) + example_of] = codes
            parts[split] = token_windows(stream, seq_len)
            dropped[split] = int(stream.numel() - parts[split].numel())
        else:                   # one row per example: its characters, then EOS to the end of the row
            check_states(n * seq_len, max_bytes, f"{where}: {n} {split} lines padded to seq_len={seq_len}")
            rows = torch.full((n, seq_len), eos, dtype=torch.long)
            starts = torch.cumsum(lens, 0) - lens
            within = torch.arange(codes.numel()) - starts[example_of]
            keep = within < seq_len
            rows[example_of[keep], within[keep]] = codes[keep]
            parts[split] = rows
            truncated[split] = int((lens > seq_len - 1).sum())
    if parts["train"].shape[0] == 0:
        raise ValueError(f"{where}: the training split has fewer than seq_len={seq_len} tokens; use a smaller "
                         f"seq_len or more text")
    meta = dict(metadata or {})
    meta.update(vocab=symbols, eos=eos, eos_symbol=EOS, unk_index=symbols.index(UNK) if UNK in symbols else None,
                unk_count=unk_count, seq_len=seq_len, normalize=normalize, text_format=text_format, packing=packing,
                num_examples={s: len(e) for s, e in cleaned.items()}, skipped_examples=skipped,
                num_chars=sum(len(e) for ex in cleaned.values() for e in ex))
    if packing == "pack":
        meta["dropped_tokens"] = dropped
    else:
        meta["truncated_lines"] = truncated
    return DiscreteDataset(train=parts["train"], val=parts["val"], test=parts["test"], num_states=len(symbols),
                           name=name, kind="sequence", metadata=meta)


def _split_examples(examples: list[str], val: list[str] | None, test: list[str] | None,
                    val_fraction: float, test_fraction: float) -> dict[str, list[str]]:
    """Contiguous blocks of examples by position (train | val | test), or the separate files' examples."""
    n_train, n_val, n_test = split_counts(len(examples), 0.0 if val is not None else val_fraction,
                                          0.0 if test is not None else test_fraction)
    return {"train": examples[:n_train],
            "val": examples[n_train:n_train + n_val] if val is None else val,
            "test": examples[n_train + n_val:] if test is None else test}


def load_text(
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
    format: str = "plain",
    packing: str = "pack",
) -> DiscreteDataset:
    """A text file in the layout ``format`` (registry name ``"text"``; the module docstring gives the rules).

    ``plain`` is :func:`~discrete_diffusion.data.text.load_text_file` with the same arguments; ``text8``, ``lines`` and
    ``documents`` are described above. ``split_seed`` is unused (every split is positional).

    Raises:
        ValueError: an unknown format or packing, an option that does not apply to the format, a text8 file with
            another character, a malformed JSON Lines file, too little text for ``seq_len``, files over the budget.
    """
    if format not in TEXT_FORMATS:
        raise ValueError(f"data.format must be one of {', '.join(TEXT_FORMATS)}, got {format!r}")
    if packing not in PACKINGS:
        raise ValueError(f"data.packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
    if packing != "pack" and format != "lines":
        raise ValueError(f"data.packing=pad applies to data.format=lines only, not {format}")
    common = dict(seq_len=seq_len, split_seed=split_seed, vocab=vocab, name=name, max_bytes=max_bytes)
    if format == "plain":
        return load_text_file(path, val_fraction=val_fraction, test_fraction=test_fraction, val_path=val_path,
                              test_path=test_path, tokenizer=tokenizer, vocab_size=vocab_size,
                              tokenizer_json=tokenizer_json, normalize=normalize, **common)
    if format == "text8":
        return _load_text8(path, tokenizer, vocab_size, tokenizer_json, val_path, test_path, **common)
    if tokenizer != "char" or vocab_size is not None:
        raise ValueError(f"data.format={format} reads characters (data.tokenizer=char): a sub-word EOS token is not "
                         f"built; use data.format=plain for BPE")
    max_bytes = check_max_bytes(max_bytes)
    p = Path(path).expanduser()
    text, digest = _read_utf8(p, max_bytes)
    files = {"path": {"file": str(p.resolve()), "sha256": digest}}
    total = len(text)
    parse = read_lines if format == "lines" else (lambda t, q=p: read_documents(t, str(q)))
    extra: dict[str, list[str]] = {}
    for option, split, other in (("val_path", "val", val_path), ("test_path", "test", test_path)):
        if other is not None:
            q = Path(other).expanduser()
            other_text, other_digest = _read_utf8(q, max_bytes)
            files[option] = {"file": str(q.resolve()), "sha256": other_digest}
            total += len(other_text)
            check_decoded(total, max_bytes, f"{p}: the text files together")
            extra[split] = read_lines(other_text) if format == "lines" else read_documents(other_text, str(q))
    examples = parse(text)
    splits = _split_examples(examples, extra.get("val"), extra.get("test"), val_fraction, test_fraction)
    return examples_dataset(splits, seq_len=seq_len, packing=packing, normalize=normalize, vocab=vocab, name=name,
                            where=str(p), text_format=format, max_bytes=max_bytes,
                            metadata={"source": str(p.resolve()), "files": files,
                                      "split": {"method": f"contiguous blocks of {format} by position: train | val | "
                                                          f"test", "separate_files": sorted(extra),
                                                "val_fraction": float(val_fraction),
                                                "test_fraction": float(test_fraction)}})


def _load_text8(path, tokenizer, vocab_size, tokenizer_json, val_path, test_path, *, seq_len, split_seed, vocab,
                name, max_bytes) -> DiscreteDataset:
    """Mahoney's text8: 27 symbols, split 90 % / 5 % / 5 % by position (90 M / 5 M / 5 M of the 10^8 characters)."""
    if val_path is not None or test_path is not None:
        raise ValueError("data.format=text8 splits the one file 90/5/5 as in the papers; data.val_path / "
                         "data.test_path do not apply")
    max_bytes = check_max_bytes(max_bytes)
    p = Path(path).expanduser()
    text, digest = _read_utf8(p, max_bytes)
    bad = text.translate(str.maketrans("", "", TEXT8_VOCAB))
    if bad:
        i = text.index(bad[0])
        raise ValueError(f"{p}: not a text8 file: character {bad[0]!r} at position {i} (text8 holds only a-z and "
                         f"space); reduce another text with data.normalize=text8 instead")
    ds = dataset_from_text(text, seq_len=seq_len, val_fraction=0.05, test_fraction=0.05, split_seed=split_seed,
                           vocab=TEXT8_VOCAB if vocab is None and tokenizer == "char" else vocab, name=name,
                           where=str(p), tokenizer=tokenizer, vocab_size=vocab_size, tokenizer_json=tokenizer_json,
                           metadata={"source": str(p.resolve()), "files": {"path": {"file": str(p.resolve()),
                                                                                    "sha256": digest}},
                                     "text_format": "text8"})
    return ds
