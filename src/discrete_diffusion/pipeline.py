"""Sample from and evaluate a loaded run: conditioning (classes, classifier-free and classifier guidance,
infilling), batched generation, saving samples, and the test likelihood by class.

Loading a run lives in :mod:`discrete_diffusion.runs.load`; ``load_run`` / ``LoadedRun`` stay importable
from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .builders import (
    build_proposal,
)
from .data import DiscreteDataset
from .data.text import decode_text
from .data.tokenizer import BpeTokenizer
from .denoiser import ConditionalDenoiser, Denoiser, check_labels
from .guidance import ClassifierFreeDenoiser, check_infill, classifier_guided_sample, infill_sample
from .likelihood import LikelihoodResult, bits_per_char, evaluate_nll
from .report.grids import save_image_grid
from .runs.atomic_io import atomic_write, atomic_write_text, ensure_dir
from .runs.load import LoadedRun, find_weights, load_run, write_json  # noqa: F401  (public names)
from .samplers import Sampler


@dataclass
class Conditioning:
    """What to condition samples on (docs/guidance.md).

    classes: class per row, cycling (row i gets classes[i % len(classes)]); None = no class (a conditional run then
        samples its null class, p(x)). guidance: the classifier-free scale gamma (1 = plain conditional; needs
        classes). known, values: infilling, (*sites) bool and long, the same for every row (None = no infilling).
    classifier: a noisy classifier (``guidance.classifier_train.load_classifier``) for classifier guidance on the
        rates: guidance is then its scale and the run's denoiser gives p(x0 | x_t) (its null class for a conditional
        run); guidance_form: "exact" or "taylor" (docs/guidance.md, "Classifier guidance").
    """

    classes: list[int] | None = None
    guidance: float = 1.0
    known: torch.Tensor | None = None
    values: torch.Tensor | None = None
    classifier: object | None = None
    guidance_form: str = "exact"

    def check(self, run: LoadedRun) -> None:
        """ValueError (one line) for a class unknown to the run, guidance on an unconditional run or without a class,
        or an infilling mask / values whose shape is not the run's sites."""
        classes = run.denoiser.num_classes
        if self.classifier is not None:
            if not self.classes:
                raise ValueError("--classifier needs --class (the class to guide towards)")
            if self.known is not None:
                raise ValueError("--classifier does not combine with infilling (--infill/--mask, --prompt)")
            check_labels(torch.tensor(self.classes), int(self.classifier.num_classes), allow_null=False)
            if not (math.isfinite(self.guidance) and self.guidance >= 0):
                raise ValueError(f"--guidance must be a finite number >= 0, got {self.guidance}")
            return
        if self.classes is not None:
            if not self.classes:
                raise ValueError("--class needs at least one class")
            check_labels(torch.tensor(self.classes), classes, allow_null=False)
        if self.guidance != 1.0:
            if classes == 0:
                raise ValueError("guidance needs a class-conditional run; this run is unconditional (model.num_classes "
                                 "= 0): drop --guidance or train with model.num_classes > 0")
            if self.classes is None:
                raise ValueError("--guidance needs --class (the class to guide towards)")
            if not (math.isfinite(self.guidance) and self.guidance >= 0):
                raise ValueError(f"--guidance must be a finite number >= 0, got {self.guidance}")
        if self.known is not None:
            sites = tuple(run.dataset.site_shape)
            if self.values is None or tuple(self.known.shape) != sites or tuple(self.values.shape) != sites:
                got = None if self.values is None else tuple(self.values.shape)
                raise ValueError(f"infilling mask {tuple(self.known.shape)} and known values {got} must both have the "
                                 f"run's site shape {sites}")
            check_infill(run.process, sites, self.known, self.values)

    def denoiser(self, run: LoadedRun, label: int | None) -> Denoiser:
        """The plain denoiser for one class (None: the run's own, or its null class when conditional)."""
        if label is None:
            return run.denoiser if not run.denoiser.num_classes else \
                ConditionalDenoiser(run.denoiser, run.denoiser.num_classes)
        if self.guidance == 1.0:
            return ConditionalDenoiser(run.denoiser, label)
        return ClassifierFreeDenoiser(run.denoiser, label, self.guidance)


def generate_samples(run: LoadedRun, sampler: Sampler, num_samples: int, batch_size: int = 256, seed: int = 0,
                     progress: bool = True, conditioning: Conditioning | None = None) -> torch.Tensor:
    """Draw ``num_samples`` samples (N, *sites) long on CPU, deterministically for a seed. With ``conditioning``:
    rows cycle through its classes (each class's rows of a batch are drawn by one sampler call, bound to that one
    class, so every sampler works) and its known sites are infilled (``guidance.infill_sample``)."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    cond = conditioning or Conditioning()
    cond.check(run)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    chunks = []
    steps = sampler.num_steps * math.ceil(num_samples / batch_size)
    sites = tuple(run.dataset.site_shape)
    with tqdm(total=steps, desc=f"sample ({sampler.name})", disable=not progress, dynamic_ncols=True) as bar:
        def draw(n: int, label: int | None) -> torch.Tensor:
            tick = lambda k, total, _x: bar.update(1 / len(groups)) if total else None  # noqa: E731
            if cond.classifier is not None:      # guided rates; the denoiser is p(x0 | x_t)
                return classifier_guided_sample(sampler, run.process, cond.denoiser(run, None), run.schedule,
                                                (n, *sites), cond.classifier, label, cond.guidance,
                                                cond.guidance_form, generator, run.device, tick)
            denoiser = cond.denoiser(run, label)
            if cond.known is None:
                return sampler.sample(run.process, denoiser, run.schedule, (n, *sites), generator, run.device, tick)
            known, values = (t.expand(n, *sites) for t in (cond.known, cond.values))
            return infill_sample(sampler, run.process, denoiser, run.schedule, known, values, generator, run.device,
                                 tick)

        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            if cond.classes is None:
                groups = [None]
                chunks.append(draw(n, None).cpu())
                continue
            labels = torch.tensor(cond.classes)[torch.arange(start, start + n) % len(cond.classes)]
            groups = torch.unique(labels).tolist()
            x = torch.empty((n, *sites), dtype=torch.long)
            for label in groups:
                rows = labels == label
                x[rows] = draw(int(rows.sum()), int(label)).cpu()
            chunks.append(x)
    return run.process.to_data(torch.cat(chunks))      # jump: the data value round(z_0 / lambda) of each latent count


def save_samples(samples: torch.Tensor, run: LoadedRun, out_dir: Path, stem: str = "samples") -> dict[str, str]:
    """Write samples as ``.npy`` (and a PNG grid for images); return the paths written. ``out_dir`` is created;
    it must not be a symbolic link, and every file is written atomically without following links
    (runs/atomic_io.py)."""
    ensure_dir(out_dir)
    npy = out_dir / f"{stem}.npy"
    array = samples.numpy()
    atomic_write(npy, lambda f: np.save(f, array))
    paths = {"npy": str(npy)}
    k = run.dataset.num_states
    if run.dataset.kind == "image" and k is not None and (samples.numel() == 0 or int(samples.max()) < k):
        paths["png"] = str(save_image_grid(samples[:256], run.dataset.num_states, out_dir / f"{stem}.png"))
    vocab = run.dataset.metadata.get("vocab")
    if vocab is not None:  # text and DNA: one decoded sample per line
        text = out_dir / f"{stem}.txt"
        atomic_write_text(text, "".join(line.replace("\n", "\\n") + "\n" for line in decode_text(samples, vocab)))
        paths["txt"] = str(text)

    tokenizer = run.dataset.metadata.get("tokenizer_json")
    if tokenizer is not None:  # BPE text: one decoded sample per line, newlines and carriage returns escaped
        lines = "".join(line.replace("\n", "\\n").replace("\r", "\\r") + "\n"
                        for line in BpeTokenizer(tokenizer).decode_rows(samples))
        text = out_dir / f"{stem}.txt"
        atomic_write(text, lambda f: f.write(lines.encode("utf-8")))
        paths["txt"] = str(text)
    return paths


def evaluate_run(run: LoadedRun, split: str = "test", t_samples: int | None = None, batch_size: int | None = None,
                 seed: int = 0, progress: bool = True) -> LikelihoodResult:
    """NLL upper bound of a data split in bits per dimension; for a class-conditional run the bound on
    -log p(x | c), each class's examples with their class (as the training validation scores it)."""
    data = run.dataset.split(split)
    t_samples = run.config.evaluate.t_samples if t_samples is None else t_samples
    batch_size = run.config.evaluate.batch_size if batch_size is None else batch_size
    if t_samples < 1 or batch_size < 1:
        raise ValueError(f"t_samples and batch_size must be >= 1, got {t_samples} and {batch_size}")
    generator = torch.Generator(device=run.device).manual_seed(seed)
    labels = run.dataset.labels(split)
    if run.denoiser.num_classes and labels is not None:   # conditional: -log p(x | c), class by class, pooled
        parts = [(data[labels == c], ConditionalDenoiser(run.denoiser, int(c))) for c in torch.unique(labels).tolist()]
    else:   # unconditional (a conditional run without labels for this split: its null class, p(x))
        parts = [(data, run.denoiser if not run.denoiser.num_classes else
                  ConditionalDenoiser(run.denoiser, run.denoiser.num_classes))]
    with tqdm(total=data.shape[0], desc=f"evaluate ({split})", disable=not progress, dynamic_ncols=True) as bar:
        results = [evaluate_nll(run.process, denoiser, run.schedule, part, build_proposal(run.config), t_samples,
                                batch_size, generator, run.device, progress=bar.update) for part, denoiser in parts]
    return results[0] if len(results) == 1 else pool_results(results)


def pool_results(results: list[LikelihoodResult]) -> LikelihoodResult:
    """One LikelihoodResult of disjoint parts of a split (e.g. its classes): means weighted by the examples, standard
    errors combined as independent, sqrt(sum_i (n_i / n)^2 se_i^2)."""
    n = sum(r.num_examples for r in results)
    w = [r.num_examples / n for r in results]
    mean = lambda key: sum(wi * getattr(r, key) for wi, r in zip(w, results))  # noqa: E731
    stderr = math.sqrt(sum((wi * r.nll_bits_per_dim_stderr) ** 2 for wi, r in zip(w, results)))
    return LikelihoodResult(
        nll_bits_per_dim=mean("nll_bits_per_dim"), nll_bits_per_dim_stderr=stderr,
        diffusion_bits_per_dim=mean("diffusion_bits_per_dim"), prior_bits_per_dim=mean("prior_bits_per_dim"),
        reconstruction_bits_per_dim=mean("reconstruction_bits_per_dim"), num_examples=n,
        t_samples=results[0].t_samples, prior=results[0].prior, encoding_bits_per_dim=mean("encoding_bits_per_dim"))


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


