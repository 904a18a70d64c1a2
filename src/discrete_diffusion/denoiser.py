"""The denoiser: a callable (x_t, lam) -> Prediction of p(x0 | x_t).

Anything with this signature drives the losses and samplers: a trained network wrapped by
``NetworkDenoiser``, or the exact enumeration oracle of ``discrete_diffusion.oracle``. A class-conditional model
takes labels as well, ``(x_t, lam, labels) -> Prediction``; ``ConditionalDenoiser`` binds the class and gives back
the plain signature, so samplers need no change (guidance wrappers: ``discrete_diffusion.guidance``).
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .processes.base import ForwardProcess, Prediction

#: The network sees logit(alpha) clamped to [-NOISE_LEVEL_RANGE, NOISE_LEVEL_RANGE], divided by it.
NOISE_LEVEL_RANGE = 20.0


class Denoiser(Protocol):
    """x_t: (B, *sites) long, lam = logit(alpha): (B,) float. Returns the Prediction for every site."""

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction: ...


def noise_level_input(lam: Tensor) -> Tensor:
    """The scalar conditioning the backbone receives: logit(alpha) clamped and scaled into [-1, 1]."""
    return lam.float().clamp(-NOISE_LEVEL_RANGE, NOISE_LEVEL_RANGE) / NOISE_LEVEL_RANGE


def backbone_input(process: ForwardProcess, backbone: nn.Module, xt: Tensor, lam: Tensor) -> Tensor:
    """What ``backbone`` reads for x_t: x_t itself, (B, *sites) long, when the process's input is tokens
    (``input_kind == "tokens"``, its features being one_hot(x_t)) and the backbone embeds indices (its
    ``accepts_tokens`` is True); otherwise ``process.network_features(xt, lam)``, (B, C_in, *sites) float.
    The two give the same output for the same weights (an index picks the input layer's column that the
    one-hot vector would), but the token path never builds the (B, C_in, *sites) one-hot tensor."""
    if process.input_kind == "tokens" and getattr(backbone, "accepts_tokens", False):
        return xt
    return process.network_features(xt, lam)


class NetworkDenoiser(nn.Module):
    """Wraps a backbone (features (B, C_in, *sites), or x_t (B, *sites) long for a token backbone; noise level
    (B,)) -> (B, C_out, *sites) with a process's input (``backbone_input``) and output parameterisation.

    Conditioning on logit(alpha) rather than on t makes a trained model usable with any schedule's time
    grid at sampling time.
    """

    def __init__(self, backbone: nn.Module, process: ForwardProcess, parameterization: str) -> None:
        super().__init__()
        process.check_parameterization(parameterization)
        self.backbone = backbone
        self.process = process
        self.parameterization = parameterization

    @property
    def num_classes(self) -> int:
        """C of a class-conditional backbone (its class embedding has C + 1 rows, the last the null class), else 0."""
        return num_classes_of(self.backbone)

    def forward(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None) -> Prediction:
        """x_t (B, *sites) long, lam (B,), labels (B,) long in 0..C (C = the null class; only for a conditional
        backbone, None = the null class) -> the Prediction of p(x0 | x_t[, c])."""
        inputs = (backbone_input(self.process, self.backbone, xt, lam), noise_level_input(lam))
        output = self.backbone(*inputs) if labels is None else self.backbone(*inputs, labels)
        return self.process.prediction_from_output(output.float(), xt, lam, self.parameterization)


def num_classes_of(backbone: nn.Module) -> int:
    """The number of classes C of a backbone's class embedding (0 when it has none)."""
    table = getattr(backbone, "class_embedding", None)
    if table is None and hasattr(backbone, "backbone"):       # a wrapper such as builders.SiteChannelFold
        table = getattr(backbone.backbone, "class_embedding", None)
    return 0 if table is None else int(table.num_classes)


class ConditionalModel(Protocol):
    """A class-conditional denoiser: (x_t (B, *sites), lam (B,), labels (B,) in 0..C) -> Prediction, where label C
    is the null class (unconditional). ``NetworkDenoiser`` with a conditional backbone and
    ``oracle.ConditionalOracle`` are such models."""

    num_classes: int

    def __call__(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None) -> Prediction: ...


def check_labels(labels: Tensor | int, num_classes: int, allow_null: bool = True) -> Tensor:
    """Labels as a long tensor (0-d or (B,)); ValueError naming the allowed range when one is out of it (C = the null
    class, allowed when ``allow_null``) or when the model is unconditional (num_classes = 0)."""
    if num_classes < 1:
        raise ValueError("this model is unconditional (trained with model.num_classes = 0): it takes no class or "
                         "guidance; train with model.num_classes > 0")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.dim() > 1:
        raise ValueError(f"class labels must be an integer or a (B,) integer tensor, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    top = num_classes if allow_null else num_classes - 1
    if labels.numel() and bool(((labels < 0) | (labels > top)).any()):
        bad = int(labels[(labels < 0) | (labels > top)].reshape(-1)[0])
        raise ValueError(f"unknown class {bad}: this model has classes 0..{num_classes - 1}"
                         + (f" ({num_classes} = the null class)" if allow_null else ""))
    return labels.long()


class ConditionalDenoiser:
    """A plain denoiser (x_t, lam) -> Prediction of p(x0 | x_t, c) with the class bound: ``labels`` is one class
    for every row (an int or 0-d tensor, any batch size) or (B,) long, one per row of every call (then each call
    must have B rows: a sampler's ``cache`` option, which calls the denoiser on a subset of rows, needs one class).
    Label C = num_classes is the null class: p(x0 | x_t) of a model trained with ``train.cond_dropout`` > 0.
    ``num_classes`` defaults to ``model.num_classes`` (give it for a wrapper without the attribute, such as DDP)."""

    def __init__(self, model: ConditionalModel, labels: Tensor | int, num_classes: int | None = None) -> None:
        self.model = model
        self.num_classes = int(getattr(model, "num_classes", 0) if num_classes is None else num_classes)
        self.labels = check_labels(labels, self.num_classes)

    def __call__(self, xt: Tensor, lam: Tensor, **kwargs: Any) -> Prediction:
        """``kwargs`` (e.g. a block-diffusion model's ``clean``) are passed on to the model."""
        batch = xt.shape[0]
        if self.labels.dim() == 0:
            labels = self.labels.expand(batch)
        elif self.labels.shape[0] != batch:
            raise ValueError(f"the bound labels have {self.labels.shape[0]} rows but x_t has {batch} (per-row "
                             "classes do not work with a sampler that evaluates a subset of rows, such as cache=True)")
        else:
            labels = self.labels
        return self.model(xt, lam, labels.to(xt.device), **kwargs)


def denoiser_device(denoiser: object, generator: torch.Generator | None = None) -> torch.device:
    """The device to compute on when the caller names none: that of the denoiser's first parameter (or buffer) when
    it is an ``nn.Module`` holding tensors (``NetworkDenoiser``), else the generator's device, else CPU."""
    if isinstance(denoiser, nn.Module):
        for tensor in chain(denoiser.parameters(), denoiser.buffers()):
            return tensor.device
    return generator.device if generator is not None else torch.device("cpu")
