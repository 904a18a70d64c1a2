"""Byte-level BPE tokenisation of text datasets (config ``data.tokenizer=bpe data.vocab_size=N``).

Reference: byte-pair encoding for subwords, Sennrich et al., "Neural Machine Translation of Rare Words with
Subword Units", ACL 2016; the byte-level variant of GPT-2 (Radford et al., 2019), as implemented by Hugging
Face ``tokenizers`` (an optional dependency: ``pip install discrete-diffusion[text]``).

The tokenizer is trained on the *training* block of the text only (never on validation or test text): its
alphabet is the 256 bytes (so any text can be encoded and nothing maps to an unknown token), the text is
pre-split with the GPT-2 byte-level pattern and nothing is normalised, so ``decode(encode(text)) == text``.
Training is deterministic: the same training text and ``vocab_size`` give the same tokenizer JSON.
``vocab_size`` counts the 256 byte tokens plus the merges, so it must be at least 257; the model has
``num_states = vocab_size`` (a text too small for that many merges leaves some states unused).

Texts are encoded in pieces that end at a newline (at most :data:`_PIECE_CHARS` characters each, a piece
without a newline is cut there), and the token ids of the pieces are concatenated; training sees the same
pieces. Decoding a run of token ids returns the UTF-8 text of their bytes, a byte sequence cut inside a
character decoding to ``"\\ufffd"``; an id outside the trained vocabulary decodes to ``"\\ufffd"`` as well.

Bits per character: with ``T`` tokens in the evaluated windows and ``C`` characters those tokens decode to,
``bits/char = bits/token * T / C`` (:func:`~discrete_diffusion.likelihood.bits_per_char`).

Run directory: the trained tokenizer is cached as ``RUN_DIR/tokenizer.json`` (atomic write) and its SHA-256 is
recorded in ``RUN_DIR/data.json`` (``files["tokenizer"]``); ``ddiff sample`` / ``ddiff evaluate`` and a
resumed run load that file, refuse it when its checksum differs from the record, and check its content (a
JSON document of at most :data:`MAX_TOKENIZER_BYTES` bytes describing a byte-level BPE model and nothing
else) before ``tokenizers`` parses it. Loading never executes code.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import torch
from torch import Tensor

from .limits import MAX_NUM_STATES

__all__ = ["TOKENIZER_NAME", "MIN_VOCAB_SIZE", "MAX_VOCAB_SIZE", "MAX_TOKENIZER_BYTES", "TOKENIZER_KINDS",
           "TokenizerUnavailableError", "BpeTokenizer", "check_vocab_size", "train_bpe"]

#: File name of the cached tokenizer inside a run directory.
TOKENIZER_NAME = "tokenizer.json"
#: Smallest byte-level vocabulary: the 256 bytes and at least one merge.
MIN_VOCAB_SIZE = 257
#: Largest vocabulary accepted (the library's bound on the states of one site).
MAX_VOCAB_SIZE = MAX_NUM_STATES
#: Largest tokenizer JSON read back from a run directory.
MAX_TOKENIZER_BYTES = 64 << 20
#: Values of ``data.tokenizer``.
TOKENIZER_KINDS = ("char", "bpe")
_PIECE_CHARS = 1 << 16
_INSTALL = "pip install discrete-diffusion[text]"


class TokenizerUnavailableError(ValueError):
    """``data.tokenizer=bpe`` needs the optional package ``tokenizers``, which is not installed."""


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise TokenizerUnavailableError(f"data.tokenizer=bpe needs the package 'tokenizers': {_INSTALL}") from None
    return tokenizers


def check_vocab_size(vocab_size: object) -> int:
    """``vocab_size`` as an int in ``MIN_VOCAB_SIZE..MAX_VOCAB_SIZE`` (ValueError otherwise)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"data.vocab_size must be an integer in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} for a byte-level "
                         f"BPE tokenizer (256 byte tokens plus merges), got {vocab_size!r}")
    return vocab_size


def _pieces(text: str) -> list[str]:
    """``text`` cut after the last newline of every ``_PIECE_CHARS`` characters (or at that length)."""
    out, start = [], 0
    while start < len(text):
        stop = min(start + _PIECE_CHARS, len(text))
        if stop < len(text):
            cut = text.rfind("\n", start, stop)
            stop = cut + 1 if cut >= start else stop
        out.append(text[start:stop])
        start = stop
    return out


def train_bpe(text: str, vocab_size: int) -> str:
    """Train a byte-level BPE tokenizer of at most ``vocab_size`` tokens on ``text``; return its JSON.

    Deterministic (no dropout, no sampling; tests/test_tokenizer.py trains twice and compares the JSON). Pairs
    seen once are not merged (``min_frequency=2``), so a small text may give fewer than ``vocab_size`` tokens.
    Raises ValueError for a bad ``vocab_size`` or an empty text.
    """
    check_vocab_size(vocab_size)
    if not text:
        raise ValueError("cannot train a BPE tokenizer on an empty text")
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(_pieces(text), trainer=trainer, length=None)
    return tokenizer.to_str()


def _check_json(text: str, where: str) -> dict[str, Any]:
    """The parsed tokenizer JSON after checking it describes a byte-level BPE model only (ValueError)."""
    if len(text) > MAX_TOKENIZER_BYTES:
        raise ValueError(f"{where}: the tokenizer JSON is over {MAX_TOKENIZER_BYTES} bytes")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: the tokenizer is not valid JSON ({exc})") from None
    model = spec.get("model") if isinstance(spec, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    ok = (isinstance(model, dict) and model.get("type") == "BPE" and model.get("dropout") is None
          and isinstance(vocab, dict) and 256 <= len(vocab) <= MAX_VOCAB_SIZE
          and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(vocab) for i in vocab.values())
          and isinstance(model.get("merges"), list) and len(model["merges"]) < len(vocab)
          and spec.get("added_tokens") == [] and spec.get("normalizer") is None
          and spec.get("post_processor") is None
          and isinstance(spec.get("pre_tokenizer"), dict) and spec["pre_tokenizer"].get("type") == "ByteLevel"
          and isinstance(spec.get("decoder"), dict) and spec["decoder"].get("type") == "ByteLevel")
    if not ok:
        raise ValueError(f"{where}: not a byte-level BPE tokenizer as ddiff trains one (expected a BPE model of 256 "
                         f"to {MAX_VOCAB_SIZE} tokens, ByteLevel pre-tokenizer and decoder, no normaliser, "
                         f"post-processor or added tokens)")
    return spec


class BpeTokenizer:
    """A trained byte-level BPE tokenizer: text <-> token ids.

    Args:
        json_text: the tokenizer JSON (from :func:`train_bpe` or a run's ``tokenizer.json``); checked before
            it is parsed.
        where: names the source in error messages.
    """

    def __init__(self, json_text: str, where: str = "tokenizer") -> None:
        spec = _check_json(json_text, where)
        tk = _tokenizers()
        self.json = json_text
        self.sha256 = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        self.size = len(spec["model"]["vocab"])
        self._tokenizer = tk.Tokenizer.from_str(json_text)

    def encode(self, text: str) -> Tensor:
        """Token ids of ``text``: ``(T,)`` long (the pieces of the module docstring, concatenated)."""
        ids: list[int] = []
        encode = getattr(self._tokenizer, "encode_batch_fast", self._tokenizer.encode_batch)  # no offsets: faster
        for enc in encode(_pieces(text), add_special_tokens=False):
            ids.extend(enc.ids)
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of a run of token ids; ids outside ``0..size-1`` become ``"\\ufffd"``."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        out, run = [], []
        for i in ids:
            if 0 <= i < self.size:
                run.append(i)
                continue
            out.append(self._tokenizer.decode(run) if run else "")
            out.append("\ufffd")
            run = []
        out.append(self._tokenizer.decode(run) if run else "")
        return "".join(out)

    def decode_rows(self, tokens: Tensor) -> list[str]:
        """``(N, L)`` (or ``(L,)``) token ids -> ``N`` strings."""
        t = torch.as_tensor(tokens)
        if t.dim() == 1:
            t = t[None]
        if t.dim() != 2:
            raise ValueError(f"tokens must have shape (N, L), got {tuple(t.shape)}")
        return [self.decode(row) for row in t]


