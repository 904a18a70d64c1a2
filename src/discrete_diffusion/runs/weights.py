"""Reading checkpoints for inference: find the newest complete checkpoint of a directory, load its (EMA)
weights into a model after validating every tensor, and the one allowed reader of third-party ``.pt`` files.
The on-disk format is described in :mod:`discrete_diffusion.train.checkpoint`."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoint_files import _load_tensors, _manifests, _read_manifest, _strip, _verify_tensors
from .state_codec import check_config, decode_state
from .tensors import compare_tensors, unwrap_model

log = logging.getLogger(__name__)

__all__ = ["find_latest_checkpoint", "load_model_weights", "safe_torch_load"]


def find_latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """Manifest path of the newest *complete* checkpoint in ``directory``, or ``None``.

    Checkpoints are tried newest step first; one whose manifest is too large, does not
    parse or fails the schema check (any field of the wrong type or out of range), or whose
    tensors file is missing or fails the recorded size or SHA-256, is skipped (with a log
    warning) in favour of the next older one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    for _, manifest in sorted(_manifests(directory), reverse=True):
        try:
            meta = _read_manifest(manifest)
            _verify_tensors(manifest, meta)
        except (ValueError, OSError) as exc:
            log.warning("skipping checkpoint %s: %s", manifest, exc)
            continue
        return manifest
    return None


def load_model_weights(path: str | os.PathLike, model: nn.Module, use_ema: bool = True,
                       expected_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load weights for inference: the EMA weights when ``use_ema`` and the checkpoint has
    them (non-float buffers come from the raw model), else the raw model weights.

    ``expected_config`` is checked as in :func:`load_checkpoint` before any tensor is read, except that
    keys absent from the checkpoint's config are not compared (options added after it was trained).
    Like :func:`load_checkpoint` it refuses non-finite weights and tensors of another dtype than the model's
    (EMA shadows: the model's dtype promoted to at least float32) before touching the model.
    Returns the manifest with ``"weights"`` set to ``"ema"`` or ``"model"``.
    Raises ``ValueError`` like :func:`load_checkpoint`.
    """
    manifest = _resolve(path)
    meta = _read_manifest(manifest)
    if expected_config is not None:
        check_config(meta.get("config"), expected_config, manifest, absent_ok=True)
    tensors = _load_tensors(manifest, meta)
    _check_finite(tensors, manifest)
    target = unwrap_model(model)
    state = _strip(tensors, "model.")
    expected = target.state_dict()
    _raise_on_mismatch("model", expected, state, manifest)
    use = "ema" if use_ema and meta.get("ema") is not None else "model"
    if use == "ema":
        shadow = _strip(tensors, "ema.")
        # EMA shadows are kept in at least float32 (see EMA); that one cast is the only one allowed.
        want = {k: v.to(torch.promote_types(v.dtype, torch.float32)) for k, v in expected.items()
                if v.is_floating_point()}
        _raise_on_mismatch("EMA", want, shadow, manifest)
        state.update(shadow)
    target.load_state_dict(state, strict=True)
    meta["extra"] = _decode(meta.get("extra") or {}, tensors, manifest)
    meta["weights"] = use
    return meta


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file without executing code: ``torch.load(..., weights_only=True)``, which
    unpickles only tensors and plain containers and refuses any other object (such as a pickled payload
    that would run code). Checkpoints of this library never need it (safetensors + JSON); it is the one
    allowed way to read third-party ``.pt`` / ``.pth`` / ``.bin`` tensors.

    Raises ValueError naming the file when it is not a plain tensor file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tensor file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError for a non-torch file, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"refusing to load {path}: not a plain tensor file ({first}); only tensors, "
                         "safetensors and JSON are loaded, never arbitrary pickled objects") from None


def _raise_on_mismatch(what: str, expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], manifest: Path) -> None:
    problems = compare_tensors(expected, got, dtypes=True)
    if problems:
        raise ValueError(f"{what} tensors in {manifest} do not match: " + "; ".join(problems))


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor], manifest: Path) -> Any:
    try:
        return decode_state(obj, tensors)
    except ValueError as exc:
        raise ValueError(f"checkpoint {manifest}: {exc}") from None


def _check_finite(tensors: Mapping[str, torch.Tensor], manifest: Path) -> None:
    """Refuse NaN / inf in any model, EMA or optimizer tensor (they would train or sample garbage silently)."""
    bad = [name for name, t in tensors.items()
           if name.startswith(("model.", "ema.", "optim.")) and t.is_floating_point()
           and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"checkpoint {manifest} holds non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                         f"{', '.join(sorted(bad)[:5])}{' ...' if len(bad) > 5 else ''}")


def _resolve(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        latest = find_latest_checkpoint(p)
        if latest is None:
            raise FileNotFoundError(f"no complete checkpoint in {p}")
        return latest
    m = re.match(r"^(ckpt_\d+)", p.name)
    manifest = p.with_name(m.group(1) + ".json") if m else p
    if not manifest.is_file():
        raise FileNotFoundError(f"checkpoint manifest {manifest} does not exist")
    return manifest
