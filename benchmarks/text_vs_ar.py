"""Diffusion language models beside an autoregressive (AR) transformer on equal terms, on KJV-27 (issue 20 item 5).

Data: the King James Bible normalised to 27 symbols (``data.name=kjv data.normalize=text8``: a-z and space, about
4.0 M characters), cut into non-overlapping windows of ``--seq-len`` (256) characters; the test split is the last 5 %
of the text (the end of the New Testament), validation the 5 % before it.

Models, all with the same trunk (``--dim`` width, ``--depth`` pre-norm blocks, ``--heads`` heads, rotary positions,
no dropout), the same optimiser and schedule (the library's Trainer: AdamW, warmup + cosine, clipping, EMA) and the
same number of training tokens (``--steps`` x ``--batch-size`` x ``--seq-len``; the same windows in the same order,
drawn from the data generator seeded with ``train.seed``):

- ``ar``: :class:`~discrete_diffusion.baselines.ARTransformer` (exact NLL);
- ``masked``: masked diffusion (MDLM recipe: ``model.time_conditioning=false``), block size L (plain masked);
- ``bd16``, ``bd4``: block diffusion (BD3-LM) at block sizes 16 and 4 (``model.block_size``);
- ``uniform``: uniform-noise diffusion (time-conditioned: its posterior depends on the noise level);
- recipe switches (``--recipes``, issue 20 item 6): ``masked-tc`` (time-conditioned), ``masked-anti``
  (``train.t_draws=antithetic``), ``bd4-clip`` (BD3-LM's clipped schedule, ``train.mask_rate_clip=[0.3,0.8]``).

Printed and written (``--out``, default benchmarks/results): bits/char on the test split (AR exact; diffusion the
ELBO bound, an upper bound, ``--test-t`` noise draws per window with its standard error), the ratio to AR, the
fraction of the masked-to-AR gap that each block size closes, (gap_masked - gap_B) / gap_masked, training tokens
per second (wall time of the training steps alone, on this machine), the validation curves, and for samples the
AR judge's NLL (bits/char under the trained AR model) beside the samples' unigram entropy (bits) over a range of
temperatures (a frontier; the test text's own values are the reference point), and semi-autoregressive sampling
time with and without the KV cache for ``--cache-length`` (1024) characters (the trained block models, context
sliding at L) with a check that the tokens are identical.

    OMP_NUM_THREADS=2 python benchmarks/text_vs_ar.py --steps 600 --batch-size 32 --dim 128 --depth 6 --heads 4
    python benchmarks/text_vs_ar.py --quick          # smoke run (a few steps, tiny model)
    python benchmarks/text_vs_ar.py --device cuda --precision bf16 --dim 384 --depth 6 --heads 6 ...  # GPU

Needs the Debian package ``bible-kjv`` the first time (or a cached kjv.txt; see data/kjv.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from discrete_diffusion.baselines import ARTransformer
from discrete_diffusion.baselines.exact_task import ExactLikelihoodTask
from discrete_diffusion.builders import build_proposal
from discrete_diffusion.config import load_config
from discrete_diffusion.data import load_kjv
from discrete_diffusion.likelihood import evaluate_nll
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.train.diffusion_task import DiffusionTask
from discrete_diffusion.train.trainer import Trainer

#: name -> config overrides of a diffusion model (on top of the shared data / model / train sections).
DIFFUSION = {
    "masked": ["process.name=masking", "model.time_conditioning=false"],
    "bd16": ["process.name=masking", "model.time_conditioning=false", "model.block_size=16"],
    "bd4": ["process.name=masking", "model.time_conditioning=false", "model.block_size=4"],
    "uniform": ["process.name=uniform"],
    "masked-tc": ["process.name=masking", "model.time_conditioning=true"],
    "masked-anti": ["process.name=masking", "model.time_conditioning=false", "train.t_draws=antithetic"],
    "bd4-clip": ["process.name=masking", "model.time_conditioning=false", "model.block_size=4",
                 "train.mask_rate_clip=[0.3,0.8]"],
}
MAIN = ["ar", "masked", "bd4", "bd16", "uniform"]
RECIPES = ["masked-tc", "bd4-clip", "masked-anti"]


class TimedTrainer(Trainer):
    """The library's Trainer, timing the training steps alone (validation and checkpoints excluded)."""

    step_seconds = 0.0
    step_cpu_seconds = 0.0

    def train_step(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        record = super().train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.step_seconds += time.perf_counter() - start
        self.step_cpu_seconds += time.process_time() - cpu
        return record


class SubsetValDiffusionTask(DiffusionTask):
    """The diffusion task validating on the first ``n_val`` validation windows (validation is only for the curves)."""

    def __init__(self, n_val: int) -> None:
        super().__init__()
        self.n_val = n_val

    def setup(self, setup) -> None:
        super().setup(setup)
        self.dataset = dataclasses.replace(self.dataset, val=self.dataset.val[: self.n_val])


def shared_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "data.name=kjv", f"data.seq_len={args.seq_len}", "data.normalize=text8",
        "model.backbone=transformer", f"model.dim={args.dim}", f"model.depth={args.depth}",
        f"model.heads={args.heads}", "model.dropout=0.0",
        f"train.steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
        f"train.warmup_steps={args.warmup}", f"train.ema_decay={args.ema}", f"train.eval_every={args.eval_every}",
        f"train.eval_t_samples={args.val_t}", f"train.sample_every={args.steps + 1}",
        f"train.checkpoint_every={args.steps}", "train.keep_last=1", f"train.seed={args.seed}",
        f"train.device={args.device}", f"train.precision={args.precision}", f"evaluate.batch_size={args.eval_batch}",
    ]


def curve(run_dir: Path, key: str) -> list[list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = [[r["step"], r[key]] for r in rows if key in r]
    return out


def train_loss_curve(run_dir: Path) -> list[list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [[r["step"], r["loss"]] for r in rows if "loss" in r]


def train_model(name: str, args: argparse.Namespace, dataset, log) -> dict:
    """Train one model; returns its trainer (final EMA weights loaded, eval mode) and timing."""
    run_dir = Path(args.work) / args.run_tag / name
    overrides = shared_overrides(args) + DIFFUSION.get(name, ["process.name=masking"])
    config = load_config(None, overrides)
    if name == "ar":
        torch.manual_seed(args.seed)    # the AR net is built here, before the Trainer seeds: seed its init too
        model = ARTransformer(dataset.num_states, args.seq_len, dim=args.dim, depth=args.depth, heads=args.heads,
                              dropout=0.0)
        task = ExactLikelihoodTask(model, dataset.train, dataset.val[: args.val_windows], name="kjv-27")
    else:
        task = SubsetValDiffusionTask(args.val_windows)
    trainer = TimedTrainer(config, run_dir, progress=False, log=lambda m: log(f"  [{name}] {m}"), task=task)
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start
    trainer.ema.copy_to(trainer.module)      # final EMA weights: every model is scored after the same tokens
    trainer.module.eval()
    key = "val_bits_per_dim" if name == "ar" else "val_nll_bits_per_dim"
    params = sum(p.numel() for p in trainer.module.parameters())
    trunk = sum(p.numel() for n, p in trainer.module.named_parameters()
                if ".attn." in n or ".mlp." in n)
    return {"trainer": trainer, "config": config, "wall_s": wall, "step_s": trainer.step_seconds,
            "step_cpu_s": trainer.step_cpu_seconds, "params": params, "trunk_params": trunk,
            "val_curve": curve(run_dir, key), "loss_curve": train_loss_curve(run_dir)}


@torch.no_grad()
def ar_bits_per_char(model: ARTransformer, data: torch.Tensor, device, batch: int) -> float:
    total = 0.0
    for i in range(0, data.shape[0], batch):
        total += float(model.nll(data[i:i + batch].to(device)).double().sum())
    return total / (data.numel() * math.log(2.0))


def unigram_entropy(x: torch.Tensor, k: int) -> float:
    counts = torch.bincount(x.reshape(-1).cpu(), minlength=k).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def draw_samples(name: str, trained: dict, args: argparse.Namespace, temperature: float, n: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(n, L) samples at ``temperature`` and the network calls made; AR ancestral, plain diffusion with the
    bridge sampler (``--sample-steps``), block diffusion semi-autoregressively (``--block-steps`` per block, cache)."""
    trainer = trainer_of(trained)
    if name == "ar":
        return trainer.module.sample(n, generator=generator, temperature=temperature), args.seq_len
    from discrete_diffusion.samplers.semi_autoregressive import SemiAutoregressiveDecoder
    block = trained["config"].model.get("block_size", None)
    if block is None:
        sampler = build_sampler("bridge", num_steps=args.sample_steps, temperature=temperature)
        x = sampler.sample(trainer.process, trainer.denoiser, trainer.schedule, (n, args.seq_len), generator,
                           trainer.device)
        return x, args.sample_steps
    sampler = build_sampler("bridge", num_steps=args.block_steps, temperature=temperature)
    out = SemiAutoregressiveDecoder(sampler, use_cache=True).sample(trainer.process, trainer.denoiser,
                                                                     trainer.schedule, n, generator=generator,
                                                                     device=trainer.device)
    return out.tokens, out.network_calls


def trainer_of(trained: dict):
    return trained["trainer"]


@torch.no_grad()
def cache_timing(trained: dict, args: argparse.Namespace) -> dict:
    """Semi-autoregressive decoding of ``--cache-length`` tokens with and without the KV cache (same seed)."""
    from discrete_diffusion.samplers.semi_autoregressive import SemiAutoregressiveDecoder
    trainer = trainer_of(trained)
    out = {}
    for use_cache in (True, False):
        decoder = SemiAutoregressiveDecoder(build_sampler("bridge", num_steps=args.block_steps), use_cache=use_cache,
                                            max_length=args.cache_length)
        start = time.perf_counter()
        res = decoder.sample(trainer.process, trainer.denoiser, trainer.schedule, args.cache_batch,
                             generator=torch.Generator(device=trainer.device).manual_seed(args.seed),
                             device=trainer.device)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        out["cached" if use_cache else "recomputed"] = (res.tokens.cpu(), time.perf_counter() - start,
                                                        res.network_calls)
    (tc, sc, nc), (tu, su, nu) = out["cached"], out["recomputed"]
    return {"length": args.cache_length, "batch": args.cache_batch, "steps_per_block": args.block_steps,
            "cached_s": sc, "recomputed_s": su, "speedup": su / sc, "identical": bool(torch.equal(tc, tu)),
            "network_calls": [nc, nu]}


def rescore(args: argparse.Namespace) -> None:
    """``--rescore WORK/<tag>``: score the diffusion runs of an earlier invocation again on the same test windows with
    ``--test-t`` noise draws each (their best = final EMA weights; the AR row is exact and needs no rescoring)."""
    import warnings

    from discrete_diffusion.runs.load import load_run
    root = Path(args.rescore)
    dataset = load_kjv(seq_len=args.seq_len, normalize="text8")
    test = dataset.test if args.test_windows <= 0 else dataset.test[: args.test_windows]
    rows = {}
    for run_dir in sorted(p for p in root.iterdir() if (p / "config.yaml").is_file() and p.name != "ar"):
        with warnings.catch_warnings():     # the runs validated on a subset of val: data.json differs by design
            warnings.simplefilter("ignore")
            run = load_run(run_dir, "best", args.device, allow_data_change=True)
        start = time.perf_counter()
        res = evaluate_nll(run.process, run.denoiser, run.schedule, test, build_proposal(run.config), args.test_t,
                           args.eval_batch, torch.Generator(device=run.device).manual_seed(2), run.device)
        rows[run_dir.name] = {"test_bits_per_char": res.nll_bits_per_dim, "stderr": res.nll_bits_per_dim_stderr,
                              "test_t_samples": args.test_t, "checkpoint": str(run.checkpoint),
                              "seconds": time.perf_counter() - start}
        print(f"{run_dir.name}: {res.nll_bits_per_dim:.4f} ± {res.nll_bits_per_dim_stderr:.4f} bits/char "
              f"({args.test_t} draws x {test.shape[0]} windows)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    (out / f"{args.stem}_rescore.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    md = [f"# Rescored diffusion bounds ({args.test_t} draws per window, {test.shape[0]} test windows)", "",
          f"`{command}`", "", "| model | test bits/char | ± se |", "|---|---|---|"]
    md += [f"| {k} | {r['test_bits_per_char']:.4f} | {r['stderr']:.4f} |" for k, r in rows.items()]
    (out / f"{args.stem}_rescore.md").write_text("\n".join(md) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rescore", default=None, help="WORK/<tag> of an earlier run: score its diffusion runs again "
                                                        "with --test-t draws per test window, then stop")
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MAIN)} (+ recipes)")
    parser.add_argument("--recipes", action="store_true", help=f"also train {' '.join(RECIPES)}")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--val-windows", type=int, default=48, help="validation windows for the curves")
    parser.add_argument("--val-t", type=int, default=2, help="noise draws per validation window (diffusion)")
    parser.add_argument("--test-windows", type=int, default=0, help="test windows scored (0 = all)")
    parser.add_argument("--test-t", type=int, default=2, help="noise draws per test window (diffusion)")
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.85, 1.0])
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--sample-steps", type=int, default=128, help="bridge steps of plain diffusion samples")
    parser.add_argument("--block-steps", type=int, default=2, help="bridge steps per block (block diffusion)")
    parser.add_argument("--cache-length", type=int, default=1024)
    parser.add_argument("--cache-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--work", default="/tmp/text_vs_ar", help="run directories (WORK/<UTC time>/<model>)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--stem", default="text_vs_ar")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, a few steps")
    args = parser.parse_args()
    args.run_tag = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")   # a fresh run directory per invocation
    if args.rescore is not None:
        rescore(args)
        return
    if args.quick:
        args.dim, args.depth, args.heads, args.steps, args.batch_size = 32, 1, 2, 4, 4
        args.eval_every, args.val_windows, args.test_windows, args.num_samples = 2, 4, 8, 2
        args.temperatures, args.sample_steps, args.cache_length, args.cache_batch = [1.0], 8, 128, 2
        args.warmup = 1
    models = args.models or (MAIN + (RECIPES if args.recipes else []))
    if "ar" not in models:
        models = ["ar"] + models
    unknown = [m for m in models if m != "ar" and m not in DIFFUSION]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from ar {' '.join(DIFFUSION)}")
    log_lines: list[str] = []

    def log(message: str) -> None:
        print(message, flush=True)
        log_lines.append(message)

    dataset = load_kjv(seq_len=args.seq_len, normalize="text8")
    test = dataset.test if args.test_windows <= 0 else dataset.test[: args.test_windows]
    tokens = args.steps * args.batch_size * args.seq_len
    log(f"KJV-27: {dataset.metadata['num_chars']:,} chars, {dataset.num_states} symbols; windows train "
        f"{dataset.train.shape[0]}, val {args.val_windows} (of {dataset.val.shape[0]}), test {test.shape[0]}; "
        f"{args.steps} steps x {args.batch_size} x {args.seq_len} = {tokens:,} training tokens per model "
        f"({tokens / dataset.train.numel():.2f} epochs)")
    results: dict[str, dict] = {}
    trained: dict[str, dict] = {}
    frontier: dict | None = None
    cache: dict = {}
    main_models = [m for m in models if m in MAIN]
    for name in main_models + [m for m in models if m not in MAIN]:
        log(f"training {name} ...")
        t = train_model(name, args, dataset, log)
        trained[name] = t
        trainer = t["trainer"]
        start = time.perf_counter()
        if name == "ar":
            bpc, stderr, t_samples = ar_bits_per_char(trainer.module, test, trainer.device, args.eval_batch), 0.0, 0
        else:
            res = evaluate_nll(trainer.process, trainer.denoiser, trainer.schedule, test, build_proposal(t["config"]),
                               args.test_t, args.eval_batch, torch.Generator(device=trainer.device).manual_seed(1),
                               trainer.device)
            bpc, stderr, t_samples = res.nll_bits_per_dim, res.nll_bits_per_dim_stderr, args.test_t
        results[name] = {"test_bits_per_char": bpc, "stderr": stderr, "test_t_samples": t_samples,
                         "params": t["params"], "trunk_params": t["trunk_params"], "train_tokens": tokens,
                         "train_step_s": t["step_s"], "train_step_cpu_s": t["step_cpu_s"],
                         "train_wall_s": t["wall_s"], "tokens_per_s": tokens / t["step_s"],
                         "tokens_per_cpu_s": tokens / max(t["step_cpu_s"], 1e-9),
                         "eval_s": time.perf_counter() - start, "val_curve": t["val_curve"],
                         "loss_curve": t["loss_curve"], "overrides": DIFFUSION.get(name, [])}
        log(f"  {name}: test {bpc:.4f} ± {stderr:.4f} bits/char, {t['params']:,} params ({t['trunk_params']:,} in "
            f"attention + MLP), {tokens / t['step_s']:,.0f} train tokens/s wall "
            f"({tokens / max(t['step_cpu_s'], 1e-9):,.0f} per CPU-s), train {t['step_s']:.0f} s "
            f"(wall {t['wall_s']:.0f} s, CPU {t['step_cpu_s']:.0f} s)")
        compare(results)
        write(args, models, results, frontier, cache, tokens, dataset, test, log_lines, partial=True)
        if name == main_models[-1]:
            frontier = sample_frontier(args, trained, dataset, test, results, log)
            cache = cache_table(args, trained, log)
            write(args, models, results, frontier, cache, tokens, dataset, test, log_lines, partial=True)
    write(args, models, results, frontier, cache, tokens, dataset, test, log_lines, partial=False)


def compare(results: dict) -> None:
    """Ratios to AR and the fraction of the masked-to-AR gap closed, (gap_masked - gap_model) / gap_masked."""
    if "ar" not in results:
        return
    ar = results["ar"]["test_bits_per_char"]
    for r in results.values():
        r["ratio_to_ar"] = r["test_bits_per_char"] / ar
    if "masked" in results:
        gap = results["masked"]["test_bits_per_char"] - ar
        for name, r in results.items():
            if name.startswith("bd") or name.startswith("masked"):
                r["gap_closed"] = (gap - (r["test_bits_per_char"] - ar)) / gap if gap > 0 else None


def sample_frontier(args, trained, dataset, test, results, log) -> dict:
    """The AR judge's NLL of samples beside their unigram entropy, per model and temperature."""
    judge = trainer_of(trained["ar"]).module
    k = dataset.num_states
    frontier = {"reference": {"test_judge_bits_per_char": results["ar"]["test_bits_per_char"],
                              "test_unigram_entropy_bits": unigram_entropy(test, k)}, "rows": []}
    for name in [m for m in MAIN if m in trained]:
        for temp in args.temperatures:
            g = torch.Generator(device=trainer_of(trained[name]).device).manual_seed(args.seed + 7)
            start = time.perf_counter()
            x, calls = draw_samples(name, trained[name], args, temp, args.num_samples, g)
            seconds = time.perf_counter() - start
            x = x.to(judge.head.weight.device)
            row = {"model": name, "temperature": temp, "judge_bits_per_char": ar_bits_per_char(judge, x, x.device, 64),
                   "unigram_entropy_bits": unigram_entropy(x, k), "network_calls": calls, "sample_s": seconds,
                   "example": "".join(dataset.metadata["vocab"][i] for i in x[0, :120].tolist())}
            frontier["rows"].append(row)
            log(f"  samples {name} T={temp}: judge {row['judge_bits_per_char']:.3f} bits/char, unigram entropy "
                f"{row['unigram_entropy_bits']:.3f} bits, {calls} calls, {seconds:.1f} s")
    return frontier


def cache_table(args, trained, log) -> dict:
    cache = {}
    for name in ("bd4", "bd16"):
        if name in trained:
            cache[name] = cache_timing(trained[name], args)
            c = cache[name]
            log(f"  cache {name} at {c['length']} chars: cached {c['cached_s']:.2f} s, recomputed "
                f"{c['recomputed_s']:.2f} s, speed-up {c['speedup']:.2f}x, identical {c['identical']}")
    return cache


def table(results: dict) -> list[str]:
    lines = ["| model | params (attention + MLP) | test bits/char | ± se | ratio to AR | masked-to-AR gap closed | "
             "train tokens/s (wall) | per CPU-second |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = f"{r['ratio_to_ar']:.3f}" if "ratio_to_ar" in r else ""
        gap = f"{100 * r['gap_closed']:.0f} %" if r.get("gap_closed") is not None else ""
        se = f"{r['stderr']:.4f}" if r["stderr"] else "exact"
        lines.append(f"| {name} | {r['params']:,} ({r['trunk_params']:,}) | {r['test_bits_per_char']:.4f} | {se} | "
                     f"{ratio} | {gap} | {r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} |")
    return lines


def write(args, models, results, frontier, cache, tokens, dataset, test, log_lines, partial: bool) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    payload = {"command": command, "partial": partial, "date": datetime.now(timezone.utc).isoformat(),
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "device": args.device,
                           "cuda": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None},
               "settings": {k: v for k, v in vars(args).items()}, "train_tokens_per_model": tokens,
               "data": {"name": "KJV-27", "chars": dataset.metadata["num_chars"], "symbols": dataset.num_states,
                        "train_windows": dataset.train.shape[0], "test_windows": test.shape[0]},
               "results": results, "frontier": frontier, "cache": cache}
    (out / f"{args.stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    md = [f"# Text vs AR on KJV-27 ({'PARTIAL: ' if partial else ''}{args.device}, {args.precision})", "",
          f"`{command}`", "",
          f"{tokens:,} training tokens per model ({args.steps} steps x {args.batch_size} x {args.seq_len}), trunk "
          f"dim {args.dim}, depth {args.depth}, heads {args.heads}; test = {test.shape[0]} windows of {args.seq_len}; "
          f"diffusion rows are ELBO bounds ({args.test_t} noise draws per window), AR exact.", ""]
    md += table(results)
    if frontier is not None:
        ref = frontier["reference"]
        md += ["", "## Samples: AR judge NLL beside unigram entropy (frontier)", "",
               f"Reference, the test text: judge {ref['test_judge_bits_per_char']:.3f} bits/char, unigram entropy "
               f"{ref['test_unigram_entropy_bits']:.3f} bits. {args.num_samples} samples per row; plain diffusion "
               f"{args.sample_steps} bridge steps, block diffusion {args.block_steps} per block (cached).", "",
               "| model | temperature | judge bits/char | unigram entropy | network calls | seconds "
               "| sample (first 120 chars) |",
               "|---|---|---|---|---|---|---|"]
        for r in frontier["rows"]:
            md.append(f"| {r['model']} | {r['temperature']} | {r['judge_bits_per_char']:.3f} | "
                      f"{r['unigram_entropy_bits']:.3f} | {r['network_calls']} | {r['sample_s']:.1f} | "
                      f"`{r['example']}` |")
    if cache:
        md += ["", "## Semi-autoregressive sampling with and without the KV cache", "",
               "| model | length | batch | steps per block | cached s | recomputed s | speed-up | identical tokens |",
               "|---|---|---|---|---|---|---|---|"]
        for name, c in cache.items():
            md.append(f"| {name} | {c['length']} | {c['batch']} | {c['steps_per_block']} | {c['cached_s']:.2f} | "
                      f"{c['recomputed_s']:.2f} | {c['speedup']:.2f}x | {c['identical']} |")
    md += ["", "## Validation curves (bits/char on the validation windows, EMA weights)", "",
           "| step | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    steps = sorted({s for r in results.values() for s, _ in r["val_curve"]})
    for s in steps:
        cells = [next((f"{v:.4f}" for st, v in r["val_curve"] if st == s), "") for r in results.values()]
        md.append(f"| {s} | " + " | ".join(cells) + " |")
    md += ["", "## Log", "", "```", *log_lines, "```", ""]
    (out / f"{args.stem}.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
