"""State-dict helpers shared by checkpoint files and training: unwrap a wrapped model, compare two
name -> tensor maps, check the non-tensor fields of an EMA record."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["unwrap_model", "check_ema_fields", "compare_tensors"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel``/``DataParallel`` (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers so state-dict names do not depend on how the model is run."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        return model


def check_ema_fields(state: Any) -> None:
    """Check the non-tensor EMA state: ``num_updates`` an int >= 0 (required), ``decay`` a finite number in
    [0, 1] and ``warmup`` a bool (both optional).  Raises ``ValueError`` naming the bad field."""
    if not isinstance(state, Mapping):
        raise ValueError(f"EMA state is a {type(state).__name__}; expected an object with num_updates, decay, warmup")
    n = state.get("num_updates")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1 << 62:
        raise ValueError(f"EMA num_updates is {n!r}; expected a non-negative integer")
    if "decay" in state:
        d = state["decay"]
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not (math.isfinite(d) and 0.0 <= d <= 1.0):
            raise ValueError(f"EMA decay is {d!r}; expected a number in [0, 1]")
    if "warmup" in state and not isinstance(state["warmup"], bool):
        raise ValueError(f"EMA warmup is {state['warmup']!r}; expected true or false")


def compare_tensors(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], dtypes: bool = False) -> list[str]:
    """Human-readable differences between two name -> tensor maps (names and shapes; dtypes too when
    ``dtypes``).  A value of ``got`` that is not a tensor is reported, never touched."""
    problems: list[str] = []
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    for name in sorted(set(expected) & set(got)):
        if not isinstance(got[name], torch.Tensor):
            problems.append(f"{name!r} is a {type(got[name]).__name__}, not a tensor")
            continue
        want, have = tuple(expected[name].shape), tuple(got[name].shape)
        if want != have:
            problems.append(f"shape mismatch for {name!r}: expected {list(want)}, got {list(have)}")
        elif dtypes and expected[name].dtype != got[name].dtype:
            problems.append(f"dtype mismatch for {name!r}: expected {expected[name].dtype}, got {got[name].dtype} "
                            "(tensors are never cast on load)")
    return problems
