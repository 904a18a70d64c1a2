"""``ddiff posterior RUN_DIR``: samples of x0 ~ p(x0 | y) from a trained run given a measurement y (issue 13).

The prior p(x0) is the run's model; the measurement p(y | x0) an operator of ``posterior/operators.py`` built from
the flags (--operator inpaint|channel|thinning|downsample|parity and its parameters; cli/posterior_inputs.py reads
every input); the method one of
``posterior.POSTERIOR_METHODS`` (--method, its own options as --method-option KEY=VALUE, checked against
``method_options``). y comes from a file (--y, read by the pickle-free bounded reader) or is simulated from clean
data (--simulate-from X.npy, --test-index N) with the operator's ``simulate`` and the seed. Each of the N
observations gets --num samples; outputs go to --out (default RUN_DIR/posterior/STEM/): samples.npy (N, S, *sites),
mean.npy (N, *sites) (the posterior mean), y.npy (the y used), truth.npy (simulated runs), grid.png (image runs:
observation / samples / posterior mean / truth) and posterior.json (the configuration, cost and, when the clean
data are known, per-pixel accuracy and PSNR). Every write goes through runs/atomic_io.py. Bad input raises a
one-line ValueError (``ddiff`` prints it and returns 2) before anything is written. docs/posterior.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .posterior_inputs import (
    CLI_OPERATORS,
    HALF_MASKS,
    build_cli_operator,
    check_method,
    method_options_from_args,
    name_part,
    observed_mask,
    read_observation,
)

if TYPE_CHECKING:
    import torch

    from ..posterior import MeasurementOperator

#: Columns (observations) and sample rows shown in the picture grid.
GRID_COLUMNS, GRID_SAMPLES = 8, 6


def add_posterior_parser(sub, add_sample_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``ddiff posterior`` on the subparsers ``sub`` (cli.py owns the sampler flags)."""
    from ..posterior import POSTERIOR_METHODS

    p = sub.add_parser(
        "posterior", help="posterior samples given a measurement y (inpainting, noisy channel, thinning, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw samples of x0 ~ p(x0 | y) with RUN_DIR's model as the prior and a measurement y of x0. y "
                    "comes from --y Y.npy (one observation of the run's measurement shape, or N of them stacked), or "
                    "is simulated from clean data (--simulate-from X.npy or --test-index) with the seed. Each "
                    "observation gets --num samples. Writes samples.npy (N, num, *sites), mean.npy, y.npy, "
                    "truth.npy (simulated), grid.png (image runs: observation / samples / posterior mean / truth) "
                    "and posterior.json into --out (default RUN_DIR/posterior/STEM). docs/posterior.md",
        epilog="methods: " + ", ".join(sorted(POSTERIOR_METHODS)) + " (exact-guidance needs a table prior, not a "
               "run)\nexamples:\n  ddiff posterior RUN --operator thinning --p 0.3 --test-index 0:8 --method dps\n"
               "  ddiff posterior RUN --operator inpaint --mask top-half --test-index 0:8 --method infill "
               "(masking runs)\n  ddiff posterior RUN --operator inpaint --y known.npy --mask mask.npy --method dps")
    p.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    p.add_argument("--operator", required=True, metavar="NAME", help=f"the measurement: {', '.join(CLI_OPERATORS)}")
    p.add_argument("--method", default=None, metavar="NAME",
                   help="posterior method: dps (any run, biased), infill (masking runs, inpaint; exact given the "
                        "model), split-gibbs (annealed split Gibbs; masking runs: operators that factorise)")
    p.add_argument("--method-option", "-m", dest="method_options", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable; a number is a number (1e-3 too), else YAML: e.g. -m gamma=2, "
                        "-m mc_samples=32 (dps, at most 65536), "
                        "-m iterations=100 -m t_min=0.01 (split-gibbs); docs/posterior.md lists them")
    source = p.add_argument_group("the measurement y (give one of --y, --simulate-from, --test-index)")
    source.add_argument("--y", default=None, metavar="Y.npy",
                        help="the observation(s): the run's measurement shape, or (N, *that) for N observations; "
                             "inpaint: the values, with --mask MASK.npy or -1 at unobserved sites")
    source.add_argument("--simulate-from", default=None, metavar="X.npy",
                        help="clean data (*sites) or (N, *sites): y is drawn from the operator with --seed")
    source.add_argument("--test-index", default=None, metavar="I",
                        help="clean data from the run's test split: an index, a list 0,3,7, or a range 0:8")
    source.add_argument("--mask", default=None, metavar="MASK.npy",
                        help="inpaint: true (1) where a site is observed, an .npy of the run's site shape (or N of "
                             f"them), or one of {', '.join(HALF_MASKS)} (first/last: flattened row-major order)")
    params = p.add_argument_group("operator parameters")
    params.add_argument("--eps", type=float, default=None, help="channel: the replacement probability in [0, 1]")
    params.add_argument("--p", type=float, default=None, help="thinning: the detection probability in (0, 1]")
    params.add_argument("--block", default=None, metavar="B",
                        help="downsample: the block size, one integer for every axis or one per axis (2 or 2,2)")
    params.add_argument("--groups", default=None, metavar="FILE.json",
                        help="parity: a JSON list of site-index lists (flattened row-major), e.g. [[0, 1], [2, 5]]")
    params.add_argument("--flip", type=float, default=None, help="parity: probability that a sum is misreported")
    add_sample_options(p)
    for action in p._actions:
        if action.dest == "sampler":
            action.help = "sampler name (default: tau-leaping, which every method takes)"
        elif action.dest == "steps":
            action.help = "number of sampler steps (default: the run's sample.steps)"
    p.add_argument("--num-samples", "--num", dest="num", type=int, default=8, help="samples per observation (8)")
    p.add_argument("--batch-size", type=int, default=64, help="samples drawn per sampler call (64)")
    p.add_argument("--seed", type=int, default=0, help="random seed in 0..2^62 (also of simulated measurements)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/posterior/STEM)")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which weights")
    p.add_argument("--allow-data-change", action="store_true",
                   help="use the data even if its checksum differs from the one recorded at training (warns)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ----- sampling ---------------------------------------------------------------------------------------------------
class CountingDenoiser:
    """The run's denoiser, counting batched calls and rows evaluated (every call a method makes, also the
    likelihood evaluations of DPS that bypass the sampler's own counter)."""

    def __init__(self, denoiser) -> None:
        self.denoiser, self.calls, self.rows = denoiser, 0, 0

    def __call__(self, xt, lam):
        self.calls += 1
        self.rows += int(xt.shape[0])
        return self.denoiser(xt, lam)


def draw_posterior(method: str, run, operator: "MeasurementOperator", y: "torch.Tensor", num: int, batch_size: int,
                   sampler, seed: int, options: dict, progress: bool = False) -> tuple["torch.Tensor", dict]:
    """``num`` samples of each of the N observations y (N or 1, *y_sites) by ``method``: (N', num, *sites) long on
    CPU (N' = y's rows), drawn in batches of ``batch_size`` rows, and the cost {network_calls, network_rows,
    seconds}."""
    import torch
    from tqdm.auto import tqdm

    from ..posterior import posterior_sample

    sites = tuple(run.dataset.site_shape)
    rows = y.shape[0] * num
    generator = torch.Generator(device=run.device).manual_seed(seed)
    counter = CountingDenoiser(run.denoiser)
    batches = math.ceil(rows / batch_size)
    chunks = []
    start_time = time.time()
    with tqdm(total=None, desc=f"posterior ({method})", disable=not progress, dynamic_ncols=True) as bar:
        def tick(k: int, total: int, _x) -> None:      # a method's own progress: sampler steps, Gibbs iterations
            if total and bar.total != total * batches:
                bar.total = total * batches
            bar.update(1)

        for start in range(0, rows, batch_size):
            n = min(batch_size, rows - start)
            # the observations of rows start..start+n (row r belongs to observation r // num): indexed per batch,
            # so memory grows with the batch, not with --num
            part = y[torch.arange(start, start + n) // num] if y.shape[0] > 1 else y
            x = posterior_sample(method, run.process, counter, run.schedule, operator, part, (n, *sites), sampler,
                                 generator=generator, device=run.device, callback=tick, **options)
            chunks.append(x.cpu())
    samples = torch.cat(chunks).reshape(y.shape[0], num, *sites)
    return samples, {"network_calls": counter.calls, "network_rows": counter.rows,
                     "seconds": round(time.time() - start_time, 2)}


# ----- pictures -----------------------------------------------------------------------------------------------------
def observation_levels(operator: "MeasurementOperator", y: "torch.Tensor", sites: tuple[int, ...],
                       num_states: int) -> tuple["torch.Tensor", "torch.Tensor"] | None:
    """y shown on the data's sites: (levels (N, *sites) long, unobserved (N, *sites) bool); None for parity (its y
    has no site layout). inpaint: the values (unobserved sites flagged); channel: y; thinning: round(y / p)
    clipped to K - 1 (the measurement-only estimate); downsample: each block's mean, rounded."""
    import torch

    top = num_states - 1
    if operator.name == "inpaint":
        return y.clamp_min(0), y < 0
    if operator.name == "channel":
        return y, torch.zeros_like(y, dtype=torch.bool)
    if operator.name == "thinning":
        return torch.round(y.double() / operator.p).clamp(0, top).long(), torch.zeros_like(y, dtype=torch.bool)
    if operator.name == "downsample":
        block = operator._block_for(sites)
        levels = torch.round(y.double() / math.prod(block)).long()
        for axis, b in enumerate(block):
            levels = levels.repeat_interleave(b, dim=axis + 1)
        return levels, torch.zeros_like(levels, dtype=torch.bool)
    return None


def _rgb(levels: "torch.Tensor", flagged: "torch.Tensor | None", num_states: int) -> "torch.Tensor":
    """(n, H, W) or (n, 1|3, H, W) levels as (n, 3, H, W), flagged sites dark red."""
    import torch

    x = levels if levels.dim() == 4 else levels[:, None]
    x = x.expand(-1, 3, -1, -1).clone() if x.shape[1] == 1 else x.clone()
    if flagged is not None:
        f = flagged if flagged.dim() == 4 else flagged[:, None]
        f = f[:, :1].expand(-1, 3, -1, -1) if f.shape[1] == 1 else f
        red = torch.tensor([(num_states - 1) // 2, 0, 0])[None, :, None, None].expand_as(x)
        x = torch.where(f, red, x)
    return x


def posterior_grid(samples: "torch.Tensor", observation: tuple | None, truth: "torch.Tensor | None",
                   num_states: int, columns: int = GRID_COLUMNS, sample_rows: int = GRID_SAMPLES) -> "torch.Tensor":
    """The picture grid's tiles, (rows * columns, 3, H, W) levels, one column per observation (the first
    ``columns``; a single observation is drawn as one row): observation (unobserved sites dark red), up to
    ``sample_rows`` samples, the posterior mean
    (rounded), the clean image when known."""
    import torch

    from ..posterior.metrics import posterior_mean

    n = min(columns, samples.shape[0])
    rows = []
    if observation is not None:
        rows.append(_rgb(observation[0][:n], observation[1][:n], num_states))
    for s in range(min(sample_rows, samples.shape[1])):
        rows.append(_rgb(samples[:n, s], None, num_states))
    rows.append(_rgb(torch.round(posterior_mean(samples[:n])).long(), None, num_states))
    if truth is not None:
        rows.append(_rgb(truth[:n], None, num_states))
    return torch.cat(rows)


def is_picture(run) -> bool:
    """Image runs with sites (H, W) or (1 or 3, H, W) get a picture grid."""
    sites = tuple(run.dataset.site_shape)
    return run.dataset.kind == "image" and (len(sites) == 2 or (len(sites) == 3 and sites[0] in (1, 3)))


# ----- the output folder --------------------------------------------------------------------------------------------
#: The files ddiff posterior writes into its folder.
OUTPUT_FILES = ("samples.npy", "mean.npy", "y.npy", "truth.npy", "grid.png", "posterior.json")


def _file_digest(path: str | None) -> str | None:
    from ..runs.atomic_io import sha256_file

    return None if path is None or not Path(path).is_file() else sha256_file(Path(path))


def posterior_request(args: argparse.Namespace, run, operator: "MeasurementOperator", options: dict, sampler,
                      obs) -> dict:
    """Everything that determines the outputs: the run and checkpoint, the operator and its parameters (the parity
    groups included), the measurement's source as typed (a list 0,3 and a range 0:3 differ) with the SHA-256 of
    every input file (--y, --simulate-from, --mask), the method and its options, the sampler, --num, --batch-size and
    the seed. Its SHA-256 names the default folder and is recorded in posterior.json."""
    return {"run_dir": str(Path(args.run_dir).resolve()), "checkpoint": str(run.checkpoint),
            "operator": operator_record(operator), "method": args.method, "method_options": options,
            "sampler": sampler.config(), "num": args.num, "batch_size": args.batch_size, "seed": args.seed,
            "test_index": None if args.test_index is None else str(args.test_index),
            "y": _file_digest(args.y), "simulate_from": _file_digest(args.simulate_from),
            "mask": None if args.mask is None else (args.mask if args.mask in HALF_MASKS else _file_digest(args.mask)),
            "source": obs.source}


def check_output_dir(out: Path, root: Path | None, digest: str) -> None:
    """Refuse, before any sampling, an output folder that cannot be written or would mix two requests' files: a
    symbolic link or a non-directory on the way from ``root`` (RUN_DIR; None: the --out the user typed, which is
    followed) down to ``out``, a folder whose posterior.json records another request, or an --out holding posterior
    files without a record (ValueError, one line)."""
    from ..runs.atomic_io import UnsafePathError
    from ..runs.json_reader import read_run_json

    rel = () if root is None else out.relative_to(root).parts
    parts = [out] if root is None else [root.joinpath(*rel[:i + 1]) for i in range(len(rel))]
    for part in parts:
        try:
            info = os.lstat(part)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePathError(f"{part} is a symbolic link; refusing to write through it (remove the link or "
                                  "use another output directory)")
        if not stat.S_ISDIR(info.st_mode):
            raise ValueError(f"{part} exists and is not a directory; give --out a folder")
    record_path = out / "posterior.json"
    if os.path.lexists(record_path):
        try:
            record = read_run_json(record_path, 1 << 24, "posterior record")
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("request_sha256") != digest:
            raise ValueError(f"{out} already holds the outputs of another posterior request (its posterior.json "
                             "differs); give another --out or remove that folder")
    elif root is None and any(os.path.lexists(out / name) for name in OUTPUT_FILES):  # the default folder's name
        # holds the request's digest, so files there without a record are this request's, interrupted
        raise ValueError(f"{out} already holds posterior outputs without a posterior.json (an interrupted or other "
                         "request); give another --out or remove that folder")


# ----- the command --------------------------------------------------------------------------------------------------
def operator_record(operator: "MeasurementOperator") -> dict:
    """The operator's name and parameters for the JSON record."""
    record: dict = {"name": operator.name}
    for key in ("eps", "p", "block", "flip", "groups"):
        if hasattr(operator, key):
            value = getattr(operator, key)
            record[key] = [list(g) for g in value] if key == "groups" else list(value) \
                if isinstance(value, tuple) else value
    return record


def operator_tag(operator: "MeasurementOperator") -> str:
    """inpaint, channel-eps0.1, thinning-p0.3, downsample-b2x2, parity-flip0 (the output folder's operator part)."""
    if operator.name == "channel":
        return f"channel-eps{operator.eps:g}"
    if operator.name == "thinning":
        return f"thinning-p{operator.p:g}"
    if operator.name == "downsample":
        return "downsample-b" + "x".join(str(b) for b in operator.block)
    if operator.name == "parity":
        return f"parity-flip{operator.flip:g}"
    return operator.name


def cmd_posterior(args: argparse.Namespace) -> int:
    import numpy as np

    from ..builders import build_sampler_from
    from ..pipeline import load_run, write_json
    from ..posterior.metrics import posterior_mean, sample_scores
    from ..report.grids import save_image_grid
    from ..runs.atomic_io import atomic_write, ensure_dir, unlink_quietly, user_dir
    from .common import check_count, check_sample_sizes, sample_stem, sampler_options

    check_method(args.method)
    options = method_options_from_args(args)
    if args.method == "dps":      # before the sampler is built, so the message says what is wrong
        given = [flag for flag, key in (("--temperature", "temperature"), ("--top-p", "top_p"),
                                        ("--top-k", "top_k"), ("--cache", "cache"))
                 if getattr(args, key) is not None]
        given += [f"-o {item.partition('=')[0]}" for item in args.option
                  if item.partition("=")[0].strip() in ("temperature", "top_p", "top_k", "cache")]
        if given:
            raise ValueError(f"--method dps guides the reverse rates of the run's prior as they are; {given[0]} would "
                             "change that prior, so dps does not take it (nor --temperature, --top-p, --top-k, "
                             "--cache): drop it")
    if args.num < 1 or args.batch_size < 1:
        raise ValueError(f"--num and --batch-size must be >= 1, got {args.num} and {args.batch_size}")
    check_count(args.num, "--num")
    check_count(args.batch_size, "--batch-size")
    run = load_run(args.run_dir, args.checkpoint, args.device, args.allow_data_change)
    if run.process.unbounded:
        raise ValueError(f"ddiff posterior needs a process with a finite number of states; this run's process "
                         f"{run.process.name!r} models counts without a maximum (docs/jump.md)")
    sampler = build_sampler_from(run.config, args.sampler or "tau-leaping", args.steps, sampler_options(args))
    sites = tuple(run.dataset.site_shape)
    observed = observed_mask(args, sites)
    operator = build_cli_operator(args, run)
    obs = read_observation(args, run, operator, observed)
    check_sample_sizes(run, args.num, args.batch_size, "--num", "--batch-size", per_row=int(obs.y.shape[0]))
    request = posterior_request(args, run, operator, options, sampler, obs)
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    extras = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
    mask = f"-mask-{name_part(Path(args.mask).stem)}" if args.mask else ""
    checkpoint = "" if args.checkpoint == "best" else f"_{args.checkpoint}"
    readable = name_part(f"{obs.stem}_{operator_tag(operator)}{mask}_{args.method}{extras}_"
                         f"{sample_stem(sampler, args.seed)}_n{args.num}{checkpoint}")
    stem = f"{readable[:100]}_{digest[:10]}"   # the digest keeps every distinct request apart (issue 19 item 10)
    if args.out:
        out, root = user_dir(args.out), None
    else:
        root = user_dir(args.run_dir)
        out = root / "posterior" / stem                          # no link below RUN_DIR is followed
    check_output_dir(out, root, digest)                          # before any sampling (issue 19 item 11)
    samples, cost = draw_posterior(args.method, run, operator, obs.y, args.num, args.batch_size, sampler, args.seed,
                                   options, progress=not args.no_progress)

    out = ensure_dir(out) if root is None else ensure_dir(out, root)
    check_output_dir(out, root, digest)
    arrays = {"samples": samples.numpy(), "mean": posterior_mean(samples).float().numpy(), "y": obs.y.numpy()}
    if obs.truth is not None:
        arrays["truth"] = obs.truth.numpy()
    for name in OUTPUT_FILES:  # a file this request does not write (truth.npy of an earlier request) goes
        if name.removesuffix(".npy") not in arrays and name not in ("grid.png", "posterior.json"):
            unlink_quietly(out / name)
    files = {}
    for name, array in arrays.items():
        atomic_write(out / f"{name}.npy", lambda f, a=array: np.save(f, a))
        files[name] = str(out / f"{name}.npy")
    if is_picture(run):
        view = observation_levels(operator, obs.y.expand(samples.shape[0], *obs.y.shape[1:]), sites,
                                  run.dataset.num_states)
        tiles = posterior_grid(samples, view, obs.truth, run.dataset.num_states)
        columns = tiles.shape[0] if samples.shape[0] == 1 else min(GRID_COLUMNS, samples.shape[0])  # one: a row
        files["png"] = str(save_image_grid(tiles, run.dataset.num_states, out / "grid.png", nrow=columns))
    record = {"request_sha256": digest, "operator": operator_record(operator), "method": args.method,
              "method_options": options,
              "sampler": sampler.config(), "seed": args.seed, "num_observations": int(samples.shape[0]),
              "samples_per_observation": args.num, "batch_size": args.batch_size,
              "observation": {**obs.source, **({"mask": args.mask} if args.mask else {}),
                              **({"observed_sites": int((obs.y >= 0).sum())} if operator.name == "inpaint" else {})},
              "run_dir": str(Path(args.run_dir).resolve()), "checkpoint": str(run.checkpoint), **cost,
              "files": files}
    if obs.truth is not None:
        record["metrics"] = {"all_sites": _finite(sample_scores(samples, obs.truth, run.dataset.num_states))}
        if operator.name == "inpaint":
            hidden = obs.y < 0
            if bool(hidden.any()):
                record["metrics"]["unobserved_sites"] = _finite(sample_scores(samples, obs.truth,
                                                                              run.dataset.num_states, hidden))
    write_json(out / "posterior.json", record)
    files["json"] = str(out / "posterior.json")
    for name, scores in record.get("metrics", {}).items():
        psnr = "inf" if scores["psnr"] is None else f"{scores['psnr']:.2f} dB"
        print(f"{name}: accuracy of the posterior mean {scores['accuracy']:.4f}, of one sample "
              f"{scores['sample_accuracy']:.4f}, PSNR of the mean {psnr}")
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


def _finite(scores: dict) -> dict:
    """Scores with an infinite PSNR written as null (JSON has no infinity)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in scores.items()}
