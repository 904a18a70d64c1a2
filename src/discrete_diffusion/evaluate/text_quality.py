"""Sample quality of text: generative NLL under an autoregressive judge, entropy, distinct-n, memorisation.

References: the "generative perplexity" of diffusion language models (Lou, Meng, Ermon, "Discrete Diffusion
Modeling by Estimating the Ratios of the Data Distribution", ICML 2024; Sahoo et al., "Simple and Effective
Masked Diffusion Language Models", NeurIPS 2024), here under a small causal transformer
(:class:`~discrete_diffusion.baselines.ARTransformer`) that the library trains on the run's own training
split, so that no external model or download is needed; distinct-n (Li et al., NAACL 2016) and verbatim
8-gram memorisation (Carlini et al., ICLR 2023) from :mod:`~discrete_diffusion.evaluate.ngram`.

Every metric is returned for the samples and, as its reference value, for held-out real data of the same
shape (``reference``). Definitions (``x`` is ``(N, L)``, tokens in ``0..K-1``):

* ``ar_nll_bits_per_token = sum_i -log2 p_AR(x_i) / (N L)`` (lower means the judge finds the text more
  likely; an ideal sampler scores about the reference value; a sampler that repeats frequent tokens can
  score *below* it, so read it with the entropy and distinct-n). ``ar_nll_bits_per_char`` is the same number
  for character-level text (each token one character, :func:`is_char_level`) and is absent otherwise.
* ``unigram_entropy_bits = -sum_k p_k log2 p_k`` of the pooled token histogram.
* ``distinct_n`` (n = 1..4): distinct n-grams / all n-grams, n-grams inside each sequence, pooled.
* ``memorised_8gram_share``: share of the 8-grams of ``x`` found verbatim among the 8-grams of the training
  split (read as one running text; memory bound:
  :data:`~discrete_diffusion.evaluate.ngram.MAX_TRAIN_NGRAM_POSITIONS`).

The AR judge is trained once per cache directory and reused: ``cache_dir / "ar_model"`` holds
``weights.safetensors`` (never unpickled) and ``config.json`` with the judge's config, the data checksum
(``splits_sha256`` of :func:`~discrete_diffusion.runs.data_record.data_manifest`), the weights' SHA-256 and its
test-split NLL. It is retrained (with a warning saying why) when the config or the data checksum differs, or
when the weights file is missing, tampered with (checksum mismatch) or unreadable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..baselines.ar_transformer import ARTransformer
from ..baselines.fit import FitSettings, bits_per_dim, fit_exact_model
from ..data.base import DiscreteDataset
from ..data.text import UNK
from ..runs.atomic_io import atomic_write, sha256_file
from ..runs.data_record import data_manifest
from ..runs.json_reader import read_run_json
from .dna_quality import is_dna
from .ngram import (
    check_token_batch,
    distinct_n,
    ngram_overlap,
    training_ngram_set,
    unigram_entropy_bits,
    warn_if_sizes_differ,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.load import LoadedRun

__all__ = ["ARJudgeConfig", "ARJudge", "MEMORISATION_N", "is_text", "is_char_level", "load_or_train_ar_judge",
           "text_quality"]

#: n of the memorisation n-grams.
MEMORISATION_N = 8
_FORMAT = 1
_MAX_RECORD_BYTES = 1 << 20


@dataclass(frozen=True)
class ARJudgeConfig:
    """The AR judge's architecture and training recipe (the cache key, with the data checksum).

    The default trains on KJV windows of 256 characters in a few minutes on one CPU core (numbers in
    docs/quality.md); tests use a tiny one.
    """

    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    steps: int = 800
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    eval_every: int = 400
    ema_decay: float = 0.99
    seed: int = 0

    def fit_settings(self) -> FitSettings:
        return FitSettings(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           eval_every=self.eval_every, ema_decay=self.ema_decay, seed=self.seed)


@dataclass
class ARJudge:
    """A loaded judge: the model (eval mode), whether this call trained it, and its cache record."""

    model: ARTransformer
    trained: bool
    record: dict[str, Any] = field(default_factory=dict)


def is_text(dataset: DiscreteDataset) -> bool:
    """Text (character- or token-level): a sequence dataset whose ``metadata["vocab"]`` lists its
    ``num_states`` symbols as strings, or a byte-level BPE dataset (``metadata["tokenizer_json"]``), and that
    is not DNA (the ``text`` and ``kjv`` loaders)."""
    vocab = dataset.metadata.get("vocab")
    characters = (isinstance(vocab, list) and len(vocab) == dataset.num_states
                  and all(isinstance(s, str) for s in vocab))
    bpe = isinstance(dataset.metadata.get("tokenizer_json"), str)  # byte-level BPE tokens (data/tokenizer.py)
    return (dataset.kind == "sequence" and len(dataset.site_shape) == 1 and (characters or bpe)
            and not is_dna(dataset))


def is_char_level(dataset: DiscreteDataset) -> bool:
    """Every token is one character: each vocabulary entry is a single character or ``"<unk>"``."""
    vocab = dataset.metadata.get("vocab")
    return is_text(dataset) and isinstance(vocab, list) and all(len(s) == 1 or s == UNK for s in vocab)


def _build(dataset: DiscreteDataset, cfg: ARJudgeConfig, device: torch.device) -> ARTransformer:
    return ARTransformer(dataset.num_states, dataset.num_sites, dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                         dropout=cfg.dropout, mlp_ratio=cfg.mlp_ratio).to(device)


def _expected_key(dataset: DiscreteDataset, cfg: ARJudgeConfig) -> dict[str, Any]:
    return {"format": _FORMAT, "config": asdict(cfg), "data_sha256": data_manifest(dataset)["splits_sha256"],
            "num_states": dataset.num_states, "seq_len": dataset.num_sites}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:  # bounded (size, depth, number length), no link, no FIFO: runs/json_reader.py
        record = read_run_json(path, _MAX_RECORD_BYTES, "AR judge record")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _try_load(ar_dir: Path, key: dict[str, Any], dataset: DiscreteDataset, cfg: ARJudgeConfig,
              device: torch.device) -> tuple[ARJudge | None, str]:
    """The cached judge, or ``None`` and the reason it cannot be used."""
    record = _read_record(ar_dir / "config.json")
    if record is None:
        return None, "no readable config.json"
    changed = [name for name in key if record.get(name) != key[name]]
    if changed:
        return None, f"{', '.join(changed)} changed"
    weights = ar_dir / "weights.safetensors"
    if weights.is_symlink() or not weights.is_file():
        return None, "weights.safetensors is missing (or not a regular file)"
    if sha256_file(weights) != record.get("weights_sha256"):
        return None, "weights.safetensors does not match its recorded SHA-256"
    model = _build(dataset, cfg, device)
    try:
        model.load_state_dict(load_file(str(weights), device=str(device)))
    except Exception as exc:  # a file that hashes right but does not fit: treat as stale
        return None, f"weights.safetensors does not load ({type(exc).__name__})"
    return ARJudge(model.eval(), False, record), ""


def load_or_train_ar_judge(dataset: DiscreteDataset, cache_dir: Path, config: ARJudgeConfig | None = None,
                           device: torch.device | str = "cpu", progress: bool = False) -> ARJudge:
    """The AR judge of ``dataset``: loaded from ``cache_dir / "ar_model"`` when its record matches, else trained
    on the training split (validated on ``val``, or on ``train`` when ``val`` is empty) and cached.

    Raises:
        ValueError: ``cache_dir / "ar_model"`` (or ``cache_dir``) is a symlink or not a directory.
    """
    cfg = config or ARJudgeConfig()
    device = torch.device(device)
    cache_dir = Path(cache_dir)
    ar_dir = cache_dir / "ar_model"
    for p in (cache_dir, ar_dir):
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise ValueError(f"{p}: the AR judge cache must be a real directory (not a symlink or a file)")
    key = _expected_key(dataset, cfg)
    if ar_dir.is_dir():
        judge, why = _try_load(ar_dir, key, dataset, cfg, device)
        if judge is not None:
            return judge
        if (ar_dir / "config.json").exists() or (ar_dir / "weights.safetensors").exists():
            warnings.warn(f"retraining the AR judge in {ar_dir}: {why}", RuntimeWarning, stacklevel=2)
    ar_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):   # a seeded initialisation that leaves the caller's RNG alone
        torch.manual_seed(cfg.seed)
        model = _build(dataset, cfg, device)
    val = dataset.val if dataset.val.shape[0] else dataset.train
    scratch = Path(tempfile.mkdtemp(prefix=".train.", dir=ar_dir))   # fresh and private: no symlink to follow
    try:
        fit = fit_exact_model(model, dataset.train, val, cfg.fit_settings(), scratch / "best.safetensors", device,
                              progress=progress)
        payload = (scratch / "best.safetensors").read_bytes()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.eval()
    atomic_write(ar_dir / "weights.safetensors", lambda f: f.write(payload))
    test_bits = None
    if dataset.test.shape[0]:
        test_bits = float(bits_per_dim(model, dataset.test, device, batch_size=64).mean())
    record = {**key, "weights_sha256": sha256_file(ar_dir / "weights.safetensors"),
              "fit": {"best_val_bits_per_token": fit.best_val_bits_per_dim, "best_step": fit.best_step,
                      "steps_done": fit.steps_done, "train_seconds": round(fit.train_seconds, 1)},
              "test_bits_per_token": test_bits}
    atomic_write(ar_dir / "config.json", lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
    return ARJudge(model, True, record)


def text_quality(run: "LoadedRun", samples: Tensor, reference: Tensor, *, cache_dir: Path, progress: bool = False,
                 ar_config: ARJudgeConfig | None = None) -> dict[str, dict[str, float]]:
    """Text metrics (module docstring) of ``samples`` and of ``reference``, both ``(N, L)`` token indices.

    ``run`` needs ``dataset`` (training split, vocabulary) and ``device``; ``ar_config`` replaces the judge's
    default :class:`ARJudgeConfig`. Returns ``{metric: {"samples": value, "reference": value}}``.

    Raises:
        ValueError: a dataset that is not text, or samples / reference of the wrong shape, dtype or range.
    """
    dataset = run.dataset
    if not is_text(dataset):
        raise ValueError(f"text metrics need a text dataset (loaders 'text' or 'kjv'); {dataset.name!r} is not")
    sets = {"samples": check_token_batch(samples, dataset, "samples"),
            "reference": check_token_batch(reference, dataset, "reference")}
    warn_if_sizes_differ(sets["samples"], sets["reference"])
    k = dataset.num_states
    judge = load_or_train_ar_judge(dataset, cache_dir, ar_config, run.device, progress)
    out: dict[str, dict[str, float]] = {}

    def put(name: str, fn) -> None:
        out[name] = {which: float(fn(x)) for which, x in sets.items()}

    put("ar_nll_bits_per_token", lambda x: bits_per_dim(judge.model, x, run.device, batch_size=64).mean())
    if is_char_level(dataset):
        out["ar_nll_bits_per_char"] = dict(out["ar_nll_bits_per_token"])
    put("unigram_entropy_bits", lambda x: unigram_entropy_bits(x, k))
    for n in range(1, 5):
        put(f"distinct_{n}", lambda x, n=n: distinct_n(x, n, k))
    train_set = training_ngram_set(dataset.train, MEMORISATION_N, k)
    put(f"memorised_{MEMORISATION_N}gram_share", lambda x: ngram_overlap(x, train_set, MEMORISATION_N, k))
    return out
