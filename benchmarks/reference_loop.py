"""Reference benchmark (issue 15 item 5): the library's masked diffusion beside a bare MDLM loop on the same network.

References: Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (MDLM), NeurIPS 2024 (the
log-linear schedule, the SUBS parameterisation, the continuous-time loss, the ancestral sampler and the
low-discrepancy draw of t); Shi et al., "Simplified and Generalized Masked Diffusion for Discrete Data" (MD4), 2024.

**The bare reference** (``reference_*`` below, written from the formulas, using none of the library's losses,
processes or samplers; only its ``SequenceTransformer`` trunk, built with the same seed so both sides run the same
weights). Values 0..K-1, MASK = K, alpha(t) = 1 - (1 - eps) t (eps = 1e-4), so -alpha'(t) = 1 - eps.

- train step: t_i = 1e-3 + (1 - 1e-3) ((u + i / B) mod 1) (MDLM's low-discrepancy t with its sampling_eps); each
  site is masked where its uniform v >= alpha(t) (probability 1 - alpha); one forward of the trunk on the token
  indices x_t (B, L) with noise level clamp(logit alpha, -20, 20) / 20 (the conditioning the library feeds the same
  trunk); SUBS (the K output channels carry no MASK logit, so log_softmax over them puts no mass on MASK; unmasked
  sites do not enter the loss); loss = mean over (B, L) of (-alpha'/(1 - alpha)) * (-log p(x0 | x_t)) at masked
  sites; backward; AdamW step.
- sampling: x = all MASK (B, L); S steps on t_k = 1 - k / S; from t to s a masked site unmasks with probability
  (alpha_s - alpha_t) / (1 - alpha_t) (1 at s = 0) and takes a value drawn from softmax(logits) at that site by
  **float32 Gumbel-max**, drawn only at the sites that unmask.

**The library side**: ``losses.training_loss`` with ``NetworkDenoiser(SequenceTransformer, MaskingProcess,
"logits")``, the log-linear schedule and the default ``LogitAlphaProposal`` (importance sampling of
lam = logit alpha, logistic with scale 2, stratified; the reference's uniform t is lam ~ logistic with scale 1),
the same AdamW; ``build_sampler("bridge", num_steps=S)`` (prior: MASK except a fraction alpha(1) = 1e-4 of uniform
values; float64 inverse-CDF draws at the sites that unmask).

The two losses are the same estimator up to the proposal of t: at a fixed t and fixed mask draws, the library's
integrand alpha * CE divided by the density of lam under uniform t, alpha (1 - alpha) / (1 - eps), is
(1 - eps) / (1 - alpha) * CE, the reference's term. ``loss_agreement`` checks this on one batch (printed).

Measurement: each (configuration, side, train | sample) in a fresh subprocess, the two sides interleaved (A B A B)
``--repeats`` times, median. Train step: median wall time of ``--train-steps`` steps after warm-up steps; peak
memory: on CPU the growth of max RSS over the measured work, on CUDA ``torch.cuda.max_memory_allocated`` (the
whole process: weights, AdamW state, activations). Sampling: one run of ``--sample-steps`` steps.

    python benchmarks/reference_loop.py                        # CPU sizes, one thread (a few minutes)
    python benchmarks/reference_loop.py --quick                # smoke run
    python benchmarks/reference_loop.py --full --device cuda   # the issue's sizes, bf16 autocast (GPU)

Writes ``reference_loop[_quick | _full_DEVICE].md`` / ``.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor, nn

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.losses import LogitAlphaProposal, NoiseDraw, diffusion_terms, training_loss
from discrete_diffusion.nn import SequenceTransformer
from discrete_diffusion.processes import build_process
from discrete_diffusion.runs.atomic_io import atomic_write_text as write_text
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

EPS = 1e-4            # log-linear schedule: alpha(1) = EPS
T_MIN = 1e-3          # MDLM's sampling_eps: the reference draws t in [T_MIN, 1]

TARGETS = {"train": 1.00, "memory": 1.05, "sample": 1.05}


@dataclass
class Config:
    """One benchmark configuration: vocabulary K, length L, trunk width / depth / heads, batch, sampling steps."""

    name: str
    k: int
    length: int
    dim: int
    depth: int
    heads: int
    batch: int
    sample_steps: int


CPU_CONFIGS = [Config("characters", 64, 128, 128, 2, 4, 16, 16), Config("gpt2-vocab", 50257, 128, 128, 2, 4, 4, 16)]
FULL_CONFIGS = [Config("characters", 64, 256, 512, 8, 8, 128, 128),
                Config("gpt2-vocab", 50257, 1024, 768, 12, 12, 16, 128)]
QUICK_CONFIGS = [Config("characters", 64, 32, 64, 1, 2, 4, 4), Config("gpt2-vocab", 50257, 32, 64, 1, 2, 2, 4)]


# ----- the bare reference ------------------------------------------------------------------------------------
def reference_alpha(t: Tensor) -> Tensor:
    """alpha(t) = 1 - (1 - EPS) t, float64 like t."""
    return 1.0 - (1.0 - EPS) * t


def reference_noise_level(alpha: Tensor) -> Tensor:
    """The trunk's conditioning input: clamp(logit alpha, -20, 20) / 20, float32 (B,)."""
    return torch.logit(alpha.double()).clamp(-20.0, 20.0).float() / 20.0


def reference_loss(net: nn.Module, x0: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """MDLM's loss at given t (B,) float64 and site uniforms v (B, L) float64: mask where v >= alpha(t), one
    forward on x_t, mean over (B, L) of (1 - EPS) / (1 - alpha) * CE at the masked sites. Returns a scalar."""
    k = net.out_channels
    alpha = reference_alpha(t)
    masked = v >= alpha[:, None]
    xt = torch.where(masked, torch.full_like(x0, k), x0)
    logits = net(xt, reference_noise_level(alpha))                          # (B, K, L): no MASK channel (SUBS)
    # SUBS log-softmax over the last dim of (B, L, K) (F.cross_entropy on the (B, K, L) layout was 4x slower on CPU)
    log_p = torch.log_softmax(logits.float().movedim(1, -1), dim=-1)
    nll = -log_p.gather(-1, x0[..., None])[..., 0]                           # (B, L): -log p(x0 | x_t)
    weight = ((1.0 - EPS) / (1.0 - alpha)).float()[:, None]                  # -alpha'(t) / (1 - alpha(t))
    return (weight * nll * masked).mean()


def reference_draw(x0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """MDLM's low-discrepancy t (B,) in [T_MIN, 1] and the site uniforms v (B, L), both float64."""
    batch = x0.shape[0]
    u = torch.rand((), generator=generator, dtype=torch.float64, device=x0.device)
    t = (u + torch.arange(batch, dtype=torch.float64, device=x0.device) / batch) % 1.0
    v = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
    return T_MIN + (1.0 - T_MIN) * t, v


@torch.no_grad()
def reference_sample(net: nn.Module, batch: int, steps: int, generator: torch.Generator,
                     device: torch.device) -> Tensor:
    """MDLM's ancestral sampler from all MASK: (B, L) long with values in 0..K-1."""
    k, length = net.out_channels, net.seq_len
    x = torch.full((batch, length), k, dtype=torch.long, device=device)
    for step in range(steps):
        t = torch.full((batch,), 1.0 - step / steps, dtype=torch.float64, device=device)
        alpha_t, alpha_s = reference_alpha(t), reference_alpha(t - 1.0 / steps).clamp_max(1.0)
        if step == steps - 1:
            alpha_s = torch.ones_like(alpha_s)
        p_unmask = (alpha_s - alpha_t) / (1.0 - alpha_t)
        logits = net(x, reference_noise_level(alpha_t))                     # (B, K, L)
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=device)
        unmask = (x == k) & (u < p_unmask[:, None])
        rows = logits.transpose(1, 2)[unmask].float()                        # (n, K) at the sites that unmask
        gumbel = -torch.log(-torch.log(torch.rand(rows.shape, generator=generator, device=device).clamp_min(1e-20)))
        x[unmask] = (rows + gumbel).argmax(-1)
    return x


# ----- the library side --------------------------------------------------------------------------------------
def build_network(config: Config, device: torch.device) -> SequenceTransformer:
    """The trunk both sides run: seeded, dropout off, K + 1 token inputs (MASK = K), K outputs."""
    torch.manual_seed(0)
    net = SequenceTransformer(config.k + 1, config.k, seq_len=config.length, dim=config.dim, depth=config.depth,
                              heads=config.heads, dropout=0.0)
    return net.to(device)


def library_loss_at(denoiser: NetworkDenoiser, x0: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The library's training objective at the reference's t and mask draws: lam = logit alpha(t), the same x_t,
    and the inverse density of lam under uniform t, (1 - EPS) / (alpha (1 - alpha)). Returns a scalar."""
    process = denoiser.process
    alpha = reference_alpha(t)
    xt = torch.where(v >= alpha[:, None], torch.full_like(x0, process.mask_index), x0)
    noise = NoiseDraw(xt, torch.logit(alpha), (1.0 - EPS) / (alpha * (1.0 - alpha)))
    term, _ = diffusion_terms(process, denoiser, x0, noise)
    return term.mean() / x0[0].numel()


def loss_agreement(config: Config, device: torch.device, seed: int = 3) -> tuple[float, float]:
    """(reference loss, library loss) on one random batch at the same t and mask draws, float64 sums of float32."""
    net = build_network(config, device)
    denoiser = NetworkDenoiser(net, build_process("masking", config.k), "logits")
    gen = torch.Generator(device=device).manual_seed(seed)
    x0 = torch.randint(0, config.k, (config.batch, config.length), generator=gen, device=device)
    # a trunk at initialisation outputs 0 (zero-initialised output layer): perturb it so the check is not trivial
    with torch.no_grad():
        net.output_proj.weight.normal_(0.0, 0.5, generator=gen)
        for block in net.blocks:
            block.modulation.weight.normal_(0.0, 0.02, generator=gen)
    t, v = reference_draw(x0, gen)
    with torch.no_grad():
        return float(reference_loss(net, x0, t, v)), float(library_loss_at(denoiser, x0, t, v))


# ----- measurement (one per subprocess) ------------------------------------------------------------------------
def peak_memory_mib(device: torch.device) -> float:
    """CUDA: max_memory_allocated; CPU: max RSS (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(config: Config, side: str, kind: str, device: torch.device, train_steps: int, warmup: int,
            bf16: bool) -> dict:
    """One measurement in this (fresh) process; side in ours | reference, kind in train | sample."""
    net = build_network(config, device)
    process = build_process("masking", config.k)
    denoiser = NetworkDenoiser(net, process, "logits")
    schedule = build_schedule("log-linear", eps=EPS)
    gen = torch.Generator(device=device).manual_seed(1)
    x0 = torch.randint(0, config.k, (config.batch, config.length), generator=gen, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = 0.0 if device.type == "cuda" else peak_memory_mib(device)
    times = []
    if kind == "train":
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        proposal = LogitAlphaProposal()
        for step in range(warmup + train_steps):
            synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                if side == "ours":
                    loss = training_loss(process, denoiser, x0, schedule, proposal, generator=gen).loss
                else:
                    loss = reference_loss(net, x0, *reference_draw(x0, gen))
            loss.backward()
            optimizer.step()
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    else:
        net.requires_grad_(False)
        sampler = build_sampler("bridge", num_steps=config.sample_steps)
        for _ in range(1 + (device.type == "cuda")):     # on a GPU one untimed run first (kernels, allocator)
            synchronize(device)
            start = time.perf_counter()
            with autocast:
                if side == "ours":
                    sampler.sample(process, denoiser, schedule, (config.batch, config.length), gen)
                else:
                    reference_sample(net, config.batch, config.sample_steps, gen, device)
            synchronize(device)
            times = [time.perf_counter() - start]
    return {"config": config.name, "side": side, "kind": kind, "seconds": statistics.median(times),
            "peak_mib": peak_memory_mib(device) - base}


def run_child(args: argparse.Namespace, config: Config, side: str, kind: str) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps({"config": asdict(config), "side": side, "kind": kind}),
           "--device", args.device, "--train-steps", str(args.train_steps), "--warmup", str(args.warmup)]
    if args.full:
        cmd.append("--full")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"child {config.name} {side} {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio_cell(ours: float, ref: float, target: float, fmt: str) -> str:
    r = ours / ref
    return f"{ours:{fmt}} / {ref:{fmt}} ({r:.2f}{'' if r <= target else ' > ' + format(target, '.2f')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--full", action="store_true", help="the issue's sizes with bf16 autocast (for a GPU)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved subprocesses per side (median)")
    parser.add_argument("--train-steps", type=int, default=3, help="timed train steps per subprocess (median)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed train steps first (default 1; 3 on CUDA)")
    parser.add_argument("--only", default=None, help="run only the configuration with this name")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.warmup is None:
        args.warmup = 3 if device.type == "cuda" else 1
    bf16 = args.full
    if args.child:
        spec = json.loads(args.child)
        if device.type == "cpu":
            torch.set_num_threads(1)
        print(json.dumps(measure(Config(**spec["config"]), spec["side"], spec["kind"], device, args.train_steps,
                                 args.warmup, bf16)))
        return
    configs = FULL_CONFIGS if args.full else QUICK_CONFIGS if args.quick else CPU_CONFIGS
    if args.quick:
        args.repeats, args.train_steps = 1, 2
    if args.only:
        configs = [c for c in configs if c.name == args.only]
        if not configs:
            raise ValueError(f"--only: unknown configuration {args.only!r}; valid: characters, gpt2-vocab")
    check = Config("check", 50, 16, 32, 1, 2, 4, 4)
    ref, ours = loss_agreement(check, torch.device("cpu"))
    agreement = (f"loss agreement at fixed t and mask (K = {check.k}, L = {check.length}, B = {check.batch}): "
                 f"reference {ref:.7f}, library {ours:.7f}, relative difference {abs(ours - ref) / abs(ref):.1e}")
    print(agreement, flush=True)
    rows, raw = [], []
    for config in configs:
        got: dict[str, list[dict]] = {}
        for _ in range(args.repeats):
            for kind in ("train", "sample"):
                for side in ("ours", "reference"):                       # A B A B ...
                    got.setdefault(f"{kind}-{side}", []).append(run_child(args, config, side, kind))
        med = {key: {"seconds": statistics.median(r["seconds"] for r in runs),
                     "peak_mib": statistics.median(r["peak_mib"] for r in runs)} for key, runs in got.items()}
        raw.append({"config": asdict(config), "median": med, "runs": got})
        rows.append(f"| {config.name}: K {config.k}, L {config.length}, dim {config.dim}, depth {config.depth}, "
                    f"B {config.batch} | "
                    + ratio_cell(med["train-ours"]["seconds"], med["train-reference"]["seconds"],
                                 TARGETS["train"], ".3f")
                    + " | " + ratio_cell(med["train-ours"]["peak_mib"], med["train-reference"]["peak_mib"],
                                         TARGETS["memory"], ".0f")
                    + " | " + ratio_cell(med["sample-ours"]["seconds"], med["sample-reference"]["seconds"],
                                         TARGETS["sample"], ".2f") + f" ({config.sample_steps} steps) |")
        print(rows[-1], flush=True)
    header = ("| configuration | train step s, ours / reference (ratio) | peak MiB, ours / reference (ratio) | "
              "sampling s, ours / reference (ratio) |")
    targets = (f"| target (issue 15) | <= {TARGETS['train']:.2f} at K = 50,257 | "
               f"<= {TARGETS['memory']:.2f} at K = 50,257 | "
               f"<= {TARGETS['sample']:.2f} |")
    table = "\n".join([header, "|---|---|---|---|", *rows, targets])
    memory = "CUDA max_memory_allocated" if device.type == "cuda" else "growth of max RSS over the measured work"
    note = (f"masking, SequenceTransformer (same seeded weights both sides), "
            f"{args.train_steps} timed train steps after "
            f"{args.warmup} untimed (median), bridge sampler; median of {args.repeats} interleaved subprocesses per "
            f"side; peak memory: {memory}; {'bf16 autocast' if bf16 else 'float32'}; device {device.type}"
            + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
               f", 1 thread ({platform.processor() or platform.machine()})") + f"; torch {torch.__version__}")
    print("\n" + table + "\n\n" + note + "\n" + agreement)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__)] + sys.argv[1:])
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    name = "reference_loop" + (f"_full_{device.type}" if args.full else "_quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.md", f"{table}\n\n{note}\n\n{agreement}\n\n`{command}` ({stamp})\n")
    write_text(out / f"{name}.json", json.dumps({"command": command, "date": stamp, "note": note,
                                                 "agreement": agreement, "results": raw}, indent=1))


if __name__ == "__main__":
    main()
