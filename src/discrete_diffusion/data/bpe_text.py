"""Text as byte-level BPE tokens (``data.tokenizer=bpe data.vocab_size=N``): the tokenizer is trained on the
training block only (:mod:`~discrete_diffusion.data.tokenizer`), each block is tokenised and cut into windows of
``seq_len`` tokens. Splits and file options are those of :mod:`~discrete_diffusion.data.text`."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import DiscreteDataset
from .tokenizer import TOKENIZER_NAME, BpeTokenizer, check_vocab_size, train_bpe

__all__ = ["bpe_dataset", "token_windows"]


def token_windows(tokens: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping windows ``(n, seq_len)`` of a 1-D token tensor, in order; the remainder is dropped."""
    n = tokens.numel() // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len).clone()


def bpe_dataset(blocks: dict[str, str], *, seq_len: int, vocab_size: int | None, tokenizer_json: str | None,
                 name: str, metadata: dict[str, Any] | None, where: str, split: dict[str, Any]) -> DiscreteDataset:
    """Byte-level BPE windows of text blocks (the ``tokenizer="bpe"`` branch of
    :func:`~discrete_diffusion.data.text.dataset_from_text`): train the tokenizer on ``blocks["train"]`` (or load
    ``tokenizer_json``, a run's cached tokenizer, without training), tokenise every block and cut it into
    non-overlapping windows of ``seq_len`` tokens. ``num_states = vocab_size``; the metadata records the tokenizer,
    its SHA-256 and the characters each split's windows decode to (for bits per character)."""
    if vocab_size is None:
        raise ValueError("data.tokenizer=bpe needs data.vocab_size (an integer in 257..65536), e.g. 4096")
    check_vocab_size(vocab_size)
    json_text = train_bpe(blocks["train"], vocab_size) if tokenizer_json is None else tokenizer_json
    bpe = BpeTokenizer(json_text, where=f"{where}: tokenizer")
    if bpe.size > vocab_size:
        raise ValueError(f"{where}: the tokenizer has {bpe.size} tokens, more than data.vocab_size={vocab_size}")
    ids = {s: bpe.encode(b) for s, b in blocks.items()}
    if ids["train"].numel() < seq_len:
        raise ValueError(f"{where}: the training block has {ids['train'].numel()} tokens, fewer than "
                         f"seq_len={seq_len}; use a smaller seq_len or a longer text")
    parts = {s: token_windows(t, seq_len) for s, t in ids.items()}
    meta = dict(metadata or {})
    files = dict(meta.get("files") or {})
    files["tokenizer"] = {"file": TOKENIZER_NAME, "sha256": bpe.sha256}
    meta.update(
        tokenizer={"kind": "bpe", "vocab_size": vocab_size, "trained_tokens": bpe.size, "sha256": bpe.sha256},
        tokenizer_json=json_text,
        files=files,
        seq_len=seq_len,
        num_chars=sum(len(b) for b in blocks.values()),
        num_tokens={s: int(t.numel()) for s, t in ids.items()},
        window_chars={s: len(bpe.decode(p.reshape(-1))) for s, p in parts.items()},
        dropped_tokens={s: int(ids[s].numel() - p.numel()) for s, p in parts.items()},
        split=split,
    )
    return DiscreteDataset(
        train=parts["train"], val=parts["val"], test=parts["test"], num_states=vocab_size,
        name=name, kind="sequence", metadata=meta,
    )
