"""The files of a checkpoint (see ``checkpoint``): the manifest format, reading and verifying the tensors
file (safetensors only, SHA-256 checked), and pruning old checkpoints and crashed saves' leftovers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load

from .atomic_io import fsync_dir, sha256_file, unlink_quietly

FORMAT = "discrete_diffusion.checkpoint"
FORMAT_VERSION = 1
_MANIFEST_RE = re.compile(r"^ckpt_(\d+)\.json$")
_TENSORS_RE = re.compile(r"^ckpt_(\d+)\.[0-9a-f]+\.safetensors$")
_TMP_RE = re.compile(r"^\.ckpt_.*\.tmp$")


def _manifests(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.iterdir():
        m = _MANIFEST_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return out


def _read_manifest(manifest: Path) -> dict[str, Any]:
    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt checkpoint manifest {manifest}: {exc}") from exc
    required = ("format", "step", "tensors_file", "tensors_sha256", "rng")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or any(k not in meta for k in required):
        raise ValueError(f"{manifest} is not a {FORMAT} manifest")
    if not isinstance(meta["tensors_file"], str) or not _TENSORS_RE.match(meta["tensors_file"]):
        raise ValueError(f"{manifest} names an invalid tensors file {meta['tensors_file']!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{manifest} has format_version {meta['format_version']} > supported {FORMAT_VERSION}")
    return meta


def _verify_tensors(manifest: Path, meta: Mapping[str, Any]) -> Path:
    tensors_path = manifest.parent / meta["tensors_file"]
    if not tensors_path.is_file():
        raise ValueError(f"tensors file {tensors_path} named by {manifest} is missing")
    digest = sha256_file(tensors_path)
    if digest != meta["tensors_sha256"]:
        raise ValueError(
            f"corrupt tensors file {tensors_path}: SHA-256 {digest} != recorded {meta['tensors_sha256']}"
        )
    return tensors_path


def _load_tensors(manifest: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read the tensors file once, check its SHA-256, parse it with safetensors (never pickle)."""
    tensors_path = manifest.parent / meta["tensors_file"]
    try:
        data = tensors_path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"tensors file {tensors_path} named by {manifest} is missing") from None
    except OSError as exc:
        raise ValueError(f"cannot read tensors file {tensors_path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["tensors_sha256"]:
        raise ValueError(f"corrupt tensors file {tensors_path}: SHA-256 {digest} != recorded {meta['tensors_sha256']}")
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError(f"cannot read tensors file {tensors_path}: not a safetensors file ({exc})") from exc


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous tensors with no shared storage (safetensors refuses aliasing)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach()
        key = (t.device, t.untyped_storage().data_ptr())
        if not t.is_contiguous() or (t.numel() and key in seen):
            t = t.contiguous().clone()
        elif t.numel():
            seen.add(key)
        out[name] = t
    return out


def _prune(directory: Path, current: Path, keep_last: int | None) -> None:
    """Drop checkpoints beyond ``keep_last`` (never ``current``), unreferenced tensors files
    up to the current step and temp files of crashed saves."""
    current_step = int(_MANIFEST_RE.match(current.name).group(1))
    readable: list[tuple[int, Path, str]] = []
    for step, manifest in _manifests(directory):
        try:
            tensors_file = json.loads(manifest.read_text(encoding="utf-8"))["tensors_file"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(tensors_file, str) and _TENSORS_RE.match(tensors_file):
            readable.append((step, manifest, tensors_file))
    readable.sort(reverse=True)
    if keep_last is not None and keep_last > 0:
        others = [r for r in readable if r[1] != current]
        doomed = others[keep_last - 1:]
        for _, manifest, _ in doomed:  # manifest first: the checkpoint stops existing
            unlink_quietly(manifest)
        if doomed:
            fsync_dir(directory)
        for _, _, tensors_file in doomed:
            unlink_quietly(directory / tensors_file)
        readable = [r for r in readable if r not in doomed]
    referenced = {r[2] for r in readable}
    for p in directory.iterdir():
        m = _TENSORS_RE.match(p.name)
        if m and p.name not in referenced and int(m.group(1)) <= current_step:
            unlink_quietly(p)
        elif _TMP_RE.match(p.name):
            unlink_quietly(p)
