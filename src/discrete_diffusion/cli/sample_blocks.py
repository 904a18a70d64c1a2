"""``ddiff sample`` for block-diffusion runs (model.block_size): semi-autoregressive decoding with prompts as clean
context, the exact KV cache, EOS and a maximum length.

Reference: Arriola et al., "Block Diffusion" (BD3-LM), ICLR 2025 (semi-autoregressive sampling); the decoding itself
is ``samplers/semi_autoregressive.py``. This module reads a run's vocabulary or BPE tokenizer for the prompt and the
EOS token, turns the decoded rows back into text and writes them with a record.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..samplers import Sampler
from ..samplers.semi_autoregressive import BlockSamples, SemiAutoregressiveDecoder
from .common import check_count, check_sample_sizes, sample_stem, sampler_options

#: Longest output accepted (tokens per row, prompt included): a bound on memory, not on patience.
MAX_TOTAL_LENGTH = 1 << 20


@dataclass
class BlockSampleOptions:
    """prompt: text (a character run: every character in the vocabulary; a BPE run: tokenised by the run's
    tokenizer), None = no prompt; use_cache: the exact KV cache; max_length: tokens per row, prompt included (None =
    the run's seq_len); eos: the end-of-sequence symbol (a character of the vocabulary, or a token id), None = the
    dataset's recorded ``eos`` if any, else no stopping; batch_invariant: decode rows one at a time."""

    prompt: str | None = None
    use_cache: bool = True
    max_length: int | None = None
    eos: str | None = None
    batch_invariant: bool = False


def encode_prompt(run, text: str) -> torch.Tensor:
    """The prompt's token ids (P,) long under the run's tokenizer (ValueError for a symbol outside the vocabulary)."""
    metadata = run.dataset.metadata
    if metadata.get("tokenizer_json") is not None:
        from ..data.tokenizer import BpeTokenizer

        return BpeTokenizer(metadata["tokenizer_json"], "the run's tokenizer").encode(text)
    vocab = metadata.get("vocab")
    if vocab is None:
        raise ValueError("--prompt is for text runs (a vocabulary or a tokenizer); this run has neither")
    index = {symbol: i for i, symbol in enumerate(vocab)}
    missing = sorted({ch for ch in text if ch not in index})
    if missing:
        raise ValueError(f"--prompt characters not in the run's vocabulary: {''.join(missing)!r}")
    return torch.tensor([index[ch] for ch in text], dtype=torch.long)


def resolve_eos(run, eos: str | None) -> int | None:
    """The EOS token id: ``eos`` as a vocabulary symbol or an integer id, else the dataset's recorded ``eos``."""
    num_states = run.dataset.num_states
    if eos is None:
        recorded = run.dataset.metadata.get("eos")
        return None if recorded is None else int(recorded)
    vocab = run.dataset.metadata.get("vocab")
    if vocab is not None and eos in list(vocab):
        return list(vocab).index(eos)
    if eos.lstrip("-").isdigit() and 0 <= int(eos) < num_states:
        return int(eos)
    raise ValueError(f"--eos {eos!r} is neither a symbol of the run's vocabulary nor a token id in 0..{num_states - 1}")


def generate_block_samples(run, sampler: Sampler, num_samples: int, batch_size: int = 256, seed: int = 0,
                           progress: bool = True, options: BlockSampleOptions | None = None) -> BlockSamples:
    """``num_samples`` rows decoded block by block (deterministic for a seed), on CPU, padded to one width."""
    options = options or BlockSampleOptions()
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    total = options.max_length
    if total is not None and not 1 <= total <= MAX_TOTAL_LENGTH:
        raise ValueError(f"--max-length must be in 1..{MAX_TOTAL_LENGTH}, got {total}")
    prompt = None if options.prompt is None else encode_prompt(run, options.prompt)
    decoder = SemiAutoregressiveDecoder(sampler, use_cache=options.use_cache, max_length=total,
                                        eos=resolve_eos(run, options.eos), batch_invariant=options.batch_invariant)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    parts: list[BlockSamples] = []
    length = total or run.denoiser.length
    with tqdm(total=length * math.ceil(num_samples / batch_size), desc=f"sample blocks ({sampler.name})",
              disable=not progress, dynamic_ncols=True, unit="tok") as bar:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            done = [0]

            def tick(tokens: int, _total: int) -> None:
                bar.update(tokens - done[0])
                done[0] = tokens

            parts.append(decoder.sample(run.process, run.denoiser, run.schedule, n, prompt, generator, run.device,
                                        callback=tick, seed=seed + start))
    width = max(p.tokens.shape[1] for p in parts)
    pad = decoder.pad if decoder.pad is not None else 0
    tokens = torch.full((num_samples, width), pad, dtype=torch.long)
    row = 0
    for p in parts:
        tokens[row:row + p.tokens.shape[0], :p.tokens.shape[1]] = p.tokens.cpu()
        row += p.tokens.shape[0]
    lengths = torch.cat([p.lengths.cpu() for p in parts])
    stopped = torch.cat([p.stopped.cpu() for p in parts])
    return BlockSamples(tokens, lengths, stopped, parts[0].prompt_length, sum(p.network_calls for p in parts))


def decode_block_rows(run, samples: BlockSamples) -> list[str] | None:
    """Each row's text up to its length (its EOS included), or None for a run without a vocabulary or tokenizer."""
    metadata = run.dataset.metadata
    rows = [samples.tokens[i, :int(samples.lengths[i])] for i in range(samples.tokens.shape[0])]
    if metadata.get("tokenizer_json") is not None:
        from ..data.tokenizer import BpeTokenizer

        tokenizer = BpeTokenizer(metadata["tokenizer_json"], "the run's tokenizer")
        return [tokenizer.decode(r) for r in rows]
    if metadata.get("vocab") is not None:
        from ..data.text import decode_text

        return [decode_text(r[None], metadata["vocab"])[0] for r in rows]
    return None


def cmd_sample_blocks(args: argparse.Namespace, run, ctx) -> int:
    """``ddiff sample`` of a block-diffusion run: semi-autoregressive decoding."""
    from ..builders import build_sampler_from
    from ..pipeline import save_samples, write_json
    from ..runs.atomic_io import atomic_write_text, user_dir

    if ctx.enabled:
        raise ValueError("block-diffusion sampling runs in one process; run ddiff sample without torchrun")
    for flag, value in (("--class", args.classes), ("--guidance", args.guidance), ("--infill", args.infill),
                        ("--mask", args.mask), ("--classifier", args.classifier), ("--planner", args.planner),
                        ("--masked-denoiser", args.masked_denoiser)):
        if value is not None:
            raise ValueError(f"{flag} is not available for block-diffusion runs (model.block_size); --prompt, "
                             "--max-length, --eos and --no-cache are")
    sampler = build_sampler_from(run.config, args.sampler, args.steps, sampler_options(args))
    num = run.config.sample.num_samples if args.num is None else args.num
    batch_size = run.config.sample.batch_size if args.batch_size is None else args.batch_size
    check_count(num, "--num-samples" if args.num is not None else "sample.num_samples")
    check_count(batch_size, "--batch-size" if args.batch_size is not None else "sample.batch_size")
    if args.max_length is not None and not 1 <= args.max_length <= MAX_TOTAL_LENGTH:
        raise ValueError(f"--max-length must be in 1..{MAX_TOTAL_LENGTH}, got {args.max_length}")
    windows = -(-(args.max_length or run.denoiser.length) // run.denoiser.length)      # rows of seq_len per sample
    check_sample_sizes(run, num, batch_size, "--num-samples", "--batch-size", per_row=windows)
    options = BlockSampleOptions(prompt=args.prompt, use_cache=args.kv_cache, max_length=args.max_length, eos=args.eos,
                                 batch_invariant=args.batch_invariant)
    began = time.perf_counter()
    samples = generate_block_samples(run, sampler, num, batch_size, args.seed, not args.no_progress, options)
    seconds = time.perf_counter() - began
    out = user_dir(args.out) if args.out else user_dir(args.run_dir) / "samples"
    stem = sample_stem(sampler, args.seed) + f"_blocks{run.denoiser.block_size}" + ("" if args.kv_cache else "_nocache")
    paths = save_samples(samples.tokens, run, out, stem=stem)
    texts = decode_block_rows(run, samples)
    if texts is not None:            # each row up to its EOS (included); newlines escaped
        paths["txt"] = str(out / f"{stem}.txt")
        atomic_write_text(out / f"{stem}.txt", "".join(t.replace("\n", "\\n") + "\n" for t in texts))
    stopped = int(samples.stopped.sum())
    write_json(out / f"{stem}.json", {
        "sampler": sampler.config(), "num_samples": num, "seed": args.seed, "batch_size": batch_size,
        "block_size": run.denoiser.block_size, "kv_cache": args.kv_cache, "batch_invariant": args.batch_invariant,
        "prompt": args.prompt,
        "prompt_tokens": samples.prompt_length, "max_length": int(samples.tokens.shape[1]),
        "eos": args.eos, "lengths": samples.lengths.tolist(), "stopped_at_eos": samples.stopped.tolist(),
        "network_calls": samples.network_calls, "seconds": seconds,
        "run_dir": str(Path(args.run_dir).resolve()), "checkpoint": str(run.checkpoint), "files": dict(paths)})
    paths["json"] = str(out / f"{stem}.json")
    print(f"block diffusion: {num} samples of up to {samples.tokens.shape[1]} tokens (prompt {samples.prompt_length}), "
          f"block size {run.denoiser.block_size}, KV cache {'on' if args.kv_cache else 'off'}, "
          f"{samples.network_calls} network calls, {seconds:.2f} s")
    if options.eos is not None or stopped:
        print(f"{stopped} of {num} samples stopped at EOS; the rest of each such row is padding (lengths in the .json)")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
