"""Run configuration: typed dataclasses, merged from defaults, a YAML/JSON file and ``key=value`` overrides
with OmegaConf (unknown keys and wrong types are errors, never silently ignored).

The resolved config is written as ``config.yaml`` in every run directory; ``ddiff sample RUN_DIR`` and
``ddiff evaluate RUN_DIR`` rebuild everything from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class DataConfig:
    name: str = "digits"            # a registered dataset: see `ddiff train --help`
    path: Optional[str] = None      # file or folder for "array" / "png-folder"
    num_states: Optional[int] = None  # for user arrays: K; default max value + 1
    levels: Optional[int] = None    # quantise 256-level images to this many levels
    seq_len: Optional[int] = None   # text / fasta / kjv / ecoli: window length
    unknown: Optional[str] = None   # fasta / ecoli: "error" (default) or "skip" windows with non-ACGT
    split_seed: int = 0


@dataclass
class ProcessConfig:
    name: str = "blackout"
    parameterization: str = "logits"   # blackout: "mean" (the paper's) or "logits"
    schedule: str = "blackout"         # alpha(t) family, used for the sampling grid and time input
    t_end: float = 15.0                # blackout schedule only
    eps: float = 1e-4                  # log-linear and cosine schedules only
    # extra constructor options of the process, e.g. for matrix: {rates: gaussian, rates_options: {...}}
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    backbone: str = "unet"
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.1
    hidden: int = 256                  # mlp only
    depth: int = 3                     # mlp and transformer
    dim: int = 256                     # transformer only
    heads: int = 4                     # transformer only
    mlp_ratio: float = 4.0             # transformer only


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 128              # the global batch of one optimizer step (over all ranks and micro-batches)
    grad_accumulation: int = 1         # micro-batches per optimizer step (each rank: batch_size / world / this)
    precision: str = "fp32"            # fp32 | bf16 (autocast of the backbone; the loss math stays float32)
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    objective: str = "elbo"            # elbo | hybrid (D3PM: ELBO + ce_weight * CE on x0) | x0-ce (CE alone)
    ce_weight: float = 0.01            # hybrid only: lambda of D3PM's hybrid loss
    weighting: str = "elbo"            # elbo | instantaneous | finite-time (multiplies the ELBO term)
    proposal_loc: float = 0.0          # importance density over logit(alpha) for t
    proposal_scale: float = 2.0
    augment: str = "none"              # none | shift (random +-1 pixel translation, integer levels kept)
    eval_every: int = 500
    eval_t_samples: int = 4            # lam draws per validation image at periodic evaluation
    sample_every: int = 1000
    checkpoint_every: int = 500
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    time_limit_minutes: Optional[float] = None  # stop early (evaluate + checkpoint) once training took this long


@dataclass
class SampleConfig:
    sampler: str = "bridge"
    steps: int = 200
    # extra sampler options, e.g. {temperature: 0.9, top_p: 0.95, cache: true, theta: 0.5}
    options: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 64
    batch_size: int = 256


@dataclass
class EvalConfig:
    t_samples: int = 16                # lam draws per test image for the final NLL
    batch_size: int = 256
    split: str = "test"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


#: Sections that decide the model's shape and meaning: a checkpoint must match them to be loaded.
MODEL_SECTIONS = ("data", "process", "model")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults, then the YAML/JSON file at ``path``, then ``section.key=value`` overrides.

    Raises ValueError naming the bad key, value or override."""
    config = OmegaConf.structured(RunConfig)
    try:
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ValueError(f"config file {path} does not exist")
            config = OmegaConf.merge(config, _load_file(path))
        for item in overrides or []:
            try:
                config = OmegaConf.merge(config, _parse_override(item))
            except TypeError as err:  # e.g. a mapping given for a list option
                raise ValueError(f"invalid override {item!r}: {_first_line(err)}") from None
        # resolve every interpolation now, so a bad or missing value is an error here and not mid-run
        OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
    except (OmegaConfBaseException, TypeError) as err:  # TypeError: e.g. a mapping for a list option in a file
        key = getattr(err, "full_key", None)
        where = f" at {key}" if key else ""
        raise ValueError(f"invalid configuration{where}: {_first_line(err)}") from None
    return config


def _load_file(path: Path) -> DictConfig:
    """A YAML / JSON config file as a mapping (ValueError naming the file when it is not one)."""
    try:
        loaded = OmegaConf.load(path)
    except OmegaConfBaseException:
        raise
    except Exception as err:  # YAML syntax errors, non-UTF-8 bytes, unreadable file, ...
        raise ValueError(f"config file {path} is not valid YAML/JSON: {_first_line(err)}") from None
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"config file {path} must hold a mapping of sections (data, process, model, train, "
                         f"sample, evaluate), got a {type(loaded).__name__}")
    return loaded


_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def _parse_override(item: str) -> DictConfig:
    """One ``section.key=value`` override as a config (the value is parsed as YAML)."""
    key, sep, value = item.partition("=")
    if not sep or not _OVERRIDE_KEY.match(key.strip()):
        raise ValueError(f"malformed override {item!r}: expected section.key=value, e.g. train.steps=100")
    try:
        return OmegaConf.from_dotlist([f"{key.strip()}={value}"])
    except OmegaConfBaseException:
        raise
    except Exception as err:  # YAML syntax errors in the value, control characters, ...
        raise ValueError(f"malformed override {item!r}: cannot parse the value {value!r} ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def save_config(config: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically, never through a symbolic link: train/atomic_io.py)."""
    from .train.atomic_io import atomic_write_text

    atomic_write_text(Path(path), OmegaConf.to_yaml(config))


def to_dict(config: DictConfig) -> dict[str, Any]:
    """Plain JSON-able dict of a config."""
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
