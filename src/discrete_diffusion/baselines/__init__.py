"""Baselines (one model per file) for comparison tables: exact-NLL models trained on the same splits as the
diffusion models, and a continuous Gaussian DDPM for count data (samples only)."""

from __future__ import annotations

from .ar_transformer import ARTransformer
from .categorical import IndependentCategorical
from .fit import FitResult, FitSettings, fit_exact_model
from .gaussian_ddpm import GaussianDDPM
from .pixelcnn import GatedPixelCNN

__all__ = ["ARTransformer", "FitResult", "FitSettings", "GatedPixelCNN", "GaussianDDPM", "IndependentCategorical",
           "fit_exact_model"]
