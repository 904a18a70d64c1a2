"""Likelihood baselines (one model per file) for comparison tables: exact-NLL models trained on the same
splits as the diffusion models."""

from __future__ import annotations

from .ar_transformer import ARTransformer
from .categorical import IndependentCategorical
from .pixelcnn import GatedPixelCNN

__all__ = ["ARTransformer", "GatedPixelCNN", "IndependentCategorical"]
