"""Crash-safe, pickle-free training checkpoints.

On-disk layout of one checkpoint with step ``N`` in ``directory``::

    ckpt_{N:08d}.{sha256[:12]}.safetensors   every tensor:
        model.<state-dict name>                model weights and buffers
        ema.<state-dict name>                  EMA shadow (when an EMA is saved)
        optim.<path>                           optimizer state tensors, e.g. optim.state.3.exp_avg
        sched.<path>                           scheduler tensors (rare; LambdaLR has none)
        rng.<path>                             RNG states, e.g. rng.torch_cpu, rng.generators.data
        extra.<path>                           tensors found in ``extra``
    ckpt_{N:08d}.json                        the manifest (written last): step, versions,
        torch_num_threads, tensors_file + tensors_sha256 + tensors_bytes,
        optimizer/scheduler/EMA/RNG non-tensor state, config + config_hash, extra.

Non-tensor state is stored as JSON in which a tensor is replaced by
``{"__tensor__": "<name in the safetensors file>"}``, a tuple by ``{"__tuple__": [...]}``
and a dict with non-string keys (e.g. optimizer state indexed by int) by
``{"__items__": [[key, value], ...]}``, so state dicts round-trip exactly.

A checkpoint exists only once its manifest exists, is at most ``MAX_MANIFEST_BYTES``, parses,
passes the schema check (types and ranges of every field, step equal to the file name's) and
names a safetensors file whose size and SHA-256 match.  The safetensors header is written in a
canonical order, so saving the same state twice gives identical bytes.  Loading validates every
state field against the objects it restores into before it changes any of them.

Every file is written to a temporary file in the same directory, flushed, fsync'ed, moved
into place with ``os.replace`` and the directory is fsync'ed.
The tensors file name contains its hash, so re-saving a step never overwrites the
tensors the previous manifest points to: a crash at any point leaves the previous
checkpoint loadable.  The newest checkpoint is found by scanning (no ``latest`` pointer
that could go stale).  Only one process (rank 0) should save into a directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import save
from torch import nn

from ..runs.atomic_io import atomic_write
from ..runs.checkpoint_files import (
    FORMAT,
    FORMAT_VERSION,
    _load_tensors,
    _prune,
    _read_manifest,
    _storable,
    _strip,
    canonical_safetensors,
)
from ..runs.state_codec import check_config, config_hash, encode_state, plain_json
from ..runs.tensors import unwrap_model
from ..runs.weights import (
    _check_finite,
    _decode,
    _raise_on_mismatch,
    _resolve,
    find_latest_checkpoint,
    load_model_weights,
    safe_torch_load,
)
from .ema import EMA
from .optim import check_optimizer_state, check_scheduler_state
from .rng import capture_rng_state, check_rng_state, restore_rng_state
from .sharding import full_tensors, is_sharded, like_layout

__all__ = ["save_checkpoint", "write_checkpoint", "checkpoint_state", "CheckpointState", "load_checkpoint",
           "find_latest_checkpoint", "load_model_weights", "CheckpointWriteError", "safe_torch_load"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- public API


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    ema: EMA | None = None,
    rng_generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Atomically write the checkpoint for ``step`` and prune old ones.

    Args:
        directory: checkpoint folder (created if needed).
        step: global step; names the files (``ckpt_{step:08d}``).
        model: model (DDP / ``torch.compile`` wrappers are unwrapped).
        optimizer, scheduler, ema: saved when given.
        rng_generators: named ``torch.Generator`` objects to save alongside the global
            torch / numpy / python RNG states (always saved) and the CUDA ones (saved when the
            model's parameters are on CUDA).
        extra: JSON-able metadata (tensors allowed).  ``extra["config"]`` (dict or
            OmegaConf config) is stored as the manifest's ``config`` and checked by
            ``load_checkpoint(expected_config=...)``; ``extra["config_hash"]`` is stored
            as ``config_hash`` (computed from the config when absent).  Other keys go
            to the manifest's ``extra``.
        keep_last: keep this many newest complete checkpoints (``None``/``<= 0``: all).
            The checkpoint just written is never pruned.

    Returns:
        Path of the manifest ``ckpt_{step:08d}.json``.
    """
    return write_checkpoint(directory, step, checkpoint_state(model, optimizer, scheduler, ema), rng_generators,
                            extra, keep_last)


@dataclass
class CheckpointState:
    """The tensors and state dicts one checkpoint stores: ``model`` (state-dict name -> tensor), ``optimizer`` /
    ``scheduler`` as ``(class name, state_dict)`` or None, ``ema`` (``EMA.state_dict()``) or None, and
    ``on_cuda`` (the model's parameters live on CUDA: the CUDA RNG states are saved too)."""

    model: dict[str, torch.Tensor]
    optimizer: tuple[str, dict] | None = None
    scheduler: tuple[str, dict] | None = None
    ema: dict[str, Any] | None = None
    on_cuda: bool = False


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, scheduler: Any | None = None,
                     ema: EMA | None = None, full: bool = False, keep: bool = True) -> CheckpointState:
    """What :func:`save_checkpoint` stores of these objects. ``full=True`` (FSDP, train/sharding.py): every
    sharded tensor is gathered to its full tensor, a collective that every rank calls; ``keep=False`` on ranks
    that do not write drops the gathered tensors."""
    gather = (lambda obj: full_tensors(obj, keep)) if full else (lambda obj: obj)
    state = CheckpointState(model=gather(dict(unwrap_model(model).state_dict())),
                            on_cuda=any(p.is_cuda for p in model.parameters()))
    if optimizer is not None:
        state.optimizer = (type(optimizer).__name__, gather(optimizer.state_dict()))
    if scheduler is not None:
        state.scheduler = (type(scheduler).__name__, scheduler.state_dict())
    if ema is not None:
        state.ema = gather(ema.state_dict())
    return state


def write_checkpoint(
    directory: str | os.PathLike,
    step: int,
    state: CheckpointState,
    rng_generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = 3,
) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step`` (see :func:`save_checkpoint`, which gives the
    arguments' meaning) and prune old ones; returns the manifest's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(step)
    stem = f"ckpt_{step:08d}"
    extra = dict(extra or {})
    config = plain_json(extra.pop("config")) if "config" in extra else None
    stored_hash = extra.pop("config_hash", None)
    if config is not None and stored_hash is None:
        stored_hash = config_hash(config)

    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.model.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"model state {name!r} is a {type(t).__name__}; only tensors can be saved")
        tensors[f"model.{name}"] = t
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "library_version": _library_version(),
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "created_unix": time.time(),
        "config": config,
        "config_hash": stored_hash,
        "optimizer": None,
        "scheduler": None,
        "ema": None,
    }
    if state.optimizer is not None:
        meta["optimizer"] = {
            "class": state.optimizer[0],
            "state_dict": encode_state(state.optimizer[1], "optim", tensors),
        }
    if state.scheduler is not None:
        meta["scheduler"] = {
            "class": state.scheduler[0],
            "state_dict": encode_state(state.scheduler[1], "sched", tensors),
        }
    if state.ema is not None:
        ema_state = dict(state.ema)
        for name, t in ema_state.pop("shadow").items():
            tensors[f"ema.{name}"] = t
        meta["ema"] = ema_state
    # CUDA RNG states only for a run on CUDA
    meta["rng"] = encode_state(capture_rng_state(rng_generators, cuda=state.on_cuda), "rng", tensors)
    meta["extra"] = encode_state(extra, "extra", tensors)

    try:
        # 1) tensors: temp file -> fsync -> os.replace to a file named by its hash.
        blob = canonical_safetensors(save(_storable(tensors), metadata={"format": "pt", "step": str(step)}))
        digest = hashlib.sha256(blob).hexdigest()
        tensors_name = f"{stem}.{digest[:12]}.safetensors"
        meta.update(tensors_file=tensors_name, tensors_sha256=digest, tensors_bytes=len(blob))
        atomic_write(directory / tensors_name, lambda f: _write_chunks(f, blob))
        # 2) manifest, last: from here on the checkpoint exists.
        manifest = directory / f"{stem}.json"
        payload = json.dumps(meta, indent=1).encode("utf-8")
        atomic_write(manifest, lambda f: _write_chunks(f, payload))
    except OSError as err:
        raise _write_error(err, directory, stem) from err
    # 3) prune older checkpoints and leftovers of crashed saves.
    _prune(directory, manifest, keep_last)
    return manifest


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, I/O error). Nothing older was touched:
    the message names the previous checkpoint, which stays loadable."""


def _write_error(err: OSError, directory: Path, stem: str) -> CheckpointWriteError:
    if isinstance(err, CheckpointWriteError):
        return err
    try:
        previous = find_latest_checkpoint(directory)
    except OSError:
        previous = None
    kept = (f"the previous checkpoint {previous} is intact" if previous is not None
            else "no earlier checkpoint exists in that directory")
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason = "the disk is full (No space left on device)"
    out = CheckpointWriteError(f"could not write checkpoint {stem} in {directory}: {reason} ({err}); {kept}")
    out.errno = err.errno
    return out


def _write_chunks(f: Any, data: bytes, chunk: int = 1 << 24) -> None:
    """Write ``data`` to the open file ``f`` (in chunks, so a full disk fails part-way like a real write)."""
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        f.write(view[start:start + chunk])


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    ema: EMA | None = None,
    rng_generators: Mapping[str, torch.Generator] | None = None,
    expected_config: Mapping[str, Any] | None = None,
    absent_ok: bool = False,
    max_step: int | None = None,
    check_extra: Callable[[dict[str, Any], int], Any] | None = None,
) -> dict[str, Any]:
    """Restore a checkpoint into the given objects and return its manifest.

    Args:
        path: a manifest (``ckpt_*.json``), its tensors file, the ``ckpt_*`` stem, or a
            directory (its latest complete checkpoint is loaded).
        model: receives ``model.*`` tensors; names and shapes must match exactly.
        optimizer, scheduler, ema: restored when given (the checkpoint must contain them).
        rng_generators: when not ``None`` (``{}`` is allowed), the global torch / CUDA /
            numpy / python RNG states *and* these named generators are restored;
            when ``None`` no RNG state is touched.
        expected_config: the model-defining config values, compared at the same key
            paths against the stored ``config`` (e.g. ``{"model": cfg.model}``); any
            difference raises ``ValueError`` listing every key with both values.
        absent_ok: accept expected keys that the stored config lacks (options added to the library after the
            checkpoint was written, which take their defaults); the exact tensor-name and shape check still
            refuses a checkpoint of another architecture.
        max_step: refuse a checkpoint whose step exceeds this (e.g. the run's last step).
        check_extra: called as ``check_extra(extra, step)`` on the decoded ``extra`` before anything is
            restored; it raises ``ValueError`` for values its caller cannot use.

    Nothing is restored until every field has been validated: the manifest's schema (types, ranges, size),
    every model / EMA / optimizer floating-point tensor finite, model and EMA tensors of exactly the target's
    names, shapes and dtypes (never cast), optimizer / scheduler / EMA / RNG state accepted by the given
    objects (see ``optim.check_optimizer_state``, ``optim.check_scheduler_state``, ``rng.check_rng_state``).
    When the RNG state is restored and the checkpoint was written with another ``torch.get_num_threads()``,
    a ``UserWarning`` says that resume is then not bit-exact.

    Returns:
        The manifest dict (``step``, ``config``, ``config_hash``, ``library_version``, ...)
        with ``extra`` decoded to Python objects.

    Raises:
        ValueError: corrupt / unreadable files (the file is named), config mismatch,
            missing, unexpected or mis-shaped tensors, or state absent from the checkpoint.
        FileNotFoundError: no checkpoint at ``path``.
    """
    manifest = _resolve(path)
    meta = _read_manifest(manifest)
    if max_step is not None and meta["step"] > max_step:
        raise ValueError(f"checkpoint {manifest} is at step {meta['step']}, beyond the run's last step {max_step}")
    if expected_config is not None:
        check_config(meta.get("config"), expected_config, manifest, absent_ok=absent_ok)
    tensors = _load_tensors(manifest, meta)
    _check_finite(tensors, manifest)

    # Validate everything that can be validated before mutating anything.
    target = unwrap_model(model)
    model_sd = _strip(tensors, "model.")
    _raise_on_mismatch("model", target.state_dict(), model_sd, manifest)
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (ema, "ema")):
        if obj is not None and meta.get(key) is None:
            raise ValueError(f"checkpoint {manifest} has no {key} state")
    if ema is not None:
        _raise_on_mismatch("EMA", ema.shadow, _strip(tensors, "ema."), manifest)
    opt_sd = _checked_state(meta, "optimizer", optimizer, tensors, manifest, check_optimizer_state)
    sched_sd = _checked_state(meta, "scheduler", scheduler, tensors, manifest, check_scheduler_state)
    rng_state = _decode(meta["rng"], tensors, manifest) if rng_generators is not None else None
    if rng_state is not None:
        try:
            check_rng_state(rng_state, rng_generators)
        except ValueError as exc:
            raise ValueError(f"checkpoint {manifest}: {exc}") from None
    extra = _decode(meta.get("extra") or {}, tensors, manifest)
    if check_extra is not None:
        try:
            check_extra(extra, meta["step"])
        except ValueError as exc:
            raise ValueError(f"checkpoint {manifest}: {exc}") from None

    if rng_state is not None:
        _warn_on_thread_count(meta, manifest)
    live = target.state_dict()   # full tensors go to sharded (FSDP) targets as this rank's chunks (sharding.py)
    target.load_state_dict({k: like_layout(v, live[k]) for k, v in model_sd.items()}, strict=True)
    if opt_sd is not None:
        optimizer.load_state_dict(_optimizer_like_params(opt_sd, optimizer))
    if sched_sd is not None:
        scheduler.load_state_dict(sched_sd)
    if ema is not None:
        shadow = {k: like_layout(v, ema.shadow[k]) for k, v in _strip(tensors, "ema.").items()}
        ema.load_state_dict({**meta["ema"], "shadow": shadow})
    if rng_state is not None:
        restore_rng_state(rng_state, rng_generators)
    meta["extra"] = extra
    return meta


def _optimizer_like_params(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``state`` (a checked optimizer state dict of full tensors) with each parameter-shaped tensor (Adam's
    moments) laid out like its parameter (sharded under FSDP); the state's parameter index ``i`` is the i-th
    parameter over the optimizer's groups in order, as ``Optimizer.state_dict`` numbers them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(is_sharded(p) for p in params):
        return state
    per_param = {}
    for index, entry in state["state"].items():
        p = params[index]
        per_param[index] = {k: like_layout(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim()
                            else v for k, v in entry.items()}
    return {**state, "state": per_param}


def _warn_on_thread_count(meta: Mapping[str, Any], manifest: Path) -> None:
    saved, now = meta.get("torch_num_threads"), torch.get_num_threads()
    if saved is not None and saved != now:
        warnings.warn(f"checkpoint {manifest} was written with torch.get_num_threads() = {saved}, this process "
                      f"uses {now}: the resumed run is not bit-identical to an uninterrupted one (CPU reductions "
                      f"depend on the thread count); set OMP_NUM_THREADS={saved} for an exact resume", stacklevel=3)


def _checked_state(meta: Mapping[str, Any], key: str, obj: Any, tensors: Mapping[str, torch.Tensor],
                   manifest: Path, check: Callable[[Any, Any, str], None]) -> Any:
    """The decoded ``meta[key]`` state dict for ``obj`` (an optimizer or scheduler; None when ``obj`` is None),
    after checking its saved class and ``check(obj, state, manifest)``; ValueError otherwise."""
    if obj is None:
        return None
    saved_cls = meta[key]["class"]
    if saved_cls != type(obj).__name__:
        raise ValueError(f"checkpoint {manifest} holds {saved_cls} state, got a {type(obj).__name__}")
    state = _decode(meta[key]["state_dict"], tensors, manifest)
    check(obj, state, str(manifest))
    return state


# --------------------------------------------------------------------------- validation


# --------------------------------------------------------------------------- files


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("discrete-diffusion")
    except Exception:
        import discrete_diffusion

        return str(getattr(discrete_diffusion, "__version__", "unknown"))
