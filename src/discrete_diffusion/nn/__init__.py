"""Neural-network backbones.

Every backbone is an ``nn.Module`` with attributes ``in_channels`` and
``out_channels`` and ``forward(features, noise_level)`` mapping
``(B, C_in, *site_shape)`` float features and a ``(B,)`` float noise level in
``[-1, 1]`` to ``(B, C_out, *site_shape)``; built with ``num_classes > 0`` it also takes ``labels`` (B,)
(``forward(features, noise_level, labels)``, a class embedding added to the noise-level embedding).  The output
head is zero
initialised, so every backbone outputs exactly 0 at initialisation.

``BACKBONES`` maps a config name to the backbone class.
"""

from __future__ import annotations

from torch import nn

from .embeddings import ClassEmbedding, NoiseLevelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .transformer import SequenceTransformer
from .unet import UNet

BACKBONES: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLP, "transformer": SequenceTransformer}

__all__ = ["BACKBONES", "ClassEmbedding", "MLP", "NoiseLevelEmbedding", "SequenceTransformer", "SinusoidalEmbedding",
           "UNet"]
