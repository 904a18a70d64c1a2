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
from typing import Any, Sequence

import torch
from torch import Tensor

from .bounded_json import loads_bounded
from .limits import MAX_NUM_STATES

__all__ = ["TOKENIZER_NAME", "MIN_VOCAB_SIZE", "MAX_VOCAB_SIZE", "MAX_TOKENIZER_BYTES", "TOKENIZER_KINDS",
           "TokenizerUnavailableError", "BpeTokenizer", "check_vocab_size", "train_bpe", "byte_level_alphabet",
           "check_tokenizer_json"]

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


#: Deepest nesting of a tokenizer JSON (ddiff's nest 4 levels: root, model, merges, one merge).
MAX_TOKENIZER_DEPTH = 8
#: Longest token string in the vocabulary (characters).
MAX_TOKEN_CHARS = 4096
_TOP_KEYS = {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "post_processor",
             "decoder", "model"}
_MODEL_KEYS = {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk",
               "byte_fallback", "ignore_merges", "vocab", "merges"}
_BYTE_LEVEL_KEYS = {"type", "add_prefix_space", "trim_offsets", "use_regex"}


def byte_level_alphabet() -> set[str]:
    """The 256 characters GPT-2's byte-level BPE maps the bytes to (printable bytes stand for themselves, the
    others are shifted to U+0100 onwards), as ``tokenizers.pre_tokenizers.ByteLevel.alphabet()`` lists them."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = [b for b in range(256) if b not in kept]
    return {chr(b) for b in kept} | {chr(256 + i) for i in range(len(shifted))}


def _structure_fault(spec: object) -> str | None:
    """What makes ``spec`` other than a byte-level BPE tokenizer as ddiff trains one (None when it is one): every
    field ``tokenizers`` reads is checked here, so that the library never sees an unknown token, a merge of the
    wrong arity or a model option ddiff does not use (some of which panic inside it)."""
    if not isinstance(spec, dict) or not set(spec) <= _TOP_KEYS or not isinstance(spec.get("model"), dict):
        return "expected a JSON object with a 'model' and only the keys tokenizers writes"
    if not isinstance(spec.get("version", ""), str):
        return "'version' is not a string"
    for key in ("truncation", "padding", "normalizer", "post_processor"):
        if spec.get(key) is not None:
            return f"{key!r} must be null"
    if spec.get("added_tokens", []) != []:
        return "'added_tokens' must be empty"
    for key in ("pre_tokenizer", "decoder"):
        part = spec.get(key)
        if not isinstance(part, dict) or part.get("type") != "ByteLevel" or not set(part) <= _BYTE_LEVEL_KEYS \
                or not all(isinstance(part[k], bool) for k in part if k != "type"):
            return f"{key!r} must be a ByteLevel object with boolean options"
    model = spec["model"]
    if model.get("type") != "BPE" or not set(model) <= _MODEL_KEYS:
        return "'model' must be a BPE model with only the keys tokenizers writes"
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) is not None:
            return f"model.{key} must be null"
    for key in ("fuse_unk", "byte_fallback"):
        if model.get(key, False) is not False:
            return f"model.{key} must be false"
    if not isinstance(model.get("ignore_merges", False), bool):
        return "model.ignore_merges must be a boolean"
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not 256 <= len(vocab) <= MAX_VOCAB_SIZE:
        return f"model.vocab must map 256 to {MAX_VOCAB_SIZE} tokens to ids"
    n = len(vocab)
    if not all(type(i) is int and 0 <= i < n for i in vocab.values()) or len(set(vocab.values())) != n:
        return f"model.vocab's ids must be 0..{n - 1}, each once"
    if not all(0 < len(token) <= MAX_TOKEN_CHARS for token in vocab):
        return f"model.vocab holds an empty token or one over {MAX_TOKEN_CHARS} characters"
    missing = byte_level_alphabet() - set(vocab)
    if missing:
        return f"model.vocab lacks {len(missing)} of the 256 byte-level tokens"
    if not isinstance(merges, list) or len(merges) >= n:
        return "model.merges must be a list shorter than the vocabulary"
    for k, merge in enumerate(merges):
        if isinstance(merge, str):
            merge = merge.split(" ")
        if not isinstance(merge, list) or len(merge) != 2 or not all(isinstance(p, str) and p for p in merge):
            return f"model.merges[{k}] is not a pair of tokens"
        if merge[0] not in vocab or merge[1] not in vocab or merge[0] + merge[1] not in vocab:
            return f"model.merges[{k}] names a token that is not in the vocabulary"
    return None


def check_tokenizer_json(text: str, where: str) -> dict[str, Any]:
    """The parsed tokenizer JSON after checking it describes a byte-level BPE model only (ValueError, one line
    naming ``where``): bounded in size, nesting depth and number length (data/bounded_json.py), then every field
    ``tokenizers`` reads (:func:`_structure_fault`)."""
    spec = loads_bounded(text, f"{where}: the tokenizer", max_bytes=MAX_TOKENIZER_BYTES,
                         max_depth=MAX_TOKENIZER_DEPTH)
    fault = _structure_fault(spec)
    if fault is not None:
        raise ValueError(f"{where}: not a byte-level BPE tokenizer as ddiff trains one ({fault})")
    return spec


class BpeTokenizer:
    """A trained byte-level BPE tokenizer: text <-> token ids.

    Args:
        json_text: the tokenizer JSON (from :func:`train_bpe` or a run's ``tokenizer.json``); checked before
            it is parsed.
        where: names the source in error messages.
    """

    def __init__(self, json_text: str, where: str = "tokenizer") -> None:
        spec = check_tokenizer_json(json_text, where)
        tk = _tokenizers()
        self.json = json_text
        self.sha256 = hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        self.size = len(spec["model"]["vocab"])
        try:  # the checks above leave nothing known to fail; anything the library still raises is one line
            self._tokenizer = tk.Tokenizer.from_str(json_text)
        except BaseException as exc:  # pyo3's PanicException derives from BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise ValueError(f"{where}: the tokenizers library cannot load it ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None

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


