"""Byte-level BPE on the KJV Bible (issue 15 item 3): tokenizer training and encoding time, tokens per
character on each split, determinism and the exact round trip of the whole text.

Needs the Debian package ``bible-kjv`` (or a cached ``kjv.txt``) and ``pip install discrete-diffusion[text]``.

    DDIFF_DATA_DIR=/tmp/kjv OMP_NUM_THREADS=1 python benchmarks/bpe_kjv.py [--vocab-size 4096] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import resource
import time

from discrete_diffusion.data import load_kjv
from discrete_diffusion.data.kjv import kjv_text
from discrete_diffusion.data.tokenizer import BpeTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    text = kjv_text()  # runs `bible` once, then cached
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.time()
    ds = load_kjv(seq_len=args.seq_len, tokenizer="bpe", vocab_size=args.vocab_size)
    trained = time.time() - start
    start = time.time()
    again = load_kjv(seq_len=args.seq_len, tokenizer="bpe", vocab_size=args.vocab_size)
    retrained = time.time() - start
    start = time.time()
    load_kjv(seq_len=args.seq_len, tokenizer="bpe", vocab_size=args.vocab_size,
             tokenizer_json=ds.metadata["tokenizer_json"])
    cached = time.time() - start
    bpe = BpeTokenizer(ds.metadata["tokenizer_json"])
    print(f"KJV: {len(text):,} characters; vocab_size {args.vocab_size} ({ds.metadata['tokenizer']['trained_tokens']} "
          f"trained), seq_len {args.seq_len}")
    print(f"load with training: {trained:.1f} s, again {retrained:.1f} s (same tokenizer: "
          f"{again.metadata['tokenizer_json'] == ds.metadata['tokenizer_json']}); with the cached tokenizer: "
          f"{cached:.1f} s")
    print("| split | windows | tokens | characters | characters per token |")
    print("|---|---|---|---|---|")
    for split in ("train", "val", "test"):
        tokens, chars = ds.split(split).numel(), ds.metadata["window_chars"][split]
        print(f"| {split} | {ds.split(split).shape[0]} | {tokens:,} | {chars:,} | {chars / tokens:.3f} |")
    print(f"round trip of the whole text exact: {bpe.decode(bpe.encode(text)) == text}")
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"peak RSS growth: {grown:.0f} MiB")


if __name__ == "__main__":
    main()
