"""The files of a checkpoint (see ``checkpoint``): the manifest format, reading and verifying the tensors
file (safetensors only, SHA-256 checked), and pruning old checkpoints and crashed saves' leftovers."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load

from .atomic_io import fsync_dir, sha256_file, unlink_quietly
from .json_reader import loads_bounded
from .tensors import check_ema_fields

FORMAT = "discrete_diffusion.checkpoint"
FORMAT_VERSION = 1
_MANIFEST_RE = re.compile(r"^ckpt_(\d+)\.json$")
_TENSORS_RE = re.compile(r"^ckpt_(\d+)\.[0-9a-f]+\.safetensors$")
_TMP_RE = re.compile(r"^\.ckpt_.*\.tmp$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("format", "format_version", "step", "tensors_file", "tensors_sha256", "rng")
# Measured: the default digits run's manifest is 34 KB (optimizer state ~277 bytes per parameter tensor,
# RNG ~9.6 KB); 4 MiB leaves room for ~15,000 parameter tensors.  A larger file is refused before it is read.
MAX_MANIFEST_BYTES = 4 << 20
MAX_MANIFEST_DEPTH = 32  # real manifests nest < 10 levels; bounds the recursion of the state decoder
MAX_STEP = 10**12  # a step count no run reaches; also exact in float64 (the distributed step agreement)


def _manifests(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.iterdir():
        m = _MANIFEST_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return out


def _read_manifest(manifest: Path) -> dict[str, Any]:
    """Parse and validate a manifest without trusting it.

    The size is checked (``fstat`` of the open file, then a read bounded to
    ``MAX_MANIFEST_BYTES + 1`` bytes) before anything is parsed, the JSON nesting depth is bounded, and every
    top-level field is checked for type and range (:func:`_check_schema`).  Any fault raises ``ValueError``
    with a one-line message naming the file, so ``find_latest_checkpoint`` can skip it."""
    try:
        with open(manifest, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise ValueError(f"corrupt checkpoint manifest {manifest}: {size} bytes, more than the "
                                 f"{MAX_MANIFEST_BYTES} a manifest may have")
            data = f.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:  # grew between fstat and read
            raise ValueError(f"corrupt checkpoint manifest {manifest}: more than {MAX_MANIFEST_BYTES} bytes")
        meta = loads_bounded(data, "JSON", max_depth=MAX_MANIFEST_DEPTH)
    except (OSError, ValueError) as exc:
        raise ValueError(f"corrupt checkpoint manifest {manifest}: {_one_line(exc)}") from exc
    except RecursionError:
        raise ValueError(f"corrupt checkpoint manifest {manifest}: JSON nested too deeply") from None
    if _depth(meta) > MAX_MANIFEST_DEPTH:
        raise ValueError(f"corrupt checkpoint manifest {manifest}: JSON nested deeper than {MAX_MANIFEST_DEPTH} levels")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{manifest} is not a {FORMAT} manifest")
    _check_schema(manifest, meta)
    return meta


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON (a scalar has depth 0), computed without recursion."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_schema(manifest: Path, meta: Mapping[str, Any]) -> None:
    """Types and ranges of the manifest's fields (the state inside ``optimizer`` / ``scheduler`` / ``rng`` /
    ``extra`` is checked against the live objects at load time)."""

    def bad(field: str, value: Any, allowed: str) -> ValueError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ValueError(f"corrupt checkpoint manifest {manifest}: {field} is {shown}; expected {allowed}")

    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"corrupt checkpoint manifest {manifest}: missing field(s) {missing}")
    version = meta.get("format_version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise bad("format_version", version, f"a format version this library reads (1..{FORMAT_VERSION})")
    step = meta["step"]
    if not _is_int(step) or not 0 <= step <= MAX_STEP:
        raise bad("step", step, f"an integer from 0 to {MAX_STEP}")
    named = _MANIFEST_RE.match(manifest.name)
    if named and int(named.group(1)) != step:
        raise bad("step", step, f"{int(named.group(1))}, the step in the file name")
    digest = meta["tensors_sha256"]
    if not isinstance(digest, str) or not _SHA256_RE.match(digest):
        raise bad("tensors_sha256", digest, "64 lower-case hex digits")
    tensors_file = meta["tensors_file"]
    want = f"ckpt_{step:08d}.{digest[:12]}.safetensors"
    if tensors_file != want:
        raise bad("tensors_file", tensors_file, f"{want!r} (named by its step and SHA-256)")
    if "tensors_bytes" in meta and (not _is_int(meta["tensors_bytes"]) or meta["tensors_bytes"] < 0):
        raise bad("tensors_bytes", meta["tensors_bytes"], "a non-negative integer")
    for key in ("config", "extra", "rng"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(key, meta[key], "a JSON object")
    if not isinstance(meta["rng"], dict):
        raise bad("rng", meta["rng"], "a JSON object")
    for key in ("config_hash", "library_version", "torch_version"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise bad(key, meta[key], "a string")
    created = meta.get("created_unix")
    if created is not None and (not isinstance(created, (int, float)) or isinstance(created, bool)
                                or not math.isfinite(created)):
        raise bad("created_unix", created, "a finite number")
    threads = meta.get("torch_num_threads")
    if threads is not None and (not _is_int(threads) or not 1 <= threads <= 1 << 16):
        raise bad("torch_num_threads", threads, "a positive integer")
    for key in ("optimizer", "scheduler"):
        value = meta.get(key)
        if value is None:
            continue
        if (not isinstance(value, dict) or set(value) != {"class", "state_dict"} or not isinstance(value["class"], str)
                or not isinstance(value["state_dict"], dict)):
            raise bad(key, value, 'null or {"class": <name>, "state_dict": {...}}')
    if meta.get("ema") is not None:
        try:
            check_ema_fields(meta["ema"])
        except ValueError as exc:
            raise ValueError(f"corrupt checkpoint manifest {manifest}: {exc}") from None


def _verify_tensors(manifest: Path, meta: Mapping[str, Any]) -> Path:
    """The tensors file named by ``meta``, checked to exist, to have the recorded size and SHA-256."""
    tensors_path = _tensors_path(manifest, meta)
    digest = sha256_file(tensors_path)
    if digest != meta["tensors_sha256"]:
        raise ValueError(
            f"corrupt tensors file {tensors_path}: SHA-256 {digest} != recorded {meta['tensors_sha256']}"
        )
    return tensors_path


def _tensors_path(manifest: Path, meta: Mapping[str, Any]) -> Path:
    """The tensors file's path after checking, before reading it, that it is a regular file of the
    recorded size (``tensors_bytes``), so a swapped-in huge file is never read."""
    tensors_path = manifest.parent / meta["tensors_file"]
    try:
        size = tensors_path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"tensors file {tensors_path} named by {manifest} is missing") from None
    except OSError as exc:
        raise ValueError(f"cannot read tensors file {tensors_path}: {exc}") from exc
    if not tensors_path.is_file():
        raise ValueError(f"tensors file {tensors_path} named by {manifest} is not a regular file")
    if "tensors_bytes" in meta and size != meta["tensors_bytes"]:
        raise ValueError(f"corrupt tensors file {tensors_path}: {size} bytes, the manifest records "
                         f"{meta['tensors_bytes']}")
    return tensors_path


def _load_tensors(manifest: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read the tensors file once, check its size and SHA-256, parse it with safetensors (never pickle)."""
    tensors_path = _tensors_path(manifest, meta)
    try:
        data = tensors_path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read tensors file {tensors_path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["tensors_sha256"]:
        raise ValueError(f"corrupt tensors file {tensors_path}: SHA-256 {digest} != recorded {meta['tensors_sha256']}")
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError(f"cannot read tensors file {tensors_path}: not a safetensors file ({_one_line(exc)})") from exc


def canonical_safetensors(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its header re-serialised in a fixed order.

    ``safetensors.torch.save`` writes the ``__metadata__`` map in a random order (a Rust ``HashMap``), so the
    same tensors gave different bytes, hence a different SHA-256 and file name, from one save to the next.
    The header (8-byte little-endian length, then JSON) is rewritten with ``__metadata__`` first and its
    keys sorted, the tensor entries in the order safetensors wrote them (sorted by dtype and name), compact
    separators, padded with spaces to a multiple of 8 bytes; the data section is untouched (its offsets are
    relative to the end of the header)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    ordered: dict[str, Any] = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


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
    up to the current step and temp files of crashed saves.

    Only *verified* checkpoints (manifest valid, tensors file of the recorded size and SHA-256, exactly what
    ``find_latest_checkpoint`` would load) count toward ``keep_last``: a manifest whose tensors file is
    missing or corrupt never pushes a loadable checkpoint out.  Checking runs newest first and stops once
    ``keep_last`` are found (``current`` included); every manifest after that point, verifiable or not, is
    removed, and unverifiable ones before it are left in place (loading skips them)."""
    current_step = int(_MANIFEST_RE.match(current.name).group(1))
    manifests: list[tuple[int, Path, str | None]] = []
    for step, manifest in _manifests(directory):
        try:
            tensors_file = _read_manifest(manifest)["tensors_file"]
        except ValueError:
            tensors_file = None
        manifests.append((step, manifest, tensors_file))
    manifests.sort(key=lambda r: r[0], reverse=True)
    doomed: list[tuple[int, Path, str | None]] = []
    if keep_last is not None and keep_last > 0:
        verified = 0
        for record in manifests:
            _, manifest, tensors_file = record
            if manifest == current:
                continue
            if verified < keep_last - 1:
                if tensors_file is not None and _verifies(manifest):
                    verified += 1
                continue
            if verified >= keep_last - 1:
                doomed.append(record)
        for _, manifest, _ in doomed:  # manifest first: the checkpoint stops existing
            unlink_quietly(manifest)
        if doomed:
            fsync_dir(directory)
        for _, _, tensors_file in doomed:
            if tensors_file is not None:
                unlink_quietly(directory / tensors_file)
    referenced = {r[2] for r in manifests if r not in doomed and r[2] is not None}
    for p in directory.iterdir():
        m = _TENSORS_RE.match(p.name)
        if m and p.name not in referenced and int(m.group(1)) <= current_step:
            unlink_quietly(p)
        elif _TMP_RE.match(p.name):
            unlink_quietly(p)


def _verifies(manifest: Path) -> bool:
    try:
        _verify_tensors(manifest, _read_manifest(manifest))
    except (ValueError, OSError):
        return False
    return True
