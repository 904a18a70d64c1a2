"""Likelihood baselines (one model per file) for comparison tables: exact-NLL models trained on the same
splits as the diffusion models."""

from __future__ import annotations

from .ar_transformer import ARTransformer
from .categorical import IndependentCategorical
from .fit import FitResult, FitSettings, fit_exact_model
from .pixelcnn import GatedPixelCNN

__all__ = ["ARTransformer", "FitResult", "FitSettings", "GatedPixelCNN", "IndependentCategorical", "fit_exact_model"]
