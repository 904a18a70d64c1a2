"""Builders: the only place where a run config reaches the classes (DESIGN.md section 4)."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from .data import DiscreteDataset, dataset_options, load_dataset
from .denoiser import NetworkDenoiser
from .losses import LogitAlphaProposal, Objective, Weighting, build_weighting
from .nn import MLP, SequenceTransformer, UNet
from .processes import ForwardProcess, build_process
from .samplers import Sampler, build_sampler
from .schedules import Schedule, build_schedule

BACKBONE_NAMES = ("unet", "mlp", "transformer")


def build_dataset(config: DictConfig) -> DiscreteDataset:
    """Load the dataset named in ``config.data`` with the options that apply to it."""
    data = config.data
    options: dict[str, Any] = {"split_seed": data.split_seed}
    if data.path is not None:
        options["path"] = data.path
    if data.num_states is not None:
        options["num_states"] = data.num_states
    for key in ("levels", "seq_len", "unknown", "val_path", "test_path"):
        if data[key] is not None:
            options[key] = data[key]
    if data.max_bytes is not None and "max_bytes" in dataset_options(data.name):  # built-in data need no budget
        options["max_bytes"] = data.max_bytes
    return load_dataset(data.name, **options)


def build_schedule_from(config: DictConfig) -> Schedule:
    p = config.process
    if p.schedule == "blackout":
        return build_schedule("blackout", t_end=p.t_end)
    if p.schedule in ("log-linear", "cosine"):
        return build_schedule(p.schedule, eps=p.eps)
    return build_schedule(p.schedule)


def build_process_from(config: DictConfig, num_states: int) -> ForwardProcess:
    options = OmegaConf.to_container(config.process.options, resolve=True)
    process = build_process(config.process.name, num_states, **options)
    process.check_parameterization(config.process.parameterization)
    return process


class SiteChannelFold(nn.Module):
    """Runs a 2-D backbone on images with a site channel axis: (B, C, S, H, W) <-> (B, C * S, H, W)."""

    def __init__(self, backbone: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = out_channels

    def forward(self, features: Tensor, noise_level: Tensor) -> Tensor:
        b, c, s, h, w = features.shape
        out = self.backbone(features.reshape(b, c * s, h, w), noise_level)
        return out.reshape(b, self.out_channels, s, h, w)


def build_backbone(config: DictConfig, process: ForwardProcess, site_shape: tuple[int, ...],
                   out_channels: int | None = None) -> nn.Module:
    """The ``config.model`` network on the process's input features; its output channels are the
    parameterization's unless ``out_channels`` is given (a DDPD planner has one)."""
    m = config.model
    c_in = process.feature_channels
    c_out = process.output_channels(config.process.parameterization) if out_channels is None else out_channels
    if m.backbone == "unet":
        if len(site_shape) not in (2, 3):
            raise ValueError(f"backbone 'unet' needs images of shape (H, W) or (C, H, W), got sites {site_shape}")
        fold = 1 if len(site_shape) == 2 else site_shape[0]
        unet = UNet(c_in * fold, c_out * fold, image_size=tuple(site_shape[-2:]), base_channels=m.base_channels,
                    channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
                    attention_resolutions=tuple(m.attention_resolutions), dropout=m.dropout)
        return unet if fold == 1 else SiteChannelFold(unet, c_out)
    if m.backbone == "transformer":
        return SequenceTransformer(c_in, c_out, seq_len=tuple(site_shape), dim=m.dim, depth=m.depth, heads=m.heads,
                                   mlp_ratio=m.mlp_ratio, dropout=m.dropout)
    if m.backbone == "mlp":
        return MLP(c_in, c_out, site_shape=tuple(site_shape), hidden=m.hidden, depth=m.depth, dropout=m.dropout)
    raise ValueError(f"unknown backbone {m.backbone!r}; valid backbones: {', '.join(BACKBONE_NAMES)}")


def build_denoiser(config: DictConfig, process: ForwardProcess, site_shape: tuple[int, ...]) -> NetworkDenoiser:
    backbone = build_backbone(config, process, site_shape)
    return NetworkDenoiser(backbone, process, config.process.parameterization)


def build_proposal(config: DictConfig) -> LogitAlphaProposal:
    return LogitAlphaProposal(loc=config.train.proposal_loc, scale=config.train.proposal_scale)


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
    belong to it) and ``options`` are added on top."""
    configured = name is None or name == config.sample.sampler
    merged = OmegaConf.to_container(config.sample.options, resolve=True) if configured else {}
    merged.update(options or {})
    return build_sampler(config.sample.sampler if name is None else name,
                         num_steps=config.sample.steps if steps is None else steps, **merged)


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; an unavailable explicit CUDA device (no CUDA, or an index past
    the visible devices) is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
