"""Learning to Jump's synthetic count experiment: JUMP (Poisson thinning, ``process.name=jump``) beside a
continuous Gaussian DDPM (samples rounded) and Blackout with N = the data's maximum.

Data (Chen & Zhou, ICML 2023, configuration ``nbinom_jump``): the mixture 0.75 NB(1, 0.9) + 0.25 NB(10, 0.1)
(scipy's NB(n, p), means 0.111 and 90), ``--train-size`` training draws and ``--test-size`` held-out draws (other
seeds). Every model is the paper's 3 x 128 MLP (``nn.MLP``, hidden 128, depth 3), Adam lr 1e-3, batch
``--batch``, ``--steps`` steps, T = ``--sample-steps`` = 100 sampling steps, and is scored by the 1-D Wasserstein
distance W1 between ``--num-samples`` samples and the held-out draws; mean +- sd over ``--seeds`` seeds (the
seed sets the training data, the network's initialisation, the batches and the sampler's draws).

- JUMP: lambda = 10 (``JumpProcess(scale=10)``, mean_scale = the training mean), the continuous-time ELBO over
  logit alpha on the Blackout grid (t_end = 15) with the logistic proposal (loc ``--proposal-loc``, scale
  ``--proposal-scale``; the information of lambda x0 ~ 10..3000 lies at logit alpha ~ -8..-2); sampling: the
  bridge with the mean plugged in (the paper's thickening step z + Poisson(lambda (alpha_s - alpha_t) x0_hat)),
  output round(z_0 / lambda).
- Blackout (N = max of the training data): ``BlackoutProcess(N + 1)``, the mean parameterisation, the same
  grid, proposal and steps; sampling: its binomial bridge with the mean stochastically rounded. Samples can
  never exceed N.
- Gaussian DDPM (``baselines.GaussianDDPM``): standardised counts, epsilon prediction, linear betas over
  T = 100 steps, ancestral sampling, samples rounded and clipped at 0.

The "floor" row is W1 between two independent held-out sets of the same sizes: what a perfect sampler gets. The
"exact denoiser" row drives JUMP's sampler (the same 100 steps, the mean plugged in) with the exact E[x0 | z_t] of
the true mixture (``count_oracle.JumpOracle`` over 0..the 1 - 1e-12 quantile): the sampler's own error at T = 100,
apart from any training.

    python benchmarks/jump_counts.py                 # 5 seeds, the table of docs/jump.md (~10 CPU minutes idle)
    python benchmarks/jump_counts.py --quick         # 1 seed, 60 steps: a smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import nbinom, wasserstein_distance

from discrete_diffusion.baselines import GaussianDDPM
from discrete_diffusion.count_oracle import JumpOracle
from discrete_diffusion.data import PAPER_MIXTURE, negative_binomial_mixture
from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.losses import LogitAlphaProposal, training_loss
from discrete_diffusion.nn import MLP
from discrete_diffusion.processes import BlackoutProcess, ForwardProcess, JumpProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("jump", "blackout", "gaussian")


def train_discrete(process: ForwardProcess, train: torch.Tensor, args: argparse.Namespace,
                   seed: int) -> NetworkDenoiser:
    """The 3 x 128 MLP denoiser of ``process`` trained on the ELBO (mean parameterisation)."""
    torch.manual_seed(seed)
    net = MLP(process.feature_channels, process.output_channels("mean"), (1,), hidden=128, depth=3)
    denoiser = NetworkDenoiser(net, process, "mean")
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = build_schedule("blackout", t_end=15.0)
    proposal = LogitAlphaProposal(args.proposal_loc, args.proposal_scale)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(args.steps):
        index = torch.randint(0, train.shape[0], (args.batch,), generator=generator)
        loss = training_loss(process, denoiser, train[index], schedule, proposal, generator=generator).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return denoiser.eval()


@torch.no_grad()
def sample_discrete(process: ForwardProcess, denoiser: NetworkDenoiser, args: argparse.Namespace,
                    seed: int) -> np.ndarray:
    schedule = build_schedule("blackout", t_end=15.0)
    sampler = build_sampler("bridge", num_steps=args.sample_steps, grid=None if args.grid == "blackout" else args.grid)
    x = sampler.sample(process, denoiser, schedule, (args.num_samples, 1), torch.Generator().manual_seed(seed))
    return process.to_data(x).numpy()[:, 0]


def exact_denoiser_samples(args: argparse.Namespace, seed: int) -> np.ndarray:
    """JUMP's sampler driven by the exact mean of the true mixture (no network)."""
    top = int(max(nbinom.ppf(1 - 1e-12, n, p) for _, n, p in PAPER_MIXTURE))
    values = np.arange(top + 1)
    pmf = sum(w * nbinom.pmf(values, n, p) for w, n, p in PAPER_MIXTURE)
    process = JumpProcess(scale=args.scale)
    oracle = JumpOracle(process, torch.from_numpy(values)[:, None], torch.from_numpy(pmf), with_log_probs=False)
    schedule = build_schedule("blackout", t_end=15.0)
    sampler = build_sampler("bridge", num_steps=args.sample_steps, grid=None if args.grid == "blackout" else args.grid)
    x = sampler.sample(process, oracle, schedule, (args.num_samples, 1), torch.Generator().manual_seed(seed))
    return process.to_data(x).numpy()[:, 0]


def run_method(method: str, train: torch.Tensor, args: argparse.Namespace,
               seed: int) -> tuple[np.ndarray, float, float]:
    """(samples, training CPU seconds, sampling CPU seconds) of one method and seed."""
    start = time.process_time()
    if method == "gaussian":
        model = GaussianDDPM((1,), num_steps=args.sample_steps, hidden=128, depth=3)
        model.fit(train, args.steps, batch_size=args.batch, lr=args.lr, seed=seed)
        fitted = time.process_time()
        with torch.no_grad():
            samples = model.sample(args.num_samples, torch.Generator().manual_seed(seed + 1000)).numpy()[:, 0]
        return samples, fitted - start, time.process_time() - fitted
    if method == "jump":
        process: ForwardProcess = JumpProcess(scale=args.scale, mean_scale=max(1.0, float(train.double().mean())))
    else:
        process = BlackoutProcess(int(train.max()) + 1)
    denoiser = train_discrete(process, train, args, seed)
    fitted = time.process_time()
    samples = sample_discrete(process, denoiser, args, seed + 1000)
    return samples, fitted - start, time.process_time() - fitted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per model")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scale", type=float, default=10.0, help="JUMP's lambda")
    parser.add_argument("--proposal-loc", type=float, default=-4.0)
    parser.add_argument("--proposal-scale", type=float, default=3.0)
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--grid", default="blackout", help="the sampling grid (a schedule name) of the discrete models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)} (empty: only the floor and exact rows)")
    parser.add_argument("--no-exact-row", dest="exact_row", action="store_false",
                        help="leave out the row of JUMP's sampler driven by the exact denoiser")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps, 2000 samples")
    parser.add_argument("--out", default=str(RESULTS / "jump_counts"), help="stem of the .md / .json written")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.num_samples, args.test_size = 1, 60, 2000, 2000
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]   # none: only the floor and exact rows
    if set(methods) - set(METHODS):
        parser.error(f"--methods must name some of {', '.join(METHODS)}, got {args.methods!r}")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    command = "python benchmarks/jump_counts.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    test = negative_binomial_mixture(args.test_size, PAPER_MIXTURE, seed=10_000)[:, 0]
    floor = [wasserstein_distance(negative_binomial_mixture(args.num_samples, PAPER_MIXTURE, seed=20_000 + s)[:, 0],
                                  test) for s in seeds]
    w1 = {m: [] for m in methods}
    cpu = {m: [0.0, 0.0] for m in methods}
    extra = {m: [] for m in methods}
    for seed in seeds:
        train = torch.from_numpy(negative_binomial_mixture(args.train_size, PAPER_MIXTURE, seed=seed))
        for method in methods:
            samples, fit_s, sample_s = run_method(method, train, args, seed)
            w1[method].append(float(wasserstein_distance(samples, test)))
            cpu[method][0] += fit_s
            cpu[method][1] += sample_s
            extra[method].append({"mean": float(samples.mean()), "max": int(samples.max()),
                                  "train_max": int(train.max()), "zeros": float((samples == 0).mean())})
            print(f"seed {seed} {method}: W1 {w1[method][-1]:.3f} (sample mean {samples.mean():.2f}, max "
                  f"{int(samples.max())}, train max {int(train.max())}; CPU {fit_s:.0f} s train, {sample_s:.0f} s "
                  "sample)", flush=True)
    names = {"jump": f"JUMP (jump, lambda = {args.scale:g}), bridge", "blackout": "Blackout, N = train max, bridge",
             "gaussian": "Gaussian DDPM, rounded"}
    header = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | train CPU s | sample CPU s |"
    lines = [header, "|---|" + "---|" * (args.seeds + 3)]
    for method in methods:
        v = np.array(w1[method])
        lines.append(f"| {names[method]} | " + " | ".join(f"{x:.3f}" for x in v)
                     + f" | {v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else float('nan'):.3f} | "
                     f"{cpu[method][0]:.0f} | {cpu[method][1]:.0f} |")
    if args.exact_row:
        exact = [float(wasserstein_distance(exact_denoiser_samples(args, 30_000 + s), test)) for s in seeds]
        e = np.array(exact)
        lines.append("| JUMP sampler, exact denoiser (no training) | " + " | ".join(f"{x:.3f}" for x in e)
                     + f" | {e.mean():.3f} ± {e.std(ddof=1) if len(e) > 1 else float('nan'):.3f} | - | - |")
    f = np.array(floor)
    lines.append("| floor (held-out vs held-out) | " + " | ".join(f"{x:.3f}" for x in f)
                 + f" | {f.mean():.3f} ± {f.std(ddof=1) if len(f) > 1 else float('nan'):.3f} | - | - |")
    summary = ""
    for other, label in (("gaussian", "the Gaussian DDPM"), ("blackout", "Blackout (N = train max)")):
        if "jump" in w1 and other in w1:
            wins = sum(j < o for j, o in zip(w1["jump"], w1[other]))
            summary += f"JUMP beats {label} in {wins}/{len(seeds)} seeds. "
    settings = (f"{args.train_size} training / {args.test_size} held-out draws, {args.num_samples} samples, "
                f"{args.steps} steps x batch {args.batch}, Adam lr {args.lr}, {args.sample_steps} sampling steps, "
                f"proposal logistic({args.proposal_loc:g}, {args.proposal_scale:g}), sampling grid {args.grid}; "
                "W1 to the "
                "held-out draws")
    table = "\n".join(lines)
    text = f"`{command}`\n\n{settings}\n\n{table}\n\n{summary.strip()}\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({
        "command": command, "args": vars(args), "w1": w1, "floor": floor,
        "exact_denoiser": exact if args.exact_row else None, "cpu_seconds": cpu, "samples": extra,
        "summary": summary.strip(), "seeds": seeds, "torch": torch.__version__, "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=2) + "\n")


if __name__ == "__main__":
    main()
