"""``ddiff sample``: samples of a trained run, with conditioning, guidance and any sampler's options."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_count, check_sample_sizes, sample_stem, sampler_options
from .conditioning import conditioning_from_args, conditioning_suffix


def ddpd_networks(args: argparse.Namespace, run, device: str) -> dict:
    """The ddpd sampler's extra networks named on the command line: --planner and --masked-denoiser."""
    if args.planner is None and args.masked_denoiser is None:
        return {}
    from ..config import to_dict
    from ..pipeline import load_run
    from ..planner import load_planner

    name = args.sampler or run.config.sample.sampler
    flag = "--planner" if args.planner is not None else "--masked-denoiser"
    if name != "ddpd":
        raise ValueError(f"{flag} is an option of the ddpd sampler, got sampler {name!r}; add --sampler ddpd")
    options = {}
    if args.planner is not None:
        options["planner"] = load_planner(args.planner, run)
    if args.masked_denoiser is not None:
        masked = load_run(args.masked_denoiser, args.checkpoint, device, args.allow_data_change)
        if run.process.name != "uniform" or masked.process.name != "masking":
            raise ValueError(f"--masked-denoiser pairs a uniform-noise run with a masking run of the same data, got "
                             f"{run.process.name!r} and {masked.process.name!r}")
        if to_dict(masked.config)["data"] != to_dict(run.config)["data"]:
            raise ValueError(f"--masked-denoiser {args.masked_denoiser} was trained on other data than "
                             f"{args.run_dir} (their data sections differ)")
        options["masked_denoiser"] = masked.denoiser
    return options


def cmd_sample(args: argparse.Namespace) -> int:
    from ..builders import build_sampler_from
    from ..distributed import sample_sharded, setup
    from ..pipeline import generate_samples, load_run, save_samples, write_json
    from ..runs.atomic_io import user_dir

    ctx, device = setup(args.device)  # under torchrun the samples are split over the ranks
    run = load_run(args.run_dir, args.checkpoint, str(device), args.allow_data_change)
    if getattr(run.denoiser, "block_size", None) is not None:
        from .sample_blocks import cmd_sample_blocks

        return cmd_sample_blocks(args, run, ctx)
    if args.max_length is not None or args.eos is not None or not args.kv_cache or args.batch_invariant:
        raise ValueError("--max-length, --eos, --no-cache and --batch-invariant are options of block-diffusion runs "
                         "(model.block_size)")
    options = {**sampler_options(args), **ddpd_networks(args, run, str(device))}
    sampler = build_sampler_from(run.config, args.sampler, args.steps, options)
    num = run.config.sample.num_samples if args.num is None else args.num
    batch_size = run.config.sample.batch_size if args.batch_size is None else args.batch_size
    check_count(num, "--num-samples" if args.num is not None else "sample.num_samples")
    check_count(batch_size, "--batch-size" if args.batch_size is not None else "sample.batch_size")
    check_sample_sizes(run, num, batch_size, "--num-samples", "--batch-size")   # before anything is allocated
    progress = not args.no_progress and ctx.is_main
    conditioning = conditioning_from_args(args, run)
    conditioning.check(run)       # one-line errors before any sampling
    samples = sample_sharded(ctx, lambda n, seed: generate_samples(run, sampler, n, batch_size, seed, progress,
                                                                   conditioning),
                             num, tuple(run.dataset.site_shape), args.seed)
    if not ctx.is_main:
        return 0
    out = user_dir(args.out) if args.out else user_dir(args.run_dir) / "samples"  # links inside RUN_DIR refused
    extras = ("-planner" if args.planner else "") + ("-masked" if args.masked_denoiser else "")
    stem = sample_stem(sampler, args.seed, extras) + conditioning_suffix(conditioning, run.denoiser.num_classes or 0)
    paths = save_samples(samples, run, out, stem=stem)
    paths["json"] = str(out / f"{stem}.json")
    record = sampler.config()
    for key in ("planner", "masked_denoiser"):
        if getattr(args, key):
            record[key] = str(Path(getattr(args, key)).resolve())
    if conditioning.classes is not None or conditioning.known is not None:
        record["conditioning"] = {"classes": conditioning.classes, "guidance": conditioning.guidance,
                                  "infill_sites": None if conditioning.known is None else int(conditioning.known.sum())}
        if conditioning.classifier is not None:
            record["conditioning"].update(classifier=str(Path(args.classifier).resolve()),
                                          guidance_form=conditioning.guidance_form)
    cost = {"network_calls_last_batch": sampler.network_calls, "nfe_last_batch": sampler.nfe}
    cache = getattr(sampler, "cache_state", None)
    if cache is not None:       # an approximate cache: its work, in whole-network positions (docs/samplers.md)
        cost["positions_evaluated_last_batch"] = cache.positions_evaluated
    write_json(out / f"{stem}.json", {"sampler": record, "num_samples": num, "seed": args.seed,
                                      "batch_size": batch_size, **cost,
                                      "run_dir": str(Path(args.run_dir).resolve()),
                                      "checkpoint": str(run.checkpoint), "files": dict(paths)})
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
