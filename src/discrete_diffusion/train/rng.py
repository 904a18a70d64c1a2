"""Capture and restore every random-number-generator state needed for bit-exact resume.

The captured state is a plain nested structure of ``torch.Tensor`` objects (uint8 RNG
states, an int64 array for numpy's Mersenne-Twister key) and JSON-able values (ints,
floats, lists, dicts).  Nothing is pickled: :mod:`discrete_diffusion.train.checkpoint`
stores the tensors in safetensors and everything else in JSON.

Layout of the dict returned by :func:`capture_rng_state`::

    {
      "torch_cpu":  uint8 Tensor,                 # torch.get_rng_state()
      "torch_cuda": [uint8 Tensor, ...],          # one per visible CUDA device ([] unless cuda=True)
      "numpy":      {"bit_generator": "MT19937", "keys": int64 Tensor[624],
                     "pos": int, "has_gauss": int, "cached_gaussian": float},
      "python":     [version, [625 ints], gauss_next or None],   # random.getstate()
      "generators": {name: uint8 Tensor},         # torch.Generator.get_state()
    }
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state", "check_rng_state"]


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None,
                      cuda: bool = False) -> dict[str, Any]:
    """Snapshot the torch (CPU, and CUDA when asked), numpy, python ``random`` and given generator states.

    Args:
        generators: named ``torch.Generator`` objects owned by the caller (e.g. the
            generator that drives data order and diffusion noise).  May be ``None``.
        cuda: also record the CUDA generators (of every visible device, when CUDA is initialised): pass
            True when the run computes on CUDA. A CPU run records none, so its checkpoint holds the same
            keys whether or not a GPU happens to be visible (or initialised by someone else).

    Returns:
        A dict of tensors and JSON-able values (see the module docstring); tensors are
        fresh CPU copies, so later draws do not mutate the snapshot.
    """
    gens: dict[str, torch.Tensor] = {}
    for name, gen in (generators or {}).items():
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"rng generator {name!r} is a {type(gen).__name__}, expected torch.Generator")
        gens[str(name)] = gen.get_state().clone()

    cuda_states: list[torch.Tensor] = []
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = [s.clone() for s in torch.cuda.get_rng_state_all()]

    bitgen, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state().clone(),
        "torch_cuda": cuda_states,
        "numpy": {
            "bit_generator": str(bitgen),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [int(py_version), [int(v) for v in py_internal], py_gauss],
        "generators": gens,
    }


def restore_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Restore a state produced by :func:`capture_rng_state`.

    Global torch CPU, numpy and python ``random`` states are restored when present.
    CUDA states are restored when CUDA is available (a device-count mismatch restores the
    common prefix and warns).  Every generator in ``generators`` must have a saved state
    under the same name, otherwise ``ValueError`` is raised before anything is changed;
    saved generator states not requested are ignored.  The whole state is validated first
    (:func:`check_rng_state`), so a malformed one changes nothing.
    """
    check_rng_state(state, generators)
    saved_gens = state.get("generators") or {}
    wanted = dict(generators or {})

    if "torch_cpu" in state:
        torch.set_rng_state(_as_byte_tensor(state["torch_cpu"]))

    cuda_states = list(state.get("torch_cuda") or [])
    if cuda_states and torch.cuda.is_available():
        n_dev = torch.cuda.device_count()
        if n_dev != len(cuda_states):
            warnings.warn(
                f"checkpoint has RNG states for {len(cuda_states)} CUDA devices, "
                f"{n_dev} are visible; restoring the first {min(n_dev, len(cuda_states))}",
                stacklevel=2,
            )
        for i, s in enumerate(cuda_states[:n_dev]):
            torch.cuda.set_rng_state(_as_byte_tensor(s), device=i)

    np_state = state.get("numpy")
    if np_state is not None:
        keys = np_state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state(
            (
                np_state["bit_generator"],
                keys.astype(np.uint32),
                int(np_state["pos"]),
                int(np_state["has_gauss"]),
                float(np_state["cached_gaussian"]),
            )
        )

    py_state = state.get("python")
    if py_state is not None:
        version, internal, gauss = py_state
        random.setstate((int(version), tuple(int(v) for v in internal), gauss))

    for name, gen in wanted.items():
        gen.set_state(_as_byte_tensor(saved_gens[name]))


def check_rng_state(state: Any, generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Raise ``ValueError`` (one line, naming the field) unless ``state`` has the layout of
    :func:`capture_rng_state` and every part would be accepted by its setter.

    Checked: the torch CPU state is a 1-D uint8 tensor of ``torch.get_rng_state()``'s length; CUDA states
    1-D uint8 tensors (of the device state's length where CUDA is available); numpy's MT19937 state
    (624 keys in [0, 2^32), ``pos`` in 0..624, ``has_gauss`` 0/1, a finite cached Gaussian); python's
    ``random`` state (version 3, 624 words in [0, 2^32) and an index in 0..624, ``gauss_next`` None or
    finite); a state for every generator in ``generators`` of the length that generator's own state has.
    Each part is then tried on a scratch generator (never the live ones).
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"RNG state is a {type(state).__name__}; expected an object")
    missing = sorted({"torch_cpu", "numpy", "python"} - set(state))
    if missing:
        raise ValueError(f"RNG state lacks {missing}")
    cpu_len = torch.get_rng_state().numel()
    _check_bytes(state["torch_cpu"], "rng.torch_cpu", cpu_len)
    cuda = state.get("torch_cuda") or []
    if not isinstance(cuda, list) or len(cuda) > 1024:
        raise ValueError(f"RNG state torch_cuda is a {type(cuda).__name__}; expected a list of byte tensors")
    cuda_len = torch.cuda.get_rng_state(0).numel() if cuda and torch.cuda.is_available() else None
    for i, s in enumerate(cuda):  # restored only where CUDA is available: then of the device's state length
        _check_bytes(s, f"rng.torch_cuda.{i}", cuda_len)

    np_state = state["numpy"]
    if not isinstance(np_state, Mapping) or np_state.get("bit_generator") != "MT19937":
        raise ValueError("RNG state numpy must be an object with bit_generator 'MT19937'")
    keys = np_state.get("keys")
    if (not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (624,)
            or bool(((keys < 0) | (keys >= 1 << 32)).any())):
        raise ValueError("RNG state numpy.keys must be an int64 tensor of 624 values in [0, 2^32)")
    if not _int_in(np_state.get("pos"), 0, 624) or not _int_in(np_state.get("has_gauss"), 0, 1):
        raise ValueError(f"RNG state numpy.pos / has_gauss are {np_state.get('pos')!r} / "
                         f"{np_state.get('has_gauss')!r}; expected 0..624 and 0 or 1")
    if not _finite(np_state.get("cached_gaussian")):
        raise ValueError(f"RNG state numpy.cached_gaussian is {np_state.get('cached_gaussian')!r}; expected a number")

    py = state["python"]
    if not isinstance(py, (list, tuple)) or len(py) != 3:
        raise ValueError("RNG state python must be [version, [625 ints], gauss_next]")
    version, internal, gauss = py
    if (version != 3 or isinstance(version, bool) or not isinstance(internal, (list, tuple)) or len(internal) != 625
            or not all(_int_in(v, 0, (1 << 32) - 1) for v in internal[:624]) or not _int_in(internal[624], 0, 624)):
        raise ValueError("RNG state python must hold version 3 and 624 words in [0, 2^32) plus an index in 0..624")
    if gauss is not None and not _finite(gauss):
        raise ValueError(f"RNG state python gauss_next is {gauss!r}; expected null or a number")

    saved_gens = state.get("generators") or {}
    if not isinstance(saved_gens, Mapping):
        raise ValueError(f"RNG state generators is a {type(saved_gens).__name__}; expected an object")
    wanted = dict(generators or {})
    missing = sorted(set(wanted) - set(saved_gens))
    if missing:
        raise ValueError(
            f"no saved RNG state for generator(s) {missing}; saved generators: {sorted(saved_gens)}"
        )
    try:
        torch.Generator().set_state(state["torch_cpu"])
        np.random.RandomState().set_state(("MT19937", keys.numpy().astype(np.uint32), np_state["pos"],
                                           np_state["has_gauss"], float(np_state["cached_gaussian"])))
        random.Random().setstate((version, tuple(internal), gauss))
        for name, gen in wanted.items():
            _check_bytes(saved_gens[name], f"rng.generators.{name}", gen.get_state().numel())
            torch.Generator(device=gen.device).set_state(saved_gens[name])
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"RNG state is not accepted by its generator: {first}") from None


def _check_bytes(x: Any, where: str, length: int | None) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 1:
        shown = (f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor)
                 else f"of type {type(x).__name__}")
        raise ValueError(f"RNG state {where} is {shown}; expected a 1-D uint8 tensor")
    if length is not None and x.numel() != length:
        raise ValueError(f"RNG state {where} has {x.numel()} bytes; expected {length}")


def _int_in(x: Any, lo: int, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _as_byte_tensor(x: Any) -> torch.Tensor:
    """RNG setters need a contiguous CPU uint8 tensor."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.detach().to(device="cpu", dtype=torch.uint8).contiguous()
