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

import random
import warnings
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


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
    saved generator states not requested are ignored.
    """
    saved_gens = state.get("generators") or {}
    wanted = dict(generators or {})
    missing = sorted(set(wanted) - set(saved_gens))
    if missing:
        raise ValueError(
            f"no saved RNG state for generator(s) {missing}; saved generators: {sorted(saved_gens)}"
        )

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


def _as_byte_tensor(x: Any) -> torch.Tensor:
    """RNG setters need a contiguous CPU uint8 tensor."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    return t.detach().to(device="cpu", dtype=torch.uint8).contiguous()
