"""Run configuration: typed dataclasses, merged from defaults, a YAML/JSON file and ``key=value`` overrides
with OmegaConf (unknown keys and wrong types are errors, never silently ignored).

The resolved config is written as ``config.yaml`` in every run directory; ``ddiff sample RUN_DIR`` and
``ddiff evaluate RUN_DIR`` rebuild everything from it.
"""

from __future__ import annotations

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
    split_seed: int = 0


@dataclass
class ProcessConfig:
    name: str = "blackout"
    parameterization: str = "logits"   # blackout: "mean" (the paper's) or "logits"
    schedule: str = "blackout"         # alpha(t) family, used for the sampling grid and time input
    t_end: float = 15.0                # blackout schedule only
    eps: float = 1e-4                  # log-linear and cosine schedules only


@dataclass
class ModelConfig:
    backbone: str = "unet"
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention_resolutions: list[int] = field(default_factory=list)
    dropout: float = 0.1
    hidden: int = 256                  # mlp only
    depth: int = 3                     # mlp only


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weighting: str = "elbo"            # elbo | instantaneous | finite-time
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
            config = OmegaConf.merge(config, OmegaConf.load(path))
        for item in overrides or []:
            if "=" not in item or item.startswith("="):
                raise ValueError(f"malformed override {item!r}: expected section.key=value, e.g. train.steps=100")
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item]))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f" at {key}" if key else ""
        raise ValueError(f"invalid configuration{where}: {str(err).splitlines()[0]}") from None
    return config


def save_config(config: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(config))
    tmp.replace(path)


def to_dict(config: DictConfig) -> dict[str, Any]:
    """Plain JSON-able dict of a config."""
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
