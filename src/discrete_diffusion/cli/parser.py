"""The parser tree of ``ddiff``: every subcommand and its options, in one place."""

from __future__ import annotations

import argparse

from .. import __version__
from .posterior import add_posterior_parser


def _datasets_help() -> str:
    from ..data import DATASETS
    from ..processes import PROCESSES
    from ..samplers import SAMPLERS
    from ..schedules import SCHEDULES
    return (f"datasets: {', '.join(sorted(DATASETS))}\nprocesses: {', '.join(sorted(PROCESSES))}\n"
            f"schedules: {', '.join(sorted(SCHEDULES))}\nsamplers: {', '.join(sorted(SAMPLERS))}")


def _add_sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, help="sampler name (default: the run's sample.sampler)")
    p.add_argument("--steps", type=int, default=None,
                   help="number of sampler steps, at most 1000000 (default: sample.steps; exact samplers ignore it)")
    p.add_argument("--temperature", type=float, default=None, help="divide log p(x0 | x_t) by this (> 0)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling on p(x0 | x_t), in (0, 1]")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most probable x0 values (k >= 1; 0 = off)")
    p.add_argument("--cache", action="store_true", default=None,
                   help="reuse predictions of rows whose x_t did not change (masking only; approximate with a "
                        "trained network, which is conditioned on the noise level)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sampler option, repeatable; a number is a number (1e-3 too), else YAML: e.g. "
                        "-o theta=0.4, "
                        "-o multi_jump=first, -o eta=0.05 -o strategy=rescale, -o final_denoise=false")


def _add_companion_options(parser: argparse.ArgumentParser, run_help: str, name: str) -> None:
    """The arguments shared by train-planner and train-classifier (a network trained for a run, into its own
    run-like directory, default RUN_DIR/NAME)."""
    parser.add_argument("run_dir", help=run_help)
    parser.add_argument("overrides", nargs="*", help="model.key=value and train.key=value overrides")
    parser.add_argument("--out", default=None, help=f"output folder (default: RUN_DIR/{name})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training in --out from its latest checkpoint (config from "
                             "--out/config.yaml plus overrides, e.g. a larger train.steps)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N; other than auto it replaces train.device (default: the "
                             "config's train.device)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddiff", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Exact continuous-time diffusion models on discrete state spaces (Blackout, and more).",
        epilog="Run `ddiff COMMAND --help` for each command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo",
                          help="train Blackout on the bundled digits, sample, and evaluate (about 5 min on CPU)",
                          description="Train a Blackout diffusion model on scikit-learn's 8x8 digits (17 levels, "
                                      "1350/150/297 train/val/test split), draw a sample grid with the exact bridge "
                                      "sampler, and report the test NLL bound in bits per dimension. Writes "
                                      "samples.png, samples.npy and metrics.json into --out.")
    demo.add_argument("--out", default="ddiff-demo", help="output folder (default: ./ddiff-demo)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default 1500)")
    demo.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    train = sub.add_parser("train", help="train a model from a config file and key=value overrides",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Train a model. The config is built from defaults, then --config FILE "
                                       "(YAML), then overrides such as train.steps=1000 data.name=array "
                                       "data.path=x.npy. The resolved config, metrics.jsonl, checkpoints and "
                                       "sample grids go into --out. process.schedule defaults to the process's "
                                       "grid: blackout for process.name=blackout, log-linear for masking, uniform "
                                       "and matrix; a schedule you set is kept. Ctrl-C stops training; resume "
                                       "from the last checkpoint with --resume.",
                           epilog=_datasets_help())
    train.add_argument("overrides", nargs="*", help="section.key=value overrides (sections: data, process, model, "
                                                     "train, sample, evaluate)")
    train.add_argument("--config", default=None, help="YAML config file")
    train.add_argument("--out", required=True, help="run directory to create (or resume with --resume)")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")

    sample = sub.add_parser("sample", help="draw samples from a trained run",
                            description="Draw samples from RUN_DIR's EMA weights; writes an .npy array "
                                        "(N, *sites), a .json record of the sampler and its options and, for "
                                        "images, a PNG grid, named {sampler}_{steps}steps_seed{seed}.{npy,json,png} "
                                        "(e.g. bridge_200steps_seed0.npy), or {sampler}_seed{seed}.* for exact "
                                        "samplers, which take no steps (exact_seed0.npy); ddpd adds -planner / "
                                        "-masked to {sampler} with --planner / --masked-denoiser; conditioning "
                                        "adds _class{C} (_classes for all classes, _classes0-1 for a list), "
                                        "_g{gamma} and _infill.",
                            epilog=_datasets_help(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sample.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    _add_sample_options(sample)
    sample.add_argument("--num-samples", "--num", dest="num", type=int, default=None,
                        help="number of samples (default: sample.num_samples); under torchrun spell it --num-samples "
                             "(torchrun reads --num as its own --numa-binding)")
    sample.add_argument("--batch-size", type=int, default=None, help="samples per batch")
    sample.add_argument("--seed", type=int, default=0, help="random seed in 0..2^62 (same seed, same samples)")
    sample.add_argument("--out", default=None, help="output folder (default: RUN_DIR/samples)")
    sample.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which weights")
    sample.add_argument("--planner", default=None, metavar="DIR",
                        help="ddpd sampler on uniform noise: a planner trained by `ddiff train-planner` (its output "
                             "folder, e.g. RUN_DIR/planner) instead of the planner derived from the denoiser")
    sample.add_argument("--masked-denoiser", default=None, metavar="RUN",
                        help="ddpd sampler on uniform noise: a masking-process run of the same data whose denoiser "
                             "fills the sites the planner calls noise (DDPD's pairing; docs/samplers.md)")
    sample.add_argument("--class", dest="classes", action="append", default=None, metavar="C",
                        help="class-conditional runs: the class of the samples; repeat it or give a list (3,5) to "
                             "cycle over rows, or 'all' for one class per row cycling through every class")
    sample.add_argument("--guidance", type=float, default=None, metavar="GAMMA",
                        help="classifier-free guidance scale with --class: 0 unconditional, 1 conditional (default), "
                             "> 1 sharper (docs/guidance.md); with --classifier the classifier guidance scale")
    sample.add_argument("--classifier", default=None, metavar="DIR",
                        help="classifier guidance on the reverse rates with a classifier from `ddiff train-classifier` "
                             "(e.g. RUN_DIR/classifier), towards --class; samplers tau-leaping, euler (exact: masking)")
    sample.add_argument("--guidance-form", default="exact", choices=["exact", "taylor"],
                        help="with --classifier: exact (one classifier call per candidate move) or taylor (one "
                             "gradient, first order; one-hot input processes)")
    sample.add_argument("--infill", default=None, metavar="KNOWN.npy",
                        help="infilling: an .npy of the run's site shape with the known values (used with --mask)")
    sample.add_argument("--mask", default=None, metavar="MASK.npy",
                        help="infilling: an .npy of the run's site shape, true (1) where --infill's value is known")
    sample.add_argument("--prompt", default=None, metavar="TEXT",
                        help="text runs: a template, each '_' a blank to fill, shorter than seq_len = blanks after; "
                             "block-diffusion runs (model.block_size): clean context the samples continue (BPE runs: "
                             "tokenised by the run's tokenizer)")
    sample.add_argument("--no-cache", dest="kv_cache", action="store_false",
                        help="block-diffusion runs: recompute the context at every network call instead of the exact "
                             "KV cache (same samples, slower)")
    sample.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="block-diffusion runs: tokens per sample, prompt included (default seq_len; longer "
                             "samples slide the context window)")
    sample.add_argument("--eos", default=None, metavar="SYMBOL",
                        help="block-diffusion runs: stop a sample at this symbol (a vocabulary character or a token "
                             "id; default the dataset's EOS if it has one); the rest of the row is padding")
    sample.add_argument("--batch-invariant", action="store_true",
                        help="block-diffusion runs: decode each sample alone with its own generator (seed + index), so "
                             "a sample never depends on the others in its batch (slower)")
    sample.add_argument("--allow-data-change", action="store_true",
                        help="use the data even if its checksum differs from the one recorded at training (warns)")
    sample.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    sample.add_argument("--no-progress", action="store_true", help="hide progress bars")

    evaluate = sub.add_parser("evaluate", help="test NLL upper bound in bits per dimension, or sample quality",
                              description="Estimate the negative ELBO of a data split in bits per dimension, "
                                          "with its standard error over examples. With --samples PATH (an .npy "
                                          "file or a folder of them from `ddiff sample`), or --sampler / --steps / "
                                          "--num-samples (samples drawn now), report sample-quality metrics beside "
                                          "those of held-out real data of --split, and write "
                                          "RUN_DIR/quality/STEM.json (docs/quality.md).")
    evaluate.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"],
                          help="data split (likelihood), or the split of the real reference data (sample quality)")
    evaluate.add_argument("--samples", default=None, metavar="PATH",
                          help="sample quality of an .npy file or of each .npy file in a folder")
    _add_sample_options(evaluate)
    evaluate.add_argument("--num-samples", dest="num", type=int, default=None,
                          help="sample quality of this many samples drawn now (default: sample.num_samples)")
    evaluate.add_argument("--t-samples", type=int, default=None, help="importance draws of t per example")
    evaluate.add_argument("--judge-steps", type=int, default=None, metavar="N",
                          help="text sample quality: training steps of the AR judge (default 800; docs/quality.md)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="examples (or samples drawn) per batch")
    evaluate.add_argument("--seed", type=int, default=0, help="random seed in 0..2^62 (also of samples drawn now)")
    evaluate.add_argument("--checkpoint", default="best", choices=["best", "latest"], help="which weights")
    evaluate.add_argument("--json", action="store_true",
                          help="print the result as JSON (key nll_bits_per_dim; sample quality: the quality record)")
    evaluate.add_argument("--allow-data-change", action="store_true",
                          help="evaluate even if a data file's checksum differs from the one recorded at training "
                               "(warns); without it such a run is refused")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")

    planner = sub.add_parser("train-planner", help="train a DDPD planner network for a uniform-noise run",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Train a planner (P(site is noise | x_t), binary cross-entropy on draws of "
                                         "the forward process) for the ddpd sampler, on RUN_DIR's data and schedule. "
                                         "The run's model and train sections are the planner's unless overridden "
                                         "(model.* and train.* only, e.g. model.depth=2 train.steps=500). It trains "
                                         "with `ddiff train`'s loop into a run-like directory (config.yaml, data.json, "
                                         "metrics.jsonl, checkpoints/, best/), so --resume, torchrun and "
                                         "train.precision=bf16 work as for `ddiff train`; at the end it writes "
                                         "planner.safetensors (the best EMA weights) and metrics.json (validation "
                                         "BCE, and that of the planner derived from the run's denoiser on the same "
                                         "draws). Ctrl-C stops training; continue with --resume.",
                             epilog="then: ddiff sample RUN_DIR --sampler ddpd --planner RUN_DIR/planner")
    _add_companion_options(planner, "a run directory of a uniform-noise model (`ddiff train process.name=uniform`)",
                           "planner")

    clf = sub.add_parser("train-classifier", help="train a noisy classifier p(c | x_t) for classifier guidance",
                         description="Train a noise-conditioned classifier (cross-entropy on (x_t ~ q_t(. | x0), c), "
                                     "t ~ U(0, 1) through the run's schedule) on RUN_DIR's labelled data. The run's "
                                     "model and train sections are the classifier's unless overridden (model.* and "
                                     "train.* only). It trains with `ddiff train`'s loop into a run-like directory "
                                     "(config.yaml, data.json, metrics.jsonl, checkpoints/, best/), so --resume, "
                                     "torchrun and train.precision=bf16 work as for `ddiff train`; at the end it "
                                     "writes classifier.safetensors (the best EMA weights) and metrics.json "
                                     "(validation accuracy and cross-entropy at a few noise levels). Ctrl-C stops "
                                     "training; continue with --resume.",
                         epilog="then: ddiff sample RUN_DIR --sampler tau-leaping --class 3 --classifier "
                                "RUN_DIR/classifier --guidance 2")
    _add_companion_options(clf, "a run directory whose data have class labels", "classifier")

    report = sub.add_parser("report", help="write a PNG and an HTML page: samples, training curves, sample quality",
                            description="Summarise RUN_DIR in one PNG and a self-contained HTML page (the PNG "
                                        "inline, tables as text): a grid of the newest RUN_DIR/samples/*.npy "
                                        "(decoded text for text and DNA runs), loss and bits/dim against step from "
                                        "metrics.jsonl (its last 32 MiB; corrupt lines and NaN skipped and counted), "
                                        "and, if RUN_DIR/quality/*.json exist (`ddiff evaluate --samples`), a "
                                        "quality-vs-NFE curve per sampler and a table of every metric. Missing "
                                        "parts are listed in the report. See docs/report.md.")
    report.add_argument("run_dir", help="a directory written by `ddiff train` or `ddiff demo`")
    report.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report)")
    report.add_argument("--samples", default=None, metavar="PATH",
                        help="the samples to show: a .npy, or a .txt of decoded text (default: the newest "
                             "RUN_DIR/samples/*.npy)")
    report.add_argument("--metric", default=None, metavar="NAME",
                        help="quality metric of the NFE chart (default: the first metric common to all "
                             "RUN_DIR/quality/*.json)")
    add_posterior_parser(sub, _add_sample_options)
    return parser
