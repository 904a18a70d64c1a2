"""Builders: the only place where a run config reaches the classes (DESIGN.md section 4)."""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from .config import MAX_SAMPLER_STEPS, check_device, default_noise_conditioning, default_schedule
from .data import DATASETS, DiscreteDataset, dataset_options, load_dataset
from .denoiser import NetworkDenoiser
from .losses import LogitAlphaProposal, Objective, Weighting, build_weighting
from .nn import MLP, SequenceTransformer, UNet
from .processes import PROCESSES, ForwardProcess, build_process
from .samplers import SAMPLERS, Sampler, build_sampler
from .schedules import Schedule, build_schedule

BACKBONE_NAMES = ("unet", "mlp", "transformer")
#: Largest backbone accepted, in parameters (4 GB of float32 weights; training keeps 4 copies: weights, EMA,
#: two Adam moments). Counted on the meta device before any memory is allocated.
MAX_PARAMETERS = 1_000_000_000


def build_dataset(config: DictConfig, tokenizer_json: str | None = None) -> DiscreteDataset:
    """Load the dataset named in ``config.data`` with the options that apply to it; ``tokenizer_json`` is a
    trained tokenizer (a run's checked ``tokenizer.json``) used instead of training one for ``data.tokenizer=bpe``."""
    data = config.data
    options: dict[str, Any] = {"split_seed": data.split_seed}
    if data.path is not None:
        options["path"] = data.path
    if data.num_states is not None:
        options["num_states"] = data.num_states
    for key in ("levels", "seq_len", "unknown", "val_path", "test_path"):
        if data[key] is not None:
            options[key] = data[key]
    if data.counts and "counts" in dataset_options(data.name):  # a bounded dataset (digits) keeps its K
        options["counts"] = True
    if data.max_bytes is not None and "max_bytes" in dataset_options(data.name):  # built-in data need no budget
        options["max_bytes"] = data.max_bytes
    if data.tokenizer != "char" or data.vocab_size is not None:  # subword tokens: text datasets only
        if "tokenizer" not in dataset_options(data.name):
            raise ValueError(f"data.tokenizer / data.vocab_size apply to text datasets (text, kjv), not {data.name!r}")
        options.update(tokenizer=data.tokenizer, vocab_size=data.vocab_size)
        if tokenizer_json is not None:
            options["tokenizer_json"] = tokenizer_json
    # text options: passed only when set away from their defaults, so loaders without them (and old runs) are unchanged
    for key, default in (("normalize", None), ("format", "plain"), ("packing", "pack")):
        value = data.get(key, default)
        if value != default and not (key == "normalize" and value == "none"):
            if key not in dataset_options(data.name):
                takers = [n for n in sorted(DATASETS) if key in dataset_options(n)]
                raise ValueError(f"data.{key} applies to the datasets {', '.join(takers)}, not {data.name!r}")
            options[key] = value
    return load_dataset(data.name, **options)


def build_schedule_from(config: DictConfig) -> Schedule:
    """``process.schedule``, or the process's default (``config.DEFAULT_SCHEDULES``) when it is null."""
    p = config.process
    name = p.schedule if p.schedule is not None else default_schedule(p.name)
    if name == "blackout":
        return build_schedule("blackout", t_end=p.t_end)
    if name in ("log-linear", "cosine"):
        return build_schedule(name, eps=p.eps)
    return build_schedule(name)


def resolve_process_options(config: DictConfig, dataset: DiscreteDataset) -> None:
    """Fill the process options that default from the training data into ``config.process.options`` (so that
    config.yaml records them): for ``jump``, ``mean_scale`` = the training split's mean value (at least 1) when the
    config leaves it out. Other processes have none; a given option is never changed."""
    if config.process.name == "jump" and "mean_scale" not in config.process.options:
        config.process.options["mean_scale"] = max(1.0, float(dataset.train.double().mean()))


def build_process_from(config: DictConfig, num_states: int | None) -> ForwardProcess:
    """The run's process; ``num_states`` None (count data without a maximum, ``data.counts``) is refused, naming
    what to set, for every process that needs a number of states."""
    options = OmegaConf.to_container(config.process.options, resolve=True)
    name = config.process.name
    if num_states is None and name in PROCESSES and not PROCESSES[name].unbounded:
        raise ValueError(f"process {name!r} needs a number of states K, but the data are counts without a maximum "
                         "(data.counts=true): set data.num_states=K (more than the largest value), or use "
                         "process.name=jump, which needs none")
    process = build_process(name, num_states, **options)
    process.check_parameterization(config.process.parameterization)
    return process


class SiteChannelFold(nn.Module):
    """Runs a 2-D backbone on images with a site channel axis: (B, C, S, H, W) <-> (B, C * S, H, W)."""

    def __init__(self, backbone: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = out_channels

    def forward(self, features: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        b, c, s, h, w = features.shape
        args = (features.reshape(b, c * s, h, w), noise_level)
        out = self.backbone(*args) if labels is None else self.backbone(*args, labels)
        return out.reshape(b, self.out_channels, s, h, w)


def resolve_num_classes(config: DictConfig, dataset: DiscreteDataset) -> int:
    """C of ``model.num_classes``: as given (0 = unconditional), or for null the dataset's max label + 1 over all
    splits. A conditional model needs training labels, all in 0..C-1 (ValueError otherwise)."""
    given = config.model.num_classes
    if given == 0:
        return 0
    labels = [y for y in (dataset.train_labels, dataset.val_labels, dataset.test_labels) if y is not None]
    if dataset.train_labels is None:
        raise ValueError(f"model.num_classes={given} needs class labels, but dataset {dataset.name!r} has none "
                         "(labelled: digits, fashion-mnist, array .npz with train_labels or x and y); "
                         "use model.num_classes=0")
    top = max(int(y.max()) for y in labels if y.numel()) + 1
    if given is None:
        return top
    if top > given:
        raise ValueError(f"model.num_classes={given} but the dataset has labels up to {top - 1}; use "
                         f"model.num_classes={top} or null (inferred)")
    return int(given)


def build_backbone(config: DictConfig, process: ForwardProcess, site_shape: tuple[int, ...],
                   out_channels: int | None = None, num_classes: int = 0) -> nn.Module:
    """The ``config.model`` network on the process's input features; its output channels are the
    parameterization's unless ``out_channels`` is given (a DDPD planner has one). A network of more than
    ``MAX_PARAMETERS`` parameters is refused before its weights are allocated (ValueError)."""
    if _rough_parameter_count(config.model, math.prod(site_shape)) > MAX_PARAMETERS // 100:
        with torch.device("meta"):  # exact count from shapes only: no memory, no random draws (a one-off import
            probe = _backbone(config, process, site_shape, out_channels, num_classes)  # of a few seconds: when big)
        count = sum(p.numel() for p in probe.parameters())
    else:
        count = 0
    if count > MAX_PARAMETERS:
        m = config.model
        raise ValueError(f"model.backbone={m.backbone} with these model.* sizes has {count:,} parameters, more than "
                         f"the limit of {MAX_PARAMETERS:,}; lower model.hidden, model.dim, model.depth or "
                         "model.base_channels")
    return _backbone(config, process, site_shape, out_channels, num_classes)


def _rough_parameter_count(m: DictConfig, sites: int) -> float:
    """The backbone's parameter count within a small factor (the weight matrices that dominate it)."""
    if m.backbone == "mlp":
        return m.hidden * m.hidden * m.depth + 2 * m.hidden * sites
    if m.backbone == "transformer":
        return (10 + 2 * m.mlp_ratio) * m.dim * m.dim * m.depth
    widest = m.base_channels * max(m.channel_mults, default=1)
    return 18 * widest * widest * (m.num_res_blocks + 1) * max(len(m.channel_mults), 1) + 16 * m.base_channels ** 2


def _backbone(config: DictConfig, process: ForwardProcess, site_shape: tuple[int, ...],
              out_channels: int | None, num_classes: int = 0) -> nn.Module:
    m = config.model
    c_in = process.feature_channels
    c_out = process.output_channels(config.process.parameterization) if out_channels is None else out_channels
    if m.backbone == "unet":
        if len(site_shape) not in (2, 3):
            raise ValueError(f"backbone 'unet' needs images of shape (H, W) or (C, H, W), got sites {site_shape}; "
                             "for sequences or vectors use model.backbone=transformer or model.backbone=mlp")
        fold = 1 if len(site_shape) == 2 else site_shape[0]
        unet = UNet(c_in * fold, c_out * fold, image_size=tuple(site_shape[-2:]), base_channels=m.base_channels,
                    channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                    attention_resolutions=tuple(m.attention_resolutions), dropout=m.dropout, num_classes=num_classes)
        return unet if fold == 1 else SiteChannelFold(unet, c_out)
    time_conditioning = m.get("time_conditioning", True)       # absent in configs written before it: True
    if not time_conditioning and m.backbone != "transformer":
        raise ValueError(f"model.time_conditioning=false is built for model.backbone=transformer, not {m.backbone!r}")
    if m.backbone == "transformer":
        return SequenceTransformer(c_in, c_out, seq_len=tuple(site_shape), dim=m.dim, depth=m.depth, heads=m.heads,
                                   mlp_ratio=m.mlp_ratio, dropout=m.dropout, num_classes=num_classes,
                                   position_embedding=m.get("position_embedding", "none"),
                                   time_conditioning=time_conditioning)
    if m.backbone == "mlp":
        conditioning = m.get("noise_conditioning", "additive")
        if conditioning == "auto":
            conditioning = default_noise_conditioning(config.process.name)
        return MLP(c_in, c_out, site_shape=tuple(site_shape), hidden=m.hidden, depth=m.depth, dropout=m.dropout,
                   num_classes=num_classes, noise_conditioning="adaln-zero" if conditioning == "none" else conditioning,
                   noise_input=conditioning != "none")
    raise ValueError(f"unknown backbone {m.backbone!r}; valid backbones: {', '.join(BACKBONE_NAMES)}")


def build_denoiser(config: DictConfig, process: ForwardProcess, site_shape: tuple[int, ...],
                   num_classes: int = 0) -> NetworkDenoiser:
    """The run's denoiser; ``num_classes`` > 0 (``resolve_num_classes``) makes its backbone class-conditional."""
    block_size = config.model.get("block_size", None)          # absent in configs written before it: None
    if block_size is not None and (config.model.backbone != "transformer" or len(site_shape) != 1):
        raise ValueError(f"model.block_size needs model.backbone=transformer on sequences, got "
                         f"{config.model.backbone!r} on sites {tuple(site_shape)}")
    backbone = build_backbone(config, process, site_shape, num_classes=num_classes)
    if block_size is not None:
        from .blocks.denoiser import BlockNetworkDenoiser

        return BlockNetworkDenoiser(backbone, process, config.process.parameterization, block_size)
    return NetworkDenoiser(backbone, process, config.process.parameterization)


def build_proposal(config: DictConfig) -> LogitAlphaProposal:
    return LogitAlphaProposal(loc=config.train.proposal_loc, scale=config.train.proposal_scale,
                              draws=config.train.get("t_draws", "stratified"))


def build_objective_from(config: DictConfig) -> Objective:
    """The training objective; the CE objectives need x0 log-probabilities (not Blackout's mean output)."""
    objective = Objective(config.train.objective, config.train.ce_weight)
    if objective.uses_cross_entropy and config.process.parameterization == "mean":
        raise ValueError(f"train.objective={objective.name} needs x0 log-probabilities; the 'mean' "
                         "parameterization has none: use process.parameterization=logits or train.objective=elbo")
    return objective


def build_weighting_from(config: DictConfig) -> Weighting:
    name = config.train.weighting
    if name == "finite-time":
        return build_weighting(name, t_end=config.process.t_end)
    return build_weighting(name)


def build_sampler_from(config: DictConfig, name: str | None = None, steps: int | None = None,
                       options: dict[str, Any] | None = None) -> Sampler:
    """The run's sampler, or sampler ``name``; ``sample.options`` apply only to the configured sampler (they
    belong to it) and ``options`` are added on top. A ``num_steps`` among them is the step count, as ``steps``
    (both, different: ValueError); every size option is bounded by the sampler (samplers/base.py ``check_size``)."""
    configured = name is None or name == config.sample.sampler
    merged: dict[str, Any] = dict(cast(dict[str, Any], OmegaConf.to_container(config.sample.options, resolve=True))) \
        if configured else {}
    merged.update(options or {})
    source = "sample.steps" if steps is None else "--steps"
    if "num_steps" in merged:       # the step count as an option (-o num_steps=N): the same as steps (--steps N)
        given = merged.pop("num_steps")
        if steps is not None and given != steps:
            raise ValueError(f"two step counts: {steps} (--steps) and the sampler option num_steps={given!r}; "
                             "give one")
        steps, source = given, "the sampler option num_steps"
    chosen = config.sample.sampler if name is None else name
    if steps is not None and getattr(SAMPLERS.get(chosen), "rejects_steps", False):
        raise ValueError(f"sampler {chosen!r} has no time grid: a step count would have no effect (its number of "
                         f"network calls follows from its rule: -o tau=... or -o factor=...)")
    num_steps = config.sample.steps if steps is None else steps
    if isinstance(num_steps, int) and num_steps > MAX_SAMPLER_STEPS:
        raise ValueError(f"{num_steps} sampler steps requested ({source}); at most {MAX_SAMPLER_STEPS} are allowed "
                         "(exact samplers need none: --sampler exact)")
    return build_sampler(chosen, num_steps=num_steps, **merged)


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; a malformed name (allowed: auto, cpu, cuda, cuda:N) or an
    unavailable explicit CUDA device (no CUDA, or an index past the visible devices) is a ValueError."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
