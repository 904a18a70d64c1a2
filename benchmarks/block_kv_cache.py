"""Block diffusion: semi-autoregressive sampling with the exact KV cache vs recomputing the context, at L = 1024.

A ``BlockNetworkDenoiser`` over a ``SequenceTransformer`` (masking, K states, seq_len L) with random weights (std
``--init-std``: timing does not depend on training, and random weights make the samples non-trivial, so the
identity check means something) decodes ``--batch`` rows of L tokens block by block with the bridge sampler
(``--steps`` per block), once with the KV cache (each finished block enters the cache by one forward; a step
reads only its block's B_s tokens) and once recomputing [context ; block] at every network call. Both runs use the
same seed; the table gives wall time (median of ``--repeats`` interleaved runs), the speed-up, network calls and
whether the tokens are identical. Every configuration is sampled twice, so the ratio is side by side.

    python benchmarks/block_kv_cache.py                     # default: L=1024, block sizes 4 and 16
    python benchmarks/block_kv_cache.py --quick             # smoke run (L=128)

Writes ``block_kv_cache.md`` / ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from discrete_diffusion.blocks.denoiser import BlockNetworkDenoiser
from discrete_diffusion.nn import SequenceTransformer
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.samplers.semi_autoregressive import SemiAutoregressiveDecoder
from discrete_diffusion.schedules import build_schedule


def build_model(args: argparse.Namespace, block_size: int) -> BlockNetworkDenoiser:
    torch.manual_seed(args.seed)
    net = SequenceTransformer(args.states + 1, args.states, args.length, dim=args.dim, depth=args.depth,
                              heads=args.heads, dropout=0.0, time_conditioning=not args.time_free)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=args.init_std)
    return BlockNetworkDenoiser(net.eval(), build_process("masking", args.states), "logits", block_size)


def decode(model, args, use_cache: bool) -> tuple[torch.Tensor, float, int]:
    decoder = SemiAutoregressiveDecoder(build_sampler("bridge", num_steps=args.steps), use_cache=use_cache)
    start = time.perf_counter()
    out = decoder.sample(model.process, model, build_schedule("log-linear"), args.batch,
                         generator=torch.Generator().manual_seed(args.seed))
    return out.tokens, time.perf_counter() - start, out.network_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=4, help="bridge steps per block")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--states", type=int, default=27)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--init-std", type=float, default=0.05)
    parser.add_argument("--time-free", action="store_true", help="model.time_conditioning=false")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    if args.quick:
        args.length, args.block_sizes, args.depth, args.dim = 128, [4], 2, 64
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.block_sizes:
        model = build_model(args, size)
        cached_t, plain_t, identical = [], [], True
        with torch.no_grad():
            for _ in range(args.repeats):
                x_cached, tc, calls_cached = decode(model, args, True)
                x_plain, tp, calls_plain = decode(model, args, False)
                cached_t.append(tc), plain_t.append(tp)
                identical &= bool(torch.equal(x_cached, x_plain))
        row = {"length": args.length, "block_size": size, "steps_per_block": args.steps, "batch": args.batch,
               "seconds_cached": statistics.median(cached_t), "seconds_uncached": statistics.median(plain_t),
               "speedup": statistics.median(plain_t) / statistics.median(cached_t),
               "calls_cached": calls_cached, "calls_uncached": calls_plain, "identical": identical,
               "distinct_tokens": int(torch.unique(x_cached).numel())}
        rows.append(row)
        print(f"L={args.length} B_s={size}: cached {row['seconds_cached']:.2f} s, uncached "
              f"{row['seconds_uncached']:.2f} s, x{row['speedup']:.1f}, identical {identical}", flush=True)
    lines = ["| L | block size | bridge steps / block | batch | cached s | uncached s | speed-up | network calls "
             "(cached / uncached) | identical tokens |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['block_size']} | {r['steps_per_block']} | {r['batch']} | "
                     f"{r['seconds_cached']:.2f} | {r['seconds_uncached']:.2f} | {r['speedup']:.1f}x | "
                     f"{r['calls_cached']} / {r['calls_uncached']} | {'yes' if r['identical'] else 'NO'} |")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    header = (f"Transformer dim {args.dim}, depth {args.depth}, heads {args.heads}, K = {args.states}, "
              f"time conditioning {'off' if args.time_free else 'on'}, random weights (std {args.init_std}), "
              f"{args.threads} thread(s), {platform.processor() or platform.machine()}, torch {torch.__version__}; "
              f"`{command}`")
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "block_kv_cache" + ("_quick" if args.quick else "")
    (out / f"{stem}.md").write_text(table)
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "command": command, "args": vars(args),
                                                  "date": datetime.now(timezone.utc).isoformat()}, indent=2))


if __name__ == "__main__":
    main()
