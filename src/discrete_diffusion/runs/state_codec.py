"""Pickle-free encoding of state dicts: JSON for structure, a tensor dict for tensors.

A tensor becomes ``{"__tensor__": "<name>"}`` (the tensor goes into the dict saved as safetensors), a
tuple ``{"__tuple__": [...]}``, and a dict with non-string keys (optimizer state indexed by int)
``{"__items__": [[key, value], ...]}``, so optimizer, scheduler and RNG state round-trip exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["encode_state", "decode_state", "plain_json", "config_hash", "check_config"]


def encode_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors are moved into ``tensors`` under ``prefix``-paths."""
    if isinstance(obj, torch.Tensor):
        name = prefix if prefix not in tensors else f"{prefix}#{len(tensors)}"
        tensors[name] = obj
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalars
        return obj.item()
    if type(obj).__module__.startswith("omegaconf"):
        return encode_state(plain_json(obj), prefix, tensors)
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_state(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        return {
            "__items__": [[encode_state(k, f"{prefix}.key", {}), encode_state(v, f"{prefix}.{k}", tensors)]
                          for k, v in obj.items()]
        }
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} without pickle")


def decode_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_state`.  A malformed marker (``__tensor__`` naming no tensor or not a string,
    ``__tuple__`` / ``__items__`` not a list of the right form, an unhashable key) raises ``ValueError``.
    The caller bounds the nesting depth (the manifest reader refuses deep JSON)."""
    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        if "__tensor__" in obj:
            name = obj["__tensor__"]
            if not isinstance(name, str) or name not in tensors:
                raise ValueError(f"checkpoint references tensor {name!r}, which is not in the tensors file")
            return tensors[name]
        if "__tuple__" in obj:
            if not isinstance(obj["__tuple__"], list):
                raise ValueError(f"malformed checkpoint state: __tuple__ holds a {type(obj['__tuple__']).__name__}")
            return tuple(decode_state(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            items = obj["__items__"]
            if not isinstance(items, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in items):
                raise ValueError("malformed checkpoint state: __items__ must be a list of [key, value] pairs")
            out = {}
            for k, v in items:
                key = _hashable(decode_state(k, tensors))
                if not _plain_key(key):
                    raise ValueError(f"malformed checkpoint state: key {key!r} is not a number, string or tuple")
                out[key] = decode_state(v, tensors)
            return out
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _plain_key(key: Any) -> bool:
    if isinstance(key, tuple):
        return all(_plain_key(k) for k in key)
    return key is None or isinstance(key, (bool, int, float, str))


def plain_json(obj: Any) -> Any:
    """``obj`` (dict / OmegaConf config / tuples) as plain JSON types; TypeError otherwise."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        obj = OmegaConf.to_container(obj, resolve=True)
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable")


def config_hash(config: Any) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()




def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def check_config(stored: Any, expected: Any, manifest: Path, absent_ok: bool = False) -> None:
    if stored is None:
        raise ValueError(f"checkpoint {manifest} stores no config to compare with expected_config")
    want, have = _flatten(plain_json(expected)), _flatten(stored)
    missing = object()
    diffs = []
    for key, value in want.items():
        got = have.get(key, missing)
        if got is missing and absent_ok:
            continue
        if got is missing or not _same_value(got, value):
            shown = "<absent>" if got is missing else repr(got)
            diffs.append(f"{key} (checkpoint: {shown}, expected: {value!r})")
    if diffs:
        raise ValueError(f"checkpoint {manifest} config differs on: " + "; ".join(diffs))


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b
