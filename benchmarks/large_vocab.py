"""Large vocabularies (issue 15): one-hot vs token-index network input, and sampling before/after the float64 change.

For a masking process and the same ``SequenceTransformer`` (same weights, seeded), at a small and a large
vocabulary K, side by side in one run:

- **train step**: forward + backward + AdamW step of ``losses.training_loss`` on a random batch (B, L), median
  wall time over the timed steps (the smaller of ``--repeats`` interleaved subprocesses), and the peak resident
  memory the step adds (``resource.getrusage`` max RSS
  after the steps minus before the first one, in a fresh subprocess per measurement so the peaks do not mix).
  "one-hot" is the input every backbone read before (``network_features``: a (B, K + 1, L) float tensor into
  ``input_proj``); "tokens" is the new path (x_t indexes the columns of the same ``input_proj`` weight).
- **sampling**: the bridge sampler with temperature 0.9 and top-p 0.95 (so that every prediction is
  transformed) on the token model, with the current ``transform_x0_log_probs`` / ``sample_categorical``
  (float64 in bounded blocks of rows) against the previous versions (float64 over the whole (B, L, K) tensor
  at once; copied below as ``legacy_*`` for this comparison only). Wall time and the peak memory it adds.

    python benchmarks/large_vocab.py                 # K = 64 and K = 8192, L = 128, B = 16, dim 128, depth 2
    python benchmarks/large_vocab.py --quick         # smoke run

Prints a Markdown table and writes it, with a JSON of the raw numbers and the command, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.losses import LogitAlphaProposal, training_loss
from discrete_diffusion.nn import SequenceTransformer
from discrete_diffusion.processes import base as process_base
from discrete_diffusion.processes import build_process
from discrete_diffusion.runs.atomic_io import atomic_write_text as write_text
from discrete_diffusion.samplers import base as sampler_base
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule


def legacy_sample_categorical(log_probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The draw before this change: the float64 CDF of every row at once."""
    cdf = log_probs.double().exp().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=torch.float64, device=cdf.device)
    return torch.searchsorted(cdf, u * cdf[..., -1:], right=True)[..., 0].clamp_max(cdf.shape[-1] - 1)


def legacy_transform_x0_log_probs(log_probs: Tensor, temperature: float = 1.0, top_p: float = 1.0,
                                  top_k: int = 0) -> Tensor:
    """The transform before this change: float64 over the whole (..., K) tensor, float64 out."""
    out = log_probs.double()
    if temperature != 1.0:
        out = torch.log_softmax(out / temperature, dim=-1)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(out, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_lp.exp(), dim=-1) - sorted_lp.exp()
        keep_sorted = mass_before < top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        out = torch.log_softmax(torch.where(keep, out, torch.full_like(out, -torch.inf)), dim=-1)
    return out


def build(k: int, length: int, dim: int, depth: int, one_hot: bool) -> tuple:
    torch.manual_seed(0)
    process = build_process("masking", k)
    net = SequenceTransformer(k + 1, k, seq_len=length, dim=dim, depth=depth, heads=4, dropout=0.0)
    if one_hot:
        net.accepts_tokens = False           # the instance reads one-hot features, as every backbone did before
    return process, NetworkDenoiser(net, process, "logits")


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # Linux: KiB


def measure(kind: str, k: int, length: int, batch: int, dim: int, depth: int, steps: int) -> dict:
    """One measurement in this (fresh) process: kind in train-onehot, train-tokens, sample-legacy, sample-new."""
    torch.set_num_threads(1)
    process, denoiser = build(k, length, dim, depth, one_hot=kind == "train-onehot")
    schedule = build_schedule("log-linear")
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, k, (batch, length), generator=gen)
    times = []
    if kind.startswith("train"):
        optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
        base = max_rss_mib()
        for _ in range(steps + 1):                       # the first step (allocations, AdamW state) is not timed
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            training_loss(process, denoiser, x0, schedule, LogitAlphaProposal(), generator=gen).loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        times = times[1:]
    else:
        if kind == "sample-legacy":
            sampler_base.transform_x0_log_probs = legacy_transform_x0_log_probs
            process_base.sample_categorical = legacy_sample_categorical
        sampler = build_sampler("bridge", num_steps=steps, temperature=0.9, top_p=0.95)
        denoiser.requires_grad_(False)
        base = max_rss_mib()
        start = time.perf_counter()
        sampler.sample(process, denoiser, schedule, (batch, length), gen)
        times = [time.perf_counter() - start]
    return {"kind": kind, "k": k, "seconds": statistics.median(times), "peak_mib": max_rss_mib() - base}


def run_child(args: argparse.Namespace, kind: str, k: int) -> dict:
    steps = args.train_steps if kind.startswith("train") else args.sample_steps
    cmd = [sys.executable, __file__, "--child", kind, "--k", str(k), "--length", str(args.length), "--batch",
           str(args.batch), "--dim", str(args.dim), "--depth", str(args.depth), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[64, 8192])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="train measurements per path (interleaved; min)")
    parser.add_argument("--sample-steps", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="K = 64 and 1024, L = 32, fewer steps")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.k, args.length, args.batch, args.dim, args.depth, args.steps)))
        return
    if args.quick:
        args.vocab, args.length, args.train_steps, args.sample_steps, args.repeats = [64, 1024], 32, 2, 4, 1
    rows, raw = [], []
    header = ("| K | L x B | train step one-hot (s) | tokens (s) | ratio | train peak MiB one-hot | tokens | "
              "sample before (s) | after (s) | sample peak MiB before | after |")
    for k in args.vocab:
        r = {}
        for repeat in range(args.repeats):      # interleaved; the faster of the repeats counts (a shared machine)
            for kind in ("train-onehot", "train-tokens") + (("sample-legacy", "sample-new") if repeat == 0 else ()):
                got = run_child(args, kind, k)
                if kind not in r or got["seconds"] < r[kind]["seconds"]:
                    r[kind] = {**got, "peak_mib": max(got["peak_mib"], r.get(kind, got)["peak_mib"])}
        raw.append(r)
        t1, t2 = r["train-onehot"]["seconds"], r["train-tokens"]["seconds"]
        rows.append(f"| {k} | {args.length} x {args.batch} | {t1:.3f} | {t2:.3f} | {t2 / t1:.2f} | "
                    f"{r['train-onehot']['peak_mib']:.0f} | {r['train-tokens']['peak_mib']:.0f} | "
                    f"{r['sample-legacy']['seconds']:.2f} | {r['sample-new']['seconds']:.2f} | "
                    f"{r['sample-legacy']['peak_mib']:.0f} | {r['sample-new']['peak_mib']:.0f} |")
        print(rows[-1], flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    table = "\n".join([header, "|" + "---|" * 11, *rows])
    note = (f"masking, SequenceTransformer dim {args.dim} depth {args.depth}, {args.train_steps} timed train steps "
            f"(median; best of {args.repeats} interleaved runs), bridge sampler {args.sample_steps} steps with "
            f"temperature 0.9 and top-p 0.95; 1 CPU thread "
            f"({platform.processor() or platform.machine()}), torch {torch.__version__}")
    print("\n" + table + "\n\n" + note)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_text(out / "large_vocab.md", f"{table}\n\n{note}\n\n`{command}` ({stamp})\n")
    write_text(out / "large_vocab.json", json.dumps({"command": command, "date": stamp, "note": note,
                                                     "results": raw}, indent=1))


if __name__ == "__main__":
    main()
