"""Optimizer construction, learning-rate schedule and gradient clipping."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_optimizer", "param_groups_for_weight_decay", "warmup_cosine_schedule", "clip_gradients"]

# Modules whose weights are scale/shift parameters rather than projections.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def param_groups_for_weight_decay(
    model: nn.Module, weight_decay: float, decay_embeddings: bool = False
) -> list[dict]:
    """Split trainable parameters into ``[decay_group, no_decay_group]``.

    No weight decay for: parameters with fewer than 2 dimensions (biases, norm gains,
    scalars), every parameter of a normalisation module, and -- unless
    ``decay_embeddings`` -- ``nn.Embedding`` weights.  Shared (tied) parameters appear
    once; if any owner exempts a tied parameter, it is exempt.  Both groups are always
    present (possibly empty) so the optimizer's group layout does not depend on the model,
    and each carries a ``"name"`` key (``"decay"`` / ``"no_decay"``).
    """
    exempt: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        is_emb = isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and not decay_embeddings
        for p in module.parameters(recurse=False):
            if is_norm or is_emb or p.ndim < 2:
                exempt.add(id(p))
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in exempt else decay).append(p)
    return [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    decay_embeddings: bool = False,
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters with the grouping of
    :func:`param_groups_for_weight_decay` (group 0 decays, group 1 does not)."""
    groups = param_groups_for_weight_decay(model, weight_decay, decay_embeddings)
    if not groups[0]["params"] and not groups[1]["params"]:
        raise ValueError("model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int | None,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warmup followed by cosine decay, as a ``LambdaLR`` (step it once per update).

    The multiplier of the base learning rate at scheduler step ``s`` is:

    * ``(s + 1) / warmup_steps`` for ``s < warmup_steps`` (so the very first update
      already uses a non-zero rate and step ``warmup_steps - 1`` reaches 1);
    * ``min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + cos(pi * p))`` afterwards, with
      ``p = (s - warmup_steps) / (total_steps - warmup_steps)`` clipped to ``[0, 1]``:
      1 at the end of warmup, ``min_lr_ratio`` from ``total_steps`` on;
    * constant 1 after warmup when ``total_steps`` is ``0`` or ``None``.

    The lambda is a plain closure, so the scheduler's ``state_dict`` holds only counters
    and learning rates (JSON-able).
    """
    warmup = max(0, int(warmup_steps))
    total = int(total_steps) if total_steps else 0
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
    if total and total < warmup:
        raise ValueError(f"total_steps ({total}) must be >= warmup_steps ({warmup})")
    decay_len = max(1, total - warmup)

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not total:
            return 1.0
        progress = min(1.0, max(0.0, (step - warmup) / decay_len))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, multiplier)


def clip_gradients(model: nn.Module | Iterable[torch.Tensor], max_norm: float | None) -> float:
    """Clip the global L2 norm of the gradients to ``max_norm`` and return the norm
    measured *before* clipping (``nan``/``inf`` are returned as-is, never raised).

    ``max_norm`` of ``None``, ``0`` or ``inf`` only measures the norm.  Returns ``0.0``
    when no parameter has a gradient.
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if not max_norm or math.isinf(max_norm):
        device = grads[0].grad.device
        norms = [torch.linalg.vector_norm(p.grad.detach(), 2.0).float().to(device) for p in grads]
        norm = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        return float(norm)
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm, error_if_nonfinite=False))
