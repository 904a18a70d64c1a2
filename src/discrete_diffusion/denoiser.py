"""The denoiser: a callable (x_t, lam) -> Prediction of p(x0 | x_t).

Anything with this signature drives the losses and samplers: a trained network wrapped by
``NetworkDenoiser``, or the exact enumeration oracle of ``discrete_diffusion.oracle``.
"""

from __future__ import annotations

from itertools import chain
from typing import Protocol

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

    def forward(self, xt: Tensor, lam: Tensor) -> Prediction:
        output = self.backbone(backbone_input(self.process, self.backbone, xt, lam), noise_level_input(lam))
        return self.process.prediction_from_output(output.float(), xt, lam, self.parameterization)


def denoiser_device(denoiser: object, generator: torch.Generator | None = None) -> torch.device:
    """The device to compute on when the caller names none: that of the denoiser's first parameter (or buffer) when
    it is an ``nn.Module`` holding tensors (``NetworkDenoiser``), else the generator's device, else CPU."""
    if isinstance(denoiser, nn.Module):
        for tensor in chain(denoiser.parameters(), denoiser.buffers()):
            return tensor.device
    return generator.device if generator is not None else torch.device("cpu")
