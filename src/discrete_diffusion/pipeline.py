"""Rebuild a trained model from its run directory alone, then sample from it or evaluate it.

Weights come from safetensors (EMA weights), metadata from JSON and YAML: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .builders import build_dataset, build_denoiser, build_process_from, build_proposal, build_schedule_from, resolve_device
from .config import MODEL_SECTIONS, load_config, to_dict
from .data import DiscreteDataset
from .data.manifest import check_data_manifest
from .data.text import decode_text
from .data.tokenizer import BpeTokenizer, run_tokenizer_json
from .denoiser import NetworkDenoiser
from .evaluate.likelihood import LikelihoodResult, bits_per_char, evaluate_nll
from .processes import ForwardProcess
from .samplers import Sampler
from .schedules import Schedule
from .train.atomic_io import atomic_write, atomic_write_text, ensure_dir
from .train.checkpoint import find_latest_checkpoint, load_model_weights
from .visualize import save_image_grid


@dataclass
class LoadedRun:
    config: DictConfig
    dataset: DiscreteDataset
    process: ForwardProcess
    schedule: Schedule
    denoiser: NetworkDenoiser
    device: torch.device
    checkpoint: Path


def find_weights(run_dir: Path, which: str = "best") -> Path:
    """The checkpoint to use: "best" (lowest validation NLL; falls back to latest) or "latest"."""
    if which not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    found = find_latest_checkpoint(run_dir / "best") if which == "best" else None
    found = found or find_latest_checkpoint(run_dir / "checkpoints")
    if found is None:
        raise ValueError(f"no complete checkpoint under {run_dir} (expected best/ or checkpoints/); "
                         f"train one with `ddiff train --out {run_dir}`")
    return found


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto",
             allow_data_change: bool = False) -> LoadedRun:
    """Rebuild config, data, process, schedule and the EMA denoiser from ``run_dir``.

    The data are checked against the checksums recorded at training time (``data.json``): a changed file
    raises :class:`~discrete_diffusion.data.manifest.DataChangedError` unless ``allow_data_change``, which
    warns instead (see :func:`~discrete_diffusion.data.manifest.check_data_manifest`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    dev = resolve_device(device)
    dataset = build_dataset(config, run_tokenizer_json(run_dir) if config.data.tokenizer == "bpe" else None)
    check_data_manifest(run_dir, dataset, allow_change=allow_data_change)
    process = build_process_from(config, dataset.num_states)
    denoiser = build_denoiser(config, process, dataset.site_shape)
    checkpoint = find_weights(run_dir, which)
    full = to_dict(config)  # a config.yaml edited after training must still describe the saved model
    load_model_weights(checkpoint, denoiser, use_ema=True, expected_config={k: full[k] for k in MODEL_SECTIONS})
    denoiser.to(dev).eval()
    return LoadedRun(config, dataset, process, build_schedule_from(config), denoiser, dev, checkpoint)


def generate_samples(run: LoadedRun, sampler: Sampler, num_samples: int, batch_size: int = 256, seed: int = 0,
                     progress: bool = True) -> torch.Tensor:
    """Draw ``num_samples`` samples (N, *sites) long on CPU, deterministically for a seed."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    generator = torch.Generator(device=run.device).manual_seed(seed)
    chunks = []
    steps = sampler.num_steps * math.ceil(num_samples / batch_size)
    with tqdm(total=steps, desc=f"sample ({sampler.name})", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            x = sampler.sample(run.process, run.denoiser, run.schedule, (n, *run.dataset.site_shape), generator,
                               run.device, callback=lambda k, total, _x: bar.update(1) if total else None)
            chunks.append(x.cpu())
    return torch.cat(chunks)


def save_samples(samples: torch.Tensor, run: LoadedRun, out_dir: Path, stem: str = "samples") -> dict[str, str]:
    """Write samples as ``.npy`` (and a PNG grid for images); return the paths written. ``out_dir`` is created;
    it must not be a symbolic link, and every file is written atomically without following links
    (train/atomic_io.py)."""
    ensure_dir(out_dir)
    npy = out_dir / f"{stem}.npy"
    array = samples.numpy()
    atomic_write(npy, lambda f: np.save(f, array))
    paths = {"npy": str(npy)}
    if run.dataset.kind == "image":
        paths["png"] = str(save_image_grid(samples[:256], run.dataset.num_states, out_dir / f"{stem}.png"))
    vocab = run.dataset.metadata.get("vocab")
    if vocab is not None:  # text and DNA: one decoded sample per line
        text = out_dir / f"{stem}.txt"
        atomic_write_text(text, "".join(line.replace("\n", "\\n") + "\n" for line in decode_text(samples, vocab)))
        paths["txt"] = str(text)

    tokenizer = run.dataset.metadata.get("tokenizer_json")
    if tokenizer is not None:  # BPE text: one decoded sample per line, newlines and carriage returns escaped
        from .train import atomic_io

        lines = "".join(line.replace("\n", "\\n").replace("\r", "\\r") + "\n"
                        for line in BpeTokenizer(tokenizer).decode_rows(samples))
        text = out_dir / f"{stem}.txt"
        atomic_io.atomic_write(text, lambda f: f.write(lines.encode("utf-8")))
        paths["txt"] = str(text)
    return paths


def evaluate_run(run: LoadedRun, split: str = "test", t_samples: int | None = None, batch_size: int | None = None,
                 seed: int = 0, progress: bool = True) -> LikelihoodResult:
    """NLL upper bound of a data split in bits per dimension."""
    data = run.dataset.split(split)
    t_samples = run.config.evaluate.t_samples if t_samples is None else t_samples
    batch_size = run.config.evaluate.batch_size if batch_size is None else batch_size
    if t_samples < 1 or batch_size < 1:
        raise ValueError(f"t_samples and batch_size must be >= 1, got {t_samples} and {batch_size}")
    generator = torch.Generator(device=run.device).manual_seed(seed)
    with tqdm(total=data.shape[0], desc=f"evaluate ({split})", disable=not progress, dynamic_ncols=True) as bar:
        return evaluate_nll(run.process, run.denoiser, run.schedule, data, build_proposal(run.config), t_samples,
                            batch_size, generator, run.device, progress=bar.update)


def per_char_fields(dataset: DiscreteDataset, split: str, result: LikelihoodResult) -> dict[str, float]:
    """For a BPE-tokenised text run, the NLL of ``split`` per token and per character (empty dict otherwise):
    ``nll_bits_per_token`` (= ``nll_bits_per_dim``), ``nll_bits_per_char`` = bits/token * T / C with T the
    tokens of the split's windows and C the characters they decode to (``metadata["window_chars"]``), their
    standard errors, ``num_tokens`` and ``num_chars``."""
    if dataset.metadata.get("tokenizer") is None:
        return {}
    tokens, chars = dataset.split(split).numel(), int(dataset.metadata["window_chars"][split])
    return {"nll_bits_per_token": result.nll_bits_per_dim,
            "nll_bits_per_token_stderr": result.nll_bits_per_dim_stderr,
            "nll_bits_per_char": bits_per_char(result.nll_bits_per_dim, tokens, chars),
            "nll_bits_per_char_stderr": bits_per_char(result.nll_bits_per_dim_stderr, tokens, chars),
            "num_tokens": tokens, "num_chars": chars}


def likelihood_unit(dataset: DiscreteDataset) -> str:
    """How bits per site read for a dataset: per token (BPE text), per base (DNA), per character (text), else
    per dimension."""
    if dataset.metadata.get("tokenizer") is not None:
        return "bits/token"
    vocab = dataset.metadata.get("vocab")
    if vocab is None:
        return "bits/dim"
    return "bits/base" if list(vocab) == list("ACGT") else "bits/char"


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON, atomically and never through a symbolic link."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
