"""``ddiff posterior``'s inputs read from its flags: the measurement operator (--operator and its parameters), the
observation y (--y, --simulate-from, --test-index, --mask), the method and its options (--method,
--method-option), each checked with a one-line ValueError before anything is sampled or written. Files are read by
the pickle-free bounded reader (data/npy_reader.py); the --groups JSON is bounded in size."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy
    import torch

    from ..posterior import MeasurementOperator

#: The operators the command line can build (``callable`` needs Python code).
CLI_OPERATORS = ("inpaint", "channel", "thinning", "downsample", "parity")
#: Each operator flag and the operator that takes it.
OPERATOR_FLAGS = {"eps": "channel", "p": "thinning", "block": "downsample", "groups": "parity", "flip": "parity"}
#: Named inpainting masks: the observed part of the sites.
HALF_MASKS = ("top-half", "bottom-half", "left-half", "right-half", "first-half", "last-half")
#: Largest --groups file read (bytes).
MAX_GROUPS_BYTES = 1 << 22
#: Upper bounds of the size-bearing method options (-m KEY=N): Monte-Carlo draws per step (DPS), Gibbs iterations
#: and Metropolis-Hastings steps per iteration (split Gibbs); as --steps, at most 10^6 iterations.
OPTION_LIMITS = {"mc_samples": 1 << 16, "iterations": 10**6, "mh_steps": 10**4}


def _integer_array(array: "numpy.ndarray", what: str) -> "torch.Tensor":
    """An .npy array as a tensor for the operator's checks: integers as int64, floats as float64 (the operator then
    names the dtype), anything else refused."""
    import numpy as np
    import torch

    kind = array.dtype.kind
    if kind == "b":
        return torch.from_numpy(array.astype(np.int64))
    if kind in "iu":
        if array.size and kind == "u" and int(array.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"{what}: values beyond the int64 range")
        return torch.from_numpy(array.astype(np.int64))
    if kind == "f":
        return torch.from_numpy(array.astype(np.float64))
    raise ValueError(f"{what} must hold numbers, got dtype {array.dtype}")


def _batched(x: "torch.Tensor", shape: tuple[int, ...], what: str) -> "torch.Tensor":
    """x of ``shape`` or (N, *shape) as (N, *shape)."""
    if tuple(x.shape) == shape:
        return x[None]
    if x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape and x.shape[0] >= 1:
        return x
    dims = ", ".join(map(str, shape))
    raise ValueError(f"{what} must have shape ({dims}) or (N, {dims}), got {tuple(x.shape)}")


def _read(path: str, flag: str) -> "torch.Tensor":
    from .conditioning import _load_site_array

    return _integer_array(_load_site_array(path, flag), f"{flag} {path}")


def half_mask(name: str, sites: tuple[int, ...]) -> "torch.Tensor":
    """The observed half of the sites (bool, *sites): top/bottom split the second-to-last axis, left/right the
    last one (image sites), first/last the flattened row-major order."""
    import torch

    mask = torch.zeros(sites, dtype=torch.bool)
    if name in ("first-half", "last-half"):
        flat = mask.reshape(-1)
        half = flat.numel() // 2
        flat[:half] = name == "first-half"
        flat[half:] = name == "last-half"
        return mask
    if len(sites) < 2:
        raise ValueError(f"--mask {name} needs image sites (at least two axes), the run's are {sites}; use "
                         "first-half or last-half")
    axis = len(sites) - (2 if name in ("top-half", "bottom-half") else 1)
    index = torch.arange(sites[axis]).reshape([-1 if i == axis else 1 for i in range(len(sites))])
    first = index < sites[axis] // 2
    return (first if name in ("top-half", "left-half") else ~first).expand(sites).clone()


def observed_mask(args: argparse.Namespace, sites: tuple[int, ...]) -> "torch.Tensor | None":
    """--mask as bool (N or 1, *sites), None when absent."""
    if args.mask is None:
        return None
    if args.operator != "inpaint":
        raise ValueError(f"--mask is an option of the inpaint measurement, not of {args.operator}")
    if args.mask in HALF_MASKS:
        return half_mask(args.mask, sites)[None]
    if not Path(args.mask).is_file():
        raise ValueError(f"--mask {args.mask}: no such file (and not one of {', '.join(HALF_MASKS)})")
    mask = _batched(_read(args.mask, "--mask"), sites, f"--mask {args.mask}")
    if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"--mask {args.mask} must be boolean (or 0/1 integers), true where a site is observed")
    return mask.bool()


def build_cli_operator(args: argparse.Namespace, run) -> "MeasurementOperator":
    """The operator named by --operator with its flags; flags of other operators and operators that treat values as
    counts on token data are refused (one line). An inpaint operator gets no mask: y marks the unobserved sites
    (``UNOBSERVED``), so one operator serves observations with different masks in any batch."""
    from ..posterior import build_operator
    from ..runs.json_reader import read_run_json

    name = args.operator
    if name not in CLI_OPERATORS:
        raise ValueError(f"unknown --operator {name!r}; valid: {', '.join(CLI_OPERATORS)} (a callable measurement "
                         "needs Python: discrete_diffusion.posterior.CallableOperator)")
    for flag, owner in OPERATOR_FLAGS.items():
        if getattr(args, flag) is not None and owner != name:
            raise ValueError(f"--{flag} is an option of the {owner} measurement, not of {name}")
    if name in ("thinning", "downsample") and ("vocab" in run.dataset.metadata or
                                               run.dataset.metadata.get("tokenizer") is not None):
        raise ValueError(f"the {name} measurement treats values as counts; this run's data are tokens of a "
                         "vocabulary: use inpaint, channel or parity")
    k = run.dataset.num_states
    if name == "inpaint":
        return build_operator(name, k)
    needed = {"channel": "eps", "thinning": "p", "downsample": "block", "parity": "groups"}[name]
    if getattr(args, needed) is None:
        raise ValueError(f"the {name} measurement needs --{needed}")
    if name == "channel":
        return build_operator(name, k, eps=args.eps)
    if name == "thinning":
        return build_operator(name, k, p=args.p)
    if name == "downsample":
        parts = [s.strip() for s in re.split(r"[,x]", str(args.block))]
        if not all(re.fullmatch(r"[0-9]{1,9}", s) for s in parts):   # ASCII digits ('²' is no block size)
            raise ValueError(f"--block takes an integer or one per axis (2 or 2,2), got {args.block!r}")
        block = int(parts[0]) if len(parts) == 1 else tuple(int(s) for s in parts)
        op = build_operator(name, k, block=block)
        op.y_shape(tuple(run.dataset.site_shape))          # a block that does not divide the sites: one line now
        return op
    path = Path(args.groups)
    if not path.is_file():
        raise ValueError(f"--groups {args.groups}: no such file")
    if path.stat().st_size > MAX_GROUPS_BYTES:
        raise ValueError(f"--groups {args.groups} is larger than {MAX_GROUPS_BYTES} bytes")
    try:  # a list of lists: nesting beyond 2 levels, huge numbers, a FIFO are refused before parsing
        groups = read_run_json(path, MAX_GROUPS_BYTES, "--groups file", follow=True, max_depth=2)
    except ValueError as err:
        raise ValueError(f"--groups {args.groups} is not JSON of a list of lists ({err})") from None
    if not isinstance(groups, list) or not all(isinstance(g, list) and all(type(i) is int for i in g)
                                               for g in groups):
        raise ValueError(f"--groups {args.groups} must hold a JSON list of lists of site indices, e.g. "
                         "[[0, 1], [2, 5]]")
    sites = math.prod(tuple(run.dataset.site_shape))
    if len(groups) > sites or any(len(g) > sites for g in groups):
        raise ValueError(f"--groups {args.groups}: {len(groups)} groups of up to {max(map(len, groups))} sites; "
                         f"at most {sites} groups (one parity per site) of at most {sites} sites each")
    op = build_operator(name, k, groups=groups, flip=0.0 if args.flip is None else args.flip)
    op.y_shape(tuple(run.dataset.site_shape))
    return op


def _test_indices(spec: str, size: int) -> list[int]:
    """--test-index I, I,J,K or A:B as a list of indices into a split of ``size`` examples."""
    text = str(spec).strip()
    bad = ValueError(f"--test-index {spec} must name indices in 0..{size - 1} (the test split has {size} examples)")
    try:
        if ":" in text:
            start_text, _, stop_text = text.partition(":")
            start, stop = _index(start_text or "0"), _index(stop_text) if stop_text else size
            if not 0 <= start < stop <= size:      # checked before the list is built: 0:10**10 allocates nothing
                raise bad
            return list(range(start, stop))
        out = [_index(part) for part in text.split(",")]
    except ValueError as err:
        if err is bad:
            raise
        raise ValueError(f"--test-index takes an index, a list 0,3,7 or a range 0:8, got {spec!r}") from None
    if not out or min(out) < 0 or max(out) >= size:
        raise bad
    return out


def _index(text: str) -> int:
    """A typed index: decimal digits with an optional sign, at most 20 characters (ValueError otherwise)."""
    text = text.strip()
    if not re.fullmatch(r"[-+]?[0-9]{1,20}", text):
        raise ValueError(text)
    return int(text)


@dataclass
class Observation:
    """y (N or 1, *y_sites) checked by the operator; truth (N, *sites) when y was simulated; where it came from."""

    y: "torch.Tensor"
    truth: "torch.Tensor | None"
    source: dict
    stem: str


def read_observation(args: argparse.Namespace, run, operator: "MeasurementOperator",
                     observed: "torch.Tensor | None") -> Observation:
    """y from --y (with --mask for inpaint), or simulated from --simulate-from / --test-index with --seed."""
    import torch

    from ..data.base import validate_values
    from ..posterior import inpaint_observation

    given = [flag for flag in ("y", "simulate_from", "test_index") if getattr(args, flag) is not None]
    if len(given) != 1:
        raise ValueError("give the measurement as exactly one of --y Y.npy, --simulate-from X.npy, --test-index I"
                         + (f" (got {', '.join('--' + g.replace('_', '-') for g in given)})" if given else ""))
    sites = tuple(run.dataset.site_shape)
    if args.y is not None:
        values = _read(args.y, "--y")
        if operator.name == "inpaint" and observed is not None:
            values = _batched(values, sites, f"--y {args.y}")
            if values.is_floating_point():
                raise ValueError(f"--y {args.y}: y must be an integer array, got float64")
            if observed.shape[0] not in (1, values.shape[0]):
                raise ValueError(f"--mask has {observed.shape[0]} masks but --y has {values.shape[0]} observations")
            values = inpaint_observation(values, observed)
        else:
            values = _batched(values, operator.y_shape(sites), f"--y {args.y}")
        try:
            y = operator.check_y(values, sites)
        except ValueError as err:
            raise ValueError(f"--y {args.y}: {err}") from None
        return Observation(y, None, {"y": str(Path(args.y).resolve())}, name_part(Path(args.y).stem))
    if args.simulate_from is not None:
        raw = _batched(_read(args.simulate_from, "--simulate-from"), sites, f"--simulate-from {args.simulate_from}")
        truth = validate_values(raw, run.dataset.num_states, f"--simulate-from {args.simulate_from}")
        source = {"simulate_from": str(Path(args.simulate_from).resolve())}
        stem = "sim-" + name_part(Path(args.simulate_from).stem)
    else:
        test = run.dataset.split("test")
        index = _test_indices(args.test_index, test.shape[0])
        truth = test[index]
        source = {"test_index": index}
        stem = "test" + name_part(str(args.test_index).replace(":", "-to-").replace(",", "+"))
    if operator.name == "inpaint":          # the inpaint measurement is deterministic given the mask
        if observed is None:
            raise ValueError(f"inpainting a simulated measurement needs --mask (a file or {', '.join(HALF_MASKS)})")
        if observed.shape[0] not in (1, truth.shape[0]):
            raise ValueError(f"--mask has {observed.shape[0]} masks but there are {truth.shape[0]} clean examples")
        y = inpaint_observation(truth, observed)
    else:
        y = operator.simulate(truth, torch.Generator().manual_seed(args.seed))
    return Observation(operator.check_y(y, sites), truth, source, stem)


def name_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)[:120] or "y"


def method_options_from_args(args: argparse.Namespace) -> dict:
    """--method-option KEY=VALUE pairs (numbers as numbers, else YAML values) checked against the method's options;
    the size-bearing ones (:data:`OPTION_LIMITS`) bounded before anything is allocated."""
    from ..posterior import method_options
    from .common import parse_option_value

    allowed = method_options(args.method)
    options: dict = {}
    for item in args.method_options:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"malformed --method-option {item!r}: expected KEY=VALUE, e.g. -m gamma=2")
        if key not in allowed:
            raise ValueError(f"posterior method {args.method!r} takes the options {list(allowed)}, got {key!r}")
        options[key] = parse_option_value("--method-option", item, value)
        limit = OPTION_LIMITS.get(key)
        if limit is not None and type(options[key]) is int and not 1 <= options[key] <= limit:
            raise ValueError(f"--method-option {key} must be in 1..{limit}, got {options[key]}")
    return options


def check_method(method: str | None) -> None:
    """A one-line error for a missing, unknown or table-only method, naming the methods that work."""
    from ..posterior import POSTERIOR_METHODS

    usable = [m for m in POSTERIOR_METHODS if m != "exact-guidance"]
    if method is None:
        raise ValueError(f"give --method: one of {', '.join(usable)}")
    if method == "exact-guidance":
        raise ValueError("exact-guidance needs the prior as an enumerable table (discrete_diffusion.oracle); a run "
                         f"directory holds a trained network: use one of {', '.join(usable)}")
    if method not in POSTERIOR_METHODS:
        raise ValueError(f"unknown --method {method!r}; valid: {', '.join(usable)}")
