"""Per-process training state of DDP vs FSDP (train.sharding=none vs fsdp; issue 24 item 4): parameter, gradient,
Adam-moment and EMA bytes that one process holds after one AdamW step of the KJV denoiser (masking process, BPE
vocabulary 4096, 128 tokens, ``model.backbone=transformer``), measured from the tensors themselves (a sharded
tensor counts its local shard only), at 1, 2 and 4 gloo processes on CPU. With ``--device cuda`` each process also
reports ``torch.cuda.max_memory_allocated`` (the peak, activations and gathered parameters included).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/sharding_memory.py                     # the CPU table
    PYTHONPATH=src python benchmarks/sharding_memory.py --device cuda --procs 1 --search       # see docs/distributed.md

``--search`` (GPU): for each mode, double ``--depth`` until a step runs out of memory (or the network passes the
library's limit of ``builders.MAX_PARAMETERS`` parameters); prints the largest depth that fits and its peak memory
(the prepared GPU measurement; benchmarks/sharding_memory_gpu.sh).
The FSDP row at one process is the sharding code on a one-rank group (the Trainer itself trains one process
unsharded): it holds what DDP holds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

MB = 1024 * 1024
RESULTS = Path(__file__).parent / "results"


def kjv_config(dim: int, depth: int, heads: int):
    from discrete_diffusion.config import load_config

    return load_config(None, ["process.name=masking", "process.schedule=log-linear", "model.backbone=transformer",
                              f"model.dim={dim}", f"model.depth={depth}", f"model.heads={heads}", "model.dropout=0.0"])


def local_bytes(t) -> int:
    from discrete_diffusion.train.sharding import is_sharded

    if t is None:
        return 0
    t = t.to_local() if is_sharded(t) else t
    return t.numel() * t.element_size()


def worker(rank: int, world: int, port: int, mode: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    from discrete_diffusion.builders import build_denoiser, build_process_from
    from discrete_diffusion.denoiser import backbone_input, noise_level_input
    from discrete_diffusion.distributed import DistContext
    from discrete_diffusion.train.ema import EMA
    from discrete_diffusion.train.optim import build_optimizer
    from discrete_diffusion.train.sharding import shard_module

    record: dict = {"rank": rank}
    try:
        config = kjv_config(args.dim, args.depth, args.heads)
        process = build_process_from(config, args.vocab)
        torch.manual_seed(0)
        denoiser = build_denoiser(config, process, (args.seq_len,)).to(device)
        backbone = denoiser.backbone
        ctx = DistContext(rank, world, rank, "nccl" if cuda else "gloo")
        if mode == "fsdp":
            shard_module(denoiser, ctx, device, bf16=args.bf16)
            model = backbone
        else:
            model = torch.nn.parallel.DistributedDataParallel(backbone, device_ids=[rank] if cuda else None)
        optimizer = build_optimizer(denoiser, lr=1e-3, weight_decay=0.01)
        ema = EMA(denoiser, decay=0.999)
        g = torch.Generator().manual_seed(rank)
        x0 = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=g).to(device)
        lam = torch.randn(args.batch, generator=g).to(device)
        xt = torch.where(torch.rand(x0.shape, generator=g).to(device) < 0.5, torch.full_like(x0, args.vocab), x0)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        start = time.time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(backbone_input(process, backbone, xt, lam), noise_level_input(lam))
        loss = F.cross_entropy(logits.float(), x0)
        loss.backward()
        optimizer.step()
        ema.update(denoiser)
        record["step_s"] = time.time() - start
        params = list(denoiser.parameters())
        record.update(
            parameters=sum(p.numel() for p in params),
            param_bytes=sum(local_bytes(p) for p in params),
            grad_bytes=sum(local_bytes(p.grad) for p in params),
            optim_bytes=sum(local_bytes(v) for s in optimizer.state.values() for v in s.values()
                            if isinstance(v, torch.Tensor)),
            ema_bytes=sum(local_bytes(t) for t in ema.shadow.values()),
        )
        if cuda:
            torch.cuda.synchronize(device)
            record["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        record["oom"] = True
    except ValueError as err:   # the library's parameter limit (builders.MAX_PARAMETERS)
        record["refused"] = str(err)
    finally:
        Path(out, f"{mode}_{world}_{rank}.json").write_text(json.dumps(record))
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(mode: str, world: int, args: argparse.Namespace) -> dict:
    """The largest per-process bytes over the ranks of a ``world``-process run of ``mode``."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(world, free_port(), mode, args, out), nprocs=world, join=True)
        ranks = [json.loads(Path(out, f"{mode}_{world}_{r}.json").read_text()) for r in range(world)]
    if any(r.get("oom") for r in ranks):
        return {"mode": mode, "procs": world, "depth": args.depth, "oom": True}
    if any(r.get("refused") for r in ranks):
        return {"mode": mode, "procs": world, "depth": args.depth, "refused": ranks[0].get("refused", "")}
    keys = ("param_bytes", "grad_bytes", "optim_bytes", "ema_bytes", "peak_bytes")
    row = {"mode": mode, "procs": world, "depth": args.depth, "parameters": ranks[0]["parameters"],
           **{k: max(r[k] for r in ranks) for k in keys if k in ranks[0]},
           "step_s": max(r["step_s"] for r in ranks)}
    row["state_bytes"] = row["param_bytes"] + row["grad_bytes"] + row["optim_bytes"] + row["ema_bytes"]
    return row


def table(rows: list[dict]) -> str:
    ddp = {r["procs"]: r["state_bytes"] for r in rows if r["mode"] == "ddp" and "state_bytes" in r}
    peak = any("peak_bytes" in r for r in rows)
    head = ("| procs | mode | depth | parameters | params MB | grads MB | Adam MB | EMA MB | state MB / process "
            "| vs DDP |" + (" peak MB |" if peak else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("oom") or r.get("refused"):
            why = "out of memory" if r.get("oom") else "refused: over the library's parameter limit"
            lines.append(f"| {r['procs']} | {r['mode']} | {r['depth']} | {why} |")
            continue
        ratio = r["state_bytes"] / ddp[r["procs"]] if r["procs"] in ddp else float("nan")
        line = (f"| {r['procs']} | {r['mode']} | {r['depth']} | {r['parameters']:,} | {r['param_bytes'] / MB:.2f} | "
                f"{r['grad_bytes'] / MB:.2f} | {r['optim_bytes'] / MB:.2f} | {r['ema_bytes'] / MB:.2f} | "
                f"{r['state_bytes'] / MB:.2f} | {ratio:.3f} |")
        lines.append(line + (f" {r['peak_bytes'] / MB:.0f} |" if peak else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="examples per process")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, FSDP blocks gathered in bf16")
    parser.add_argument("--search", action="store_true", help="double --depth until a step runs out of memory")
    parser.add_argument("--name", default=None, help="results file stem (default sharding_memory[_DEVICE])")
    args = parser.parse_args()
    rows = []
    for world in args.procs:
        for mode in ("ddp", "fsdp"):
            if not args.search:
                rows.append(measure(mode, world, args))
                continue
            depth, fits = args.depth, None
            while True:
                row = measure(mode, world, argparse.Namespace(**{**vars(args), "depth": depth}))
                if row.get("oom") or row.get("refused"):
                    print(f"{mode}, {world} process(es): depth {depth} "
                          f"{'ran out of memory' if row.get('oom') else 'is over the parameter limit'}")
                    break
                fits, depth = row, depth * 2
            rows.append(fits if fits is not None else row)
    text = table(rows)
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    header = (f"KJV denoiser: transformer dim {args.dim}, heads {args.heads}, vocab {args.vocab}, seq_len "
              f"{args.seq_len}, {args.batch} examples per process, one AdamW step, device {args.device}"
              f"{', bf16' if args.bf16 else ''}; per process, the largest over ranks")
    print(header)
    print(text)
    name = args.name or ("sharding_memory" + ("" if args.device == "cpu" else f"_{args.device}"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{header}.\n\n{text}\n\nReproduce: `OMP_NUM_THREADS=1 "
                                        f"PYTHONPATH=src {cmd}`\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"command": cmd, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
