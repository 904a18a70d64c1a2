"""Run configuration: typed dataclasses, merged from defaults, a YAML/JSON file and ``key=value`` overrides
with OmegaConf (unknown keys and wrong types are errors, never silently ignored).

The resolved config is written as ``config.yaml`` in every run directory; ``ddiff sample RUN_DIR`` and
``ddiff evaluate RUN_DIR`` rebuild everything from it.
"""

from __future__ import annotations

import math
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
    val_path: Optional[str] = None  # array / png-folder / text / fasta: a separate validation file (or folder)
    test_path: Optional[str] = None  # array / png-folder / text / fasta: a separate test file (or folder)
    max_bytes: Optional[int] = None  # memory budget of a load (default 1 GiB of int64 states; data/limits.py)
    # array: counts without a maximum (no num_states inferred from the data); null = true for process.name=jump
    counts: Optional[bool] = None
    tokenizer: str = "char"         # text / kjv: "char" (one state per character) or "bpe" (byte-level BPE)
    vocab_size: Optional[int] = None  # tokenizer=bpe: number of tokens (257..65536), e.g. 4096
    # text / kjv: null (as read) or "text8" (a-z and space, 27 symbols), applied before the split
    normalize: Optional[str] = None
    format: str = "plain"            # text: plain | text8 (Mahoney's file, 90/5/5) | lines (LM1B) | documents (JSONL)
    packing: str = "pack"            # text, format=lines: pack (lines + EOS, cut into windows) | pad (one line a row)


@dataclass
class ProcessConfig:
    name: str = "blackout"
    # blackout: "mean" (the paper's) or "logits"; jump: "mean" only; null = the process's default
    # (DEFAULT_PARAMETERIZATIONS), resolved by load_config like the schedule
    parameterization: Optional[str] = None
    # alpha(t) family, used for the sampling grid and time input; null = the process's default
    # (DEFAULT_SCHEDULES), resolved by load_config so that config.yaml records the schedule a run used
    schedule: Optional[str] = None
    t_end: float = 15.0                # blackout schedule only (also jump's default grid)
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
    dropout: Optional[float] = None    # null: the backbone's default (default_dropout), recorded in config.yaml
    hidden: int = 256                  # mlp only
    depth: int = 3                     # mlp and transformer
    dim: int = 256                     # transformer only
    heads: int = 4                     # transformer only
    mlp_ratio: float = 4.0             # transformer only
    num_classes: Optional[int] = 0     # class-conditional with C classes (+ a null class); 0 = unconditional,
    #                                    null = C inferred from the dataset's labels (max label + 1)
    # mlp only: how the noise level reaches the network (NOISE_CONDITIONINGS); "auto" is resolved by load_config:
    # "none" where the process's posterior does not depend on the noise level (masking), else "adaln-zero".
    # A run's config.yaml without this key was trained with "additive" (LEGACY_WHEN_ABSENT).
    noise_conditioning: str = "auto"
    # transformer only: absolute positions added to the input embedding, on top of rotary attention
    # (POSITION_EMBEDDINGS); a run's config.yaml without this key has "none" (rotary only)
    position_embedding: str = "sinusoidal"
    # block diffusion (BD3-LM; transformer + masking only): blocks of this many tokens, AR over blocks and masked
    # diffusion within one; null = the sequence length = plain masked diffusion (docs/block-diffusion.md)
    block_size: Optional[int] = None
    time_conditioning: bool = True     # transformer: false = no noise-level input (MDLM / BD3-LM's time-free net)


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
    ce_weight: float = 0.01            # hybrid only: CE weight on the whole bound (= D3PM's lambda * T)
    weighting: str = "elbo"            # elbo | instantaneous | finite-time (multiplies the ELBO term)
    proposal_loc: float = 0.0          # importance density over logit(alpha) for t
    proposal_scale: float = 2.0
    # BD3-LM's clipped schedule for training: [low, high] = the range of mask rates 1 - alpha(t) the training draws
    # come from (e.g. [0.3, 0.8]); null = the whole range (the bound itself). Evaluation always uses the whole range.
    mask_rate_clip: Optional[list[float]] = None
    t_draws: str = "stratified"        # the batch's noise levels: stratified (low-discrepancy) | antithetic | iid
    augment: str = "none"              # none | shift (random +-1 pixel translation, integer levels kept)
    cond_dropout: float = 0.0          # conditional models: probability that a label is replaced by the null class
    eval_every: int = 500
    # lam draws per validation example at periodic evaluation; null = enough for VALIDATION_SITE_DRAWS site-draws
    # (4..64: validation_t_samples), so a small split is not scored on a few draws that hide a plateau
    eval_t_samples: Optional[int] = None
    sample_every: int = 1000
    checkpoint_every: int = 500
    keep_last: int = 3
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    time_limit_minutes: Optional[float] = None  # stop early (evaluate + checkpoint) once training took this long
    compile: bool = False              # torch.compile the backbone (checkpoints keep the eager parameter names)
    sharding: str = "none"             # none (DDP under torchrun) | fsdp (FSDP2 per block; docs/distributed.md)


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

#: ``process.schedule`` when none is given: the grid that samples each process best. Measured with the exact
#: (oracle) denoiser, bridge sampler, 8 steps, K=4, D=2 (benchmarks/schedule_defaults.py): masking TV 0.016 on
#: log-linear vs 0.050 on the Blackout grid, uniform 0.019 vs 0.062, matrix (gaussian) 0.017 vs 0.047 (cosine
#: 0.019); Blackout keeps its paper's grid (logit alpha linear in t, t_end = 15).
DEFAULT_SCHEDULES = {"blackout": "blackout", "masking": "log-linear", "uniform": "log-linear",
                     "matrix": "log-linear", "jump": "blackout"}
#: ``process.parameterization`` when none is given: logits for every process but jump, whose only one is the
#: mean (it has no finite set of values to put logits on).
DEFAULT_PARAMETERIZATIONS = {"jump": "mean"}
#: Largest seed accepted (train.seed, data.split_seed, --seed): offsets per rank and per stream stay in int64.
MAX_SEED = 2**62
#: Largest number of sampler steps (sample.steps, --steps): a bound on the time grid, not on patience.
MAX_SAMPLER_STEPS = 1_000_000
#: Largest width (model.hidden, model.dim, model.base_channels) and depth (model.depth, num_res_blocks) accepted.
MAX_WIDTH = 65_536
MAX_DEPTH = 1_024
#: Largest number of classes of a conditional model (model.num_classes): the class embedding's rows.
MAX_CLASSES = 1 << 20
#: Largest number of states K of user data (data.num_states): K output channels per site.
MAX_STATES = 1 << 20
#: ``model.noise_conditioning`` values (the MLP's; nn/mlp.py): adaLN-zero modulation after every LayerNorm, no
#: noise input at all, or the embedding added ahead of the LayerNorms (the architecture before the key existed).
NOISE_CONDITIONINGS = ("auto", "adaln-zero", "none", "additive")
#: Processes whose exact posterior p(x0 | x_t) does not depend on the noise level (``posterior_depends_on_noise_level``
#: False; a contract test keeps the two in step): an MLP for them gets no noise input by default.
NOISE_FREE_PROCESSES = ("masking",)
#: ``model.position_embedding`` values (the transformer's; nn/transformer.py).
POSITION_EMBEDDINGS = ("sinusoidal", "learned", "none")
#: Site-draws (examples x sites x lam draws) of one validation when ``train.eval_t_samples`` is null: a 4-site
#: table with 600 validation examples gets 28 draws per example, 8x8 digits (150 images) 7, larger splits 4.
VALIDATION_SITE_DRAWS = 1 << 16
#: Bounds of the automatic number of validation draws per example.
VALIDATION_T_SAMPLES = (4, 64)
#: Architecture keys added after runs were written: a run's config.yaml that lacks one was trained with this
#: value (``load_run_config``), while a new run gets the dataclass default.
LEGACY_WHEN_ABSENT = {("model", "noise_conditioning"): "additive", ("model", "position_embedding"): "none"}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,4})?)$")


def default_schedule(process: str) -> str:
    """The ``process.schedule`` used when the config leaves it null (``DEFAULT_SCHEDULES``; "blackout" for a
    name outside it, which the process registry then refuses)."""
    return DEFAULT_SCHEDULES.get(process, "blackout")


def default_parameterization(process: str) -> str:
    """The ``process.parameterization`` used when the config leaves it null (``DEFAULT_PARAMETERIZATIONS``, else
    "logits")."""
    return DEFAULT_PARAMETERIZATIONS.get(process, "logits")


def default_counts(process: str) -> bool:
    """``data.counts`` when the config leaves it null: true for jump (counts without a maximum), else false."""
    return process == "jump"


def check_device(name: object, key: str = "device") -> None:
    """Refuse a device string other than auto, cpu, cuda or cuda:N (ValueError naming ``key``)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"invalid {key} {name!r}: expected auto, cpu, cuda or cuda:N (N a GPU index)")


def check_seed(seed: object, key: str = "seed") -> None:
    """Refuse a seed that is not an integer in 0..MAX_SEED (ValueError naming ``key``)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{key} must be an integer in 0..2^62 ({MAX_SEED}), got {seed}")


def check_values(config: DictConfig) -> None:
    """Refuse non-finite or out-of-range numbers anywhere in the config, and a malformed device string, before
    anything is built or written (one ValueError listing every problem)."""
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    def number(key: str, low: float, high: float, low_open: bool = False, high_open: bool = False,
               optional: bool = False) -> None:
        section, name = key.split(".")
        value = config[section][name]
        if value is None and optional:
            return
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (low < value if low_open else low <= value) \
            and (value < high if high_open else value <= high)
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        need(ok, f"{key} must be a finite number in {interval}"
                 f", got {value}")

    def integer(key: str, low: int, high: int, optional: bool = False) -> None:
        section, name = key.split(".")
        value = config[section][name]
        if value is None and optional:
            return
        need(isinstance(value, int) and low <= value <= high, f"{key} must be an integer in {low}..{high}, got {value}")

    integer("data.num_states", 2, MAX_STATES, optional=True)
    integer("data.levels", 2, 256, optional=True)
    integer("data.seq_len", 1, 1 << 24, optional=True)
    need(config.data.tokenizer in ("char", "bpe"), f"data.tokenizer must be char or bpe, got {config.data.tokenizer!r}")
    if config.data.tokenizer == "bpe":
        need(config.data.vocab_size is not None, "data.tokenizer=bpe needs data.vocab_size (257..65536), e.g. 4096")
        integer("data.vocab_size", 257, 1 << 16, optional=True)
    else:
        need(config.data.vocab_size is None, "data.vocab_size applies to data.tokenizer=bpe only")
    need(config.data.normalize in (None, "none", "text8"),
         f"data.normalize must be null, none or text8, got {config.data.normalize!r}")
    need(config.data.format in ("plain", "text8", "lines", "documents"),
         f"data.format must be plain, text8, lines or documents, got {config.data.format!r}")
    need(config.data.packing in ("pack", "pad"), f"data.packing must be pack or pad, got {config.data.packing!r}")
    number("process.t_end", 0.0, 700.0, low_open=True)  # exp(-700) is still a normal float64
    number("process.eps", 0.0, 1.0, low_open=True, high_open=True)
    integer("model.base_channels", 1, MAX_WIDTH)
    for i, mult in enumerate(config.model.channel_mults):
        need(isinstance(mult, int) and 1 <= mult <= 64, f"model.channel_mults[{i}] must be in 1..64, got {mult}")
    need(len(config.model.channel_mults) <= 16, f"model.channel_mults has {len(config.model.channel_mults)} "
                                                 "levels; at most 16 are allowed")
    integer("model.num_res_blocks", 1, MAX_DEPTH)
    for i, res in enumerate(config.model.attention_resolutions):
        need(isinstance(res, int) and res >= 1, f"model.attention_resolutions[{i}] must be >= 1, got {res}")
    number("model.dropout", 0.0, 1.0, high_open=True)
    integer("model.hidden", 1, MAX_WIDTH)
    integer("model.depth", 1, MAX_DEPTH)
    integer("model.dim", 1, MAX_WIDTH)
    integer("model.heads", 1, MAX_WIDTH)
    integer("model.num_classes", 0, MAX_CLASSES, optional=True)
    integer("model.block_size", 1, 1 << 24, optional=True)
    need(config.train.t_draws in ("stratified", "antithetic", "iid"),
         f"train.t_draws must be stratified, antithetic or iid, got {config.train.t_draws!r}")
    clip = config.train.mask_rate_clip
    if clip is not None:
        need(len(clip) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in clip)
             and 0.0 <= clip[0] < clip[1] <= 1.0,
             f"train.mask_rate_clip must be [low, high] with 0 <= low < high <= 1 (mask rates), got {list(clip)}")
    number("train.cond_dropout", 0.0, 1.0, high_open=True)
    number("model.mlp_ratio", 0.0, 64.0, low_open=True)
    need(config.model.noise_conditioning in NOISE_CONDITIONINGS, f"model.noise_conditioning must be one of "
         f"{', '.join(NOISE_CONDITIONINGS)}, got {config.model.noise_conditioning!r}")
    need(config.model.position_embedding in POSITION_EMBEDDINGS, f"model.position_embedding must be one of "
         f"{', '.join(POSITION_EMBEDDINGS)}, got {config.model.position_embedding!r}")
    # the ranges of lr, weight_decay, grad_clip, ema_decay, min_lr_ratio, time_limit_minutes and the counts of
    # train.* are checked by train.checks.check_train_config; here only that they are finite
    for key in ("lr", "weight_decay", "grad_clip", "ema_decay", "min_lr_ratio", "proposal_loc"):
        value = config.train[key]
        need(math.isfinite(value), f"train.{key} must be a finite number, got {value}")
    tl = config.train.time_limit_minutes
    need(tl is None or math.isfinite(tl), f"train.time_limit_minutes must be a finite number (or null), got {tl}")
    number("train.proposal_scale", 0.0, math.inf, low_open=True, high_open=True)
    number("train.ce_weight", 0.0, math.inf, high_open=True)
    need(config.sample.steps <= MAX_SAMPLER_STEPS,
         f"sample.steps must be at most {MAX_SAMPLER_STEPS}, got {config.sample.steps}")
    for key, value in (("train.seed", config.train.seed), ("data.split_seed", config.data.split_seed)):
        try:
            check_seed(value, key)
        except ValueError as err:
            problems.append(str(err))
    try:
        check_device(config.train.device, "train.device")
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                legacy_from: str | Path | None = None) -> DictConfig:
    """Defaults, then the YAML/JSON file at ``path``, then ``section.key=value`` overrides.

    ``legacy_from``: a run's config.yaml (usually ``path`` itself, see ``load_run_config``); every key of
    ``LEGACY_WHEN_ABSENT`` that this file lacks takes its legacy value (the run was written before the key
    existed) before ``path`` and the overrides are merged. Raises ValueError naming the bad key, value or
    override."""
    config = OmegaConf.structured(RunConfig)
    try:
        if legacy_from is not None:
            config = OmegaConf.merge(config, _legacy_values(Path(legacy_from)))
        if path is not None:
            path = Path(path)
            if path.is_dir():
                raise ValueError(f"config file {path} is a directory; --config takes a YAML/JSON file")
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
        if config.process.schedule is None:  # the process's default, recorded in config.yaml
            config.process.schedule = default_schedule(config.process.name)
        if config.model.dropout is None:  # the backbone's default, recorded in config.yaml
            config.model.dropout = default_dropout(config.model.backbone)
        if config.model.noise_conditioning == "auto" and config.model.backbone == "mlp":  # recorded in config.yaml
            config.model.noise_conditioning = default_noise_conditioning(config.process.name)
        if config.process.parameterization is None:
            config.process.parameterization = default_parameterization(config.process.name)
        if config.data.counts is None:
            config.data.counts = default_counts(config.process.name)
    except (OmegaConfBaseException, TypeError) as err:  # TypeError: e.g. a mapping for a list option in a file
        key = getattr(err, "full_key", None)
        where = f" at {key}" if key else ""
        raise ValueError(f"invalid configuration{where}: {_first_line(err)}") from None
    check_values(config)
    return config


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """A run directory's (or a planner's, a classifier's) config.yaml: ``load_config`` with the legacy value of
    every architecture key the file lacks (``LEGACY_WHEN_ABSENT``), so runs written before a key existed rebuild
    the network they were trained with."""
    return load_config(path, overrides, legacy_from=path)


def validation_t_samples(configured: int | None, examples: int, sites: int) -> int:
    """Lam draws per validation example: ``train.eval_t_samples`` when set, else
    ceil(VALIDATION_SITE_DRAWS / (examples * sites)) clamped to ``VALIDATION_T_SAMPLES``."""
    if configured is not None:
        return int(configured)
    low, high = VALIDATION_T_SAMPLES
    return min(high, max(low, math.ceil(VALIDATION_SITE_DRAWS / max(1, examples * sites))))


def default_dropout(backbone: str) -> float:
    """``model.dropout`` when unset: 0 for the MLP (with 0.1 a uniform-noise MLP stops at TV 0.059 from a small
    correlated table, 0.032 without; benchmarks/table_fit.py, tests/test_backbone_fit.py), 0.1 for the U-Net and
    the transformer (the value every earlier run recorded)."""
    return 0.0 if backbone == "mlp" else 0.1


def default_noise_conditioning(process: str) -> str:
    """``model.noise_conditioning`` for "auto": "none" for the processes of ``NOISE_FREE_PROCESSES`` (their exact
    p(x0 | x_t) does not depend on the noise level: masking, as MDLM trains), else "adaln-zero"."""
    return "none" if process in NOISE_FREE_PROCESSES else "adaln-zero"


def _legacy_values(path: Path) -> DictConfig:
    """The ``LEGACY_WHEN_ABSENT`` values of the keys that the config file at ``path`` lacks (empty when it cannot
    be read: ``load_config`` then reports the file itself)."""
    try:
        raw = _load_file(path) if path.is_file() else OmegaConf.create({})
    except (ValueError, OmegaConfBaseException):
        raw = OmegaConf.create({})
    legacy: dict[str, dict[str, Any]] = {}
    for (section, key), value in LEGACY_WHEN_ABSENT.items():
        held = raw.get(section) if isinstance(raw, DictConfig) else None
        if not isinstance(held, DictConfig) or key not in held:
            legacy.setdefault(section, {})[key] = value
    return OmegaConf.create(legacy)


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
        raise ValueError(f"malformed override {item!r}: cannot parse the value {value!r} "
                         f"({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def to_dict(config: DictConfig) -> dict[str, Any]:
    """Plain JSON-able dict of a config."""
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
