"""Exponential moving average (EMA) of a model's floating-point parameters and buffers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..runs.tensors import check_ema_fields, compare_tensors, unwrap_model

__all__ = ["EMA", "unwrap_model", "check_ema_fields", "compare_tensors"]


def _float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point parameters and buffers, by state-dict name (detached)."""
    return {
        name: t
        for name, t in unwrap_model(model).state_dict().items()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    }


class EMA:
    """Shadow copy of a model's floating-point parameters and buffers.

    On the update with index ``n`` (``n = 0`` for the first call) the shadow becomes
    ``shadow = d * shadow + (1 - d) * current`` with ``d = min(decay, (1 + n) / (10 + n))``
    when ``warmup`` is true and ``d = decay`` otherwise.  Shadow tensors live on the
    parameter's device and are kept in at least float32 (so a bf16 model still averages
    accurately); :meth:`copy_to` casts back to the model's dtype.

    Args:
        model: the model to track (DDP / ``torch.compile`` wrappers are unwrapped).
        decay: the asymptotic EMA decay, in ``[0, 1]``.
        warmup: use the ``(1 + n) / (10 + n)`` warmup of the decay.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: t.detach().to(torch.promote_types(t.dtype, torch.float32), copy=True)
            for name, t in _float_state(model).items()
        }

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards the model's current weights (call after each optimizer step)."""
        d = self.current_decay()
        current = self._matching_state(model)
        for name, s in self.shadow.items():
            s.mul_(d).add_(current[name].to(device=s.device, dtype=s.dtype), alpha=1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's floating-point parameters and buffers with the EMA weights."""
        current = self._matching_state(model)
        for name, s in self.shadow.items():
            current[name].copy_(s)

    @contextmanager
    def swap_into(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the EMA weights into ``model``; the originals are restored on exit
        (also when the body raises).  Yields ``model``."""
        backup = {name: t.detach().clone() for name, t in self._matching_state(model).items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                current = _float_state(model)
                for name, t in backup.items():
                    current[name].copy_(t)

    def to(self, device: torch.device | str) -> "EMA":
        """Move the shadow tensors to ``device`` (in place); returns ``self``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{"decay": float, "warmup": bool, "num_updates": int, "shadow": {name: Tensor}}``.

        The shadow tensors are the live ones (not copies), like ``nn.Module.state_dict``."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` output (tensors may be on any device).

        Raises ``ValueError`` naming missing / unexpected / shape- or dtype-mismatched tensors or a bad
        ``decay`` / ``warmup`` / ``num_updates`` (see :func:`check_ema_fields`); nothing is modified then.
        """
        check_ema_fields(state)
        shadow = state["shadow"]
        problems = compare_tensors(self.shadow, shadow, dtypes=True)
        if problems:
            raise ValueError("EMA state does not match the model: " + "; ".join(problems))
        for name, s in self.shadow.items():
            s.copy_(shadow[name])
        self.num_updates = state["num_updates"]
        if "decay" in state:
            self.decay = float(state["decay"])
        if "warmup" in state:
            self.warmup = state["warmup"]

    def _matching_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        current = _float_state(model)
        problems = compare_tensors(self.shadow, current)
        if problems:
            raise ValueError("model does not match the EMA shadow: " + "; ".join(problems))
        return current


