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


class NetworkDenoiser(nn.Module):
    """Wraps a backbone (features (B, C_in, *sites), noise level (B,)) -> (B, C_out, *sites) with a
    process's input features and output parameterisation.

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
        features = self.process.network_features(xt, lam)
        output = self.backbone(features, noise_level_input(lam))
        return self.process.prediction_from_output(output.float(), xt, lam, self.parameterization)


def denoiser_device(denoiser: object, generator: torch.Generator | None = None) -> torch.device:
    """The device to compute on when the caller names none: that of the denoiser's first parameter (or buffer) when
    it is an ``nn.Module`` holding tensors (``NetworkDenoiser``), else the generator's device, else CPU."""
    if isinstance(denoiser, nn.Module):
        for tensor in chain(denoiser.parameters(), denoiser.buffers()):
            return tensor.device
    return generator.device if generator is not None else torch.device("cpu")
