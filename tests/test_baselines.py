"""The exact-likelihood baselines: PixelCNN causality and the library's exact-NLL training loop."""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.baselines import ARTransformer, GatedPixelCNN
from discrete_diffusion.baselines.fit import FitSettings, bits_per_dim, fit_exact_model


def test_pixelcnn_logits_at_a_pixel_ignore_that_pixel_and_later_ones():
    """Raster-order causality: changing pixel p must leave the logits of pixels 0..p unchanged, and
    (with enough layers) must change some later pixel's logits."""
    torch.manual_seed(0)
    model = GatedPixelCNN(5, channels=8, num_layers=6, dropout=0.0, head_channels=16).eval()
    x = torch.randint(0, 5, (1, 5, 5))
    base = model(x)[0].reshape(5, 25)
    for p in (0, 7, 12, 24):
        changed = x.clone().reshape(1, 25)
        changed[0, p] = (changed[0, p] + 1) % 5
        out = model(changed.reshape(1, 5, 5))[0].reshape(5, 25)
        torch.testing.assert_close(out[:, : p + 1], base[:, : p + 1], rtol=0, atol=1e-6)
        if p < 24:
            assert (out[:, p + 1:] - base[:, p + 1:]).abs().max() > 1e-6


def _repeated_token_data(n: int, seed: int) -> torch.Tensor:
    """Sequences (n, 6) whose six tokens all equal one uniform draw from 0..2: entropy log 3 per sequence."""
    first = torch.randint(0, 3, (n, 1), generator=torch.Generator().manual_seed(seed))
    return first.expand(n, 6).clone()


def test_fit_exact_model_learns_and_keeps_the_best_weights(tmp_path):
    torch.manual_seed(0)
    model = ARTransformer(3, 6, dim=32, depth=2, heads=2, dropout=0.0)
    train, val = _repeated_token_data(256, 1), _repeated_token_data(64, 2)
    settings = FitSettings(steps=120, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=40, ema_decay=0.9)
    logs: list[str] = []
    result = fit_exact_model(model, train, val, settings, tmp_path / "best.safetensors", log=logs.append)
    assert result.steps_done == 120 and [row[0] for row in result.val_curve] == [40, 80, 120]
    assert len(logs) == 3 and "val (EMA)" in logs[0]
    entropy_bits = math.log2(3) / 6        # the data's entropy per token: the best possible NLL
    independent_bits = math.log2(3)        # what a model ignoring the context gets
    assert result.best_val_bits_per_dim == pytest.approx(entropy_bits, abs=0.03)   # val frequencies are not exact
    assert result.best_val_bits_per_dim < 0.2 * independent_bits
    # the model returned holds the best EMA weights: its validation NLL is the best one recorded
    recomputed = float(bits_per_dim(model, val, "cpu").mean())
    assert recomputed == pytest.approx(result.best_val_bits_per_dim, abs=1e-6)
    assert result.best_val_bits_per_dim == min(row[1] for row in result.val_curve)


def test_fit_settings_and_inputs_are_validated(tmp_path):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        FitSettings(steps=0)
    model = ARTransformer(3, 6, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="non-empty train and val"):
        fit_exact_model(model, _repeated_token_data(8, 0), torch.zeros(0, 6, dtype=torch.long), FitSettings(steps=1),
                        tmp_path / "w.safetensors")
