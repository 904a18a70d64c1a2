"""Optimizer construction, learning-rate schedule and gradient clipping."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["build_optimizer", "param_groups_for_weight_decay", "warmup_cosine_schedule", "clip_gradients",
           "check_optimizer_state", "check_scheduler_state"]

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


# --------------------------------------------------------------------------- validating saved state

_SHAPED_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg")
# Per-parameter keys torch's optimizers read unconditionally once a parameter has state.
_REQUIRED_STATE = {"Adam": frozenset({"step", "exp_avg", "exp_avg_sq"}),
                   "AdamW": frozenset({"step", "exp_avg", "exp_avg_sq"})}


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """Raise ``ValueError`` (one line, naming ``where`` and the field) unless ``state`` can be given to
    ``optimizer.load_state_dict`` and train on: it is ``{"state": {int: {...}}, "param_groups": [...]}``
    with as many groups and parameters per group as ``optimizer``; every group value that is a number in the
    live group (``lr``, ``betas``, ``eps``, ``weight_decay``, ``initial_lr``...) is present, finite and
    >= 0, and every other value the live group has matches its type; extra group keys are plain scalars;
    per-parameter state belongs to a saved parameter index, all entries have the same keys (for Adam / AdamW
    at least ``step``, ``exp_avg``, ``exp_avg_sq``), moments (``exp_avg``...) have the parameter's shape and
    dtype, every tensor is finite and ``step`` is one real number >= 0."""
    if not isinstance(state, Mapping) or not isinstance(state.get("param_groups"), list) \
            or not isinstance(state.get("state"), Mapping):
        raise ValueError(f"optimizer state in {where} must hold 'state' and a list 'param_groups'")
    groups, saved_groups = optimizer.param_groups, state["param_groups"]
    if len(groups) != len(saved_groups):
        raise ValueError(f"optimizer in {where} has {len(saved_groups)} parameter groups, "
                         f"the given one has {len(groups)}")
    params: dict[int, torch.Tensor] = {}
    for i, (g, sg) in enumerate(zip(groups, saved_groups)):
        if not isinstance(sg, Mapping) or not isinstance(sg.get("params"), list):
            raise ValueError(f"optimizer group {i} in {where} is not an object with a 'params' list")
        indices = sg["params"]
        if len(g["params"]) != len(indices):
            raise ValueError(f"optimizer group {i} in {where} has {len(indices)} parameters, "
                             f"the given one has {len(g['params'])}")
        if not all(_is_int(k) for k in indices) or len(set(indices) | set(params)) != len(params) + len(indices):
            raise ValueError(f"optimizer group {i} in {where} has parameter indices {indices[:8]}; "
                             "expected distinct integers")
        params.update(zip(indices, g["params"]))
        for key, live in g.items():
            if key == "params":
                continue
            if key not in sg:
                if _numeric(live):
                    raise ValueError(f"optimizer group {i} in {where} lacks {key!r}")
                continue
            problem = _unlike(live, sg[key], hyper=True)
            if problem:
                raise ValueError(f"optimizer group {i} in {where}: {key!r} is {_short(sg[key])}; {problem}")
        for key in set(sg) - set(g):
            if sg[key] is not None and not isinstance(sg[key], (bool, str)) and not _finite(sg[key]):
                raise ValueError(f"optimizer group {i} in {where}: unknown key {key!r} holds {_short(sg[key])}")
    required = _REQUIRED_STATE.get(type(optimizer).__name__, frozenset())
    key_sets = set()
    for idx, pstate in state["state"].items():
        if idx not in params or not isinstance(pstate, Mapping):
            raise ValueError(f"optimizer state in {where} has an entry for parameter {_short(idx)}, "
                             f"which no group lists")
        key_sets.add(frozenset(pstate))
        lacking = sorted(required - set(pstate))
        if pstate and lacking:
            raise ValueError(f"optimizer state optim.state.{idx} in {where} lacks {lacking}")
        if len(key_sets) > 1:
            raise ValueError(f"optimizer state in {where} has entries with different keys: "
                             f"{sorted(sorted(k) for k in key_sets)[:2]}")
        for key, value in pstate.items():
            name = f"optim.state.{idx}.{key}"
            if isinstance(value, torch.Tensor):
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    raise ValueError(f"optimizer state {name} in {where} has non-finite values")
                param = params[idx]
                if key in _SHAPED_KEYS and (value.shape != param.shape or value.dtype != param.dtype):
                    raise ValueError(f"optimizer state {name} in {where} is {value.dtype} of shape "
                                     f"{list(value.shape)}; the parameter is {param.dtype} "
                                     f"of shape {list(param.shape)}")
                if key == "step" and (value.numel() != 1 or value.dtype == torch.bool or value.is_complex()
                                      or float(value) < 0):
                    raise ValueError(f"optimizer state {name} in {where} must be one number >= 0")
            elif key in _SHAPED_KEYS or not (value is None or isinstance(value, bool) or _finite(value)):
                raise ValueError(f"optimizer state {name} in {where} is {_short(value)}; expected a tensor or number")
            elif key == "step" and (isinstance(value, bool) or value is None or value < 0):
                raise ValueError(f"optimizer state {name} in {where} is {_short(value)}; expected a number >= 0")


def check_scheduler_state(scheduler: Any, state: Any, where: str) -> None:
    """Raise ``ValueError`` unless ``state`` fits ``scheduler.load_state_dict``: its keys are a subset of the
    live ``scheduler.state_dict()``'s (torch copies them into the scheduler's ``__dict__``, so an unknown key
    could overwrite any attribute), only boolean flags may be absent, and each value has the live value's
    type and length, numbers finite."""
    live = scheduler.state_dict()
    if not isinstance(state, Mapping):
        raise ValueError(f"scheduler state in {where} is {_short(state)}; expected an object")
    unknown = sorted(set(state) - set(live), key=str)
    if unknown:
        raise ValueError(f"scheduler state in {where} has unknown keys {unknown[:8]}")
    lacking = sorted(k for k, v in live.items() if not isinstance(v, bool) and k not in state)
    if lacking:
        raise ValueError(f"scheduler state in {where} lacks {lacking}")
    for key, value in state.items():
        problem = _unlike(live[key], value, hyper=False)
        if problem:
            raise ValueError(f"scheduler state in {where}: {key!r} is {_short(value)}; {problem}")
    for key in ("last_epoch", "_step_count"):
        if key in state and state[key] < -1:
            raise ValueError(f"scheduler state in {where}: {key!r} is {state[key]}; expected >= -1")


def _unlike(live: Any, saved: Any, hyper: bool) -> str | None:
    """Why ``saved`` cannot stand in for ``live`` (None when it can). Numbers must be finite (and >= 0 for
    optimizer hyperparameters), bools bools, sequences of the same length, tensors of the same shape."""
    if isinstance(live, bool):
        return None if isinstance(saved, bool) else "expected true or false"
    if isinstance(live, (int, float)):
        if not _finite(saved):
            return "expected a finite number"
        if hyper and saved < 0:
            return "expected a number >= 0"
        if isinstance(live, int) and not isinstance(saved, int):
            return "expected an integer"
        return None
    if isinstance(live, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != live.shape:
            return f"expected a tensor of shape {list(live.shape)}"
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            return "expected finite values"
        return None
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            return f"expected a sequence of {len(live)}"
        for a, b in zip(live, saved):
            problem = _unlike(a, b, hyper)
            if problem:
                return problem
        return None
    if isinstance(live, str):
        return None if isinstance(saved, str) else "expected a string"
    if live is None:  # an unset option (e.g. foreach=None): any plain scalar
        return None if saved is None or isinstance(saved, (bool, str)) or _finite(saved) else "expected a scalar"
    if isinstance(live, Mapping):
        return None if isinstance(saved, Mapping) else "expected an object"
    return None


def _numeric(x: Any) -> bool:
    if isinstance(x, (list, tuple)):
        return bool(x) and all(_numeric(v) for v in x)
    return isinstance(x, (int, float, torch.Tensor)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."
