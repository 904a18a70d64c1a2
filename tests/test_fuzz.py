"""Fuzzing the data loaders and the config parser with hypothesis: any input either loads or raises
ValueError with a message; never another exception type, never silently wrong data."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from discrete_diffusion.config import load_config
from discrete_diffusion.data import dataset_from_arrays, load_array_file, parse_idx, validate_values

FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_N", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

_IDX_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]


@st.composite
def idx_like(draw) -> bytes:
    """Bytes that look like IDX: a plausible header (sometimes lying about its sizes) and some payload."""
    code = draw(st.sampled_from(_IDX_CODES + [0x00, 0x0A, 0xFF]))
    ndim = draw(st.integers(0, 5))
    dims = draw(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), min_size=ndim, max_size=ndim))
    header = bytes([0, 0, code, ndim]) + struct.pack(f">{ndim}I", *dims)
    payload = draw(st.binary(max_size=300))
    cut = draw(st.integers(0, len(header)))
    return header[:cut] if draw(st.booleans()) and cut < len(header) else header + payload


@FUZZ
@given(st.one_of(st.binary(max_size=200), idx_like()))
def test_parse_idx_parses_or_raises_value_error(data: bytes) -> None:
    try:
        arr = parse_idx(data, where="fuzz")
    except ValueError as err:
        assert "fuzz" in str(err)
        return
    assert isinstance(arr, np.ndarray)
    ndim = data[3]
    assert arr.ndim == ndim
    assert tuple(arr.shape) == struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    assert 4 + 4 * ndim + arr.nbytes == len(data)


_DTYPES = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                           np.float16, np.float32, np.float64, np.bool_])


@st.composite
def arrays_of_anything(draw) -> np.ndarray:
    dtype = draw(_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    if np.dtype(dtype).kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=np.dtype(dtype).itemsize * 8)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FUZZ
@given(arrays_of_anything(), st.one_of(st.none(), st.integers(-2, 40)))
def test_validate_values_returns_valid_states_or_raises(arr: np.ndarray, k: int | None) -> None:
    try:
        out = validate_values(arr, k, "fuzz.npy")
    except ValueError as err:
        assert str(err)
        return
    assert out.dtype == torch.long and tuple(out.shape) == arr.shape and out.ndim >= 2 and out.numel() > 0
    assert int(out.min()) >= 0
    if k is not None:
        assert int(out.max()) < k
    np.testing.assert_array_equal(out.numpy(), arr.astype(np.float64))  # values kept, never clipped


@FUZZ
@given(arrays_of_anything(), st.one_of(st.none(), arrays_of_anything()), st.one_of(st.none(), st.integers(1, 40)),
       st.floats(0.0, 0.6), st.floats(0.0, 0.6))
def test_dataset_from_arrays_builds_or_raises(train, test, k, val_fraction, test_fraction) -> None:
    try:
        ds = dataset_from_arrays(train, test=test, num_states=k, val_fraction=val_fraction,
                                 test_fraction=test_fraction)
    except ValueError as err:
        assert str(err)
        return
    total = len(ds.train) + len(ds.val) + len(ds.test)
    assert total == train.shape[0] + (0 if test is None else test.shape[0])
    for split in (ds.train, ds.val, ds.test):
        assert split.dtype == torch.long
        if split.numel():
            assert 0 <= int(split.min()) and int(split.max()) < ds.num_states


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=200).map(lambda b: b"\x93NUMPY\x01\x00" + b),
                 st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b)),
       st.sampled_from([".npy", ".npz"]))
def test_array_file_loads_or_raises_value_error(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(data)
        try:
            ds = load_array_file(path)
        except ValueError as err:
            assert "fuzz" in str(err)
            return
        assert ds.train.dtype == torch.long


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    import io

    from numpy.lib import format as npformat

    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@FUZZ
@given(st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**62)), min_size=0, max_size=4).map(tuple),
       st.sampled_from(["|u1", "<i8", ">i4", "<f4", "|b1", "|O", "<U3", "<c16", "|V4"]),
       st.integers(0, 400), st.sampled_from([".npy", ".npz"]))
@example(shape=(0, 707, 1414, 1153269792085), descr="<i8", payload=0, suffix=".npy")  # found by this test
def test_npy_header_of_any_shape_loads_or_raises_value_error(shape, descr, payload, suffix) -> None:
    """A well-formed header with any shape (up to 2^62 per axis) and any payload length: never a
    MemoryError, never a suggestion to unpickle."""
    import zipfile

    raw = _npy_header(shape, descr) + bytes(payload)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        if suffix == ".npy":
            path.write_bytes(raw)
        else:
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("train.npy", raw)
        try:
            ds = load_array_file(path)
        except ValueError as err:
            assert "fuzz" in str(err) and "allow_pickle" not in str(err) and "\n" not in str(err)
            return
        assert ds.train.dtype == torch.long and len(ds.train) + len(ds.val) + len(ds.test) == shape[0]


@FUZZ
@given(st.lists(st.sampled_from([b">r1 x", b">", b";c", b"ACGT", b"acgtN", b"", b"  ", b"GG\tCC"]), max_size=12),
       st.lists(st.sampled_from([b"\n", b"\r", b"\r\n"]), min_size=12, max_size=12), st.booleans())
def test_fasta_with_any_line_ends_parses_or_raises_value_error(lines, ends, gz) -> None:
    """FASTA lines joined by any mix of LF, CR and CRLF parse to the same records as with LF alone."""
    import gzip

    from discrete_diffusion.data import read_fasta

    with tempfile.TemporaryDirectory() as tmp:
        mixed, unix = Path(tmp) / "fuzz.fa", Path(tmp) / "unix.fa"
        data = b"".join(line + end for line, end in zip(lines, ends))
        mixed.write_bytes(gzip.compress(data) if gz else data)
        unix.write_bytes(b"".join(line + b"\n" for line in lines))
        try:
            expected = [(r.name, r.header, r.raw) for r in read_fasta(unix)]
        except ValueError:
            with pytest.raises(ValueError, match="fuzz"):
                read_fasta(mixed)
            return
        assert [(r.name, r.header, r.raw) for r in read_fasta(mixed)] == expected


_KEYS = ["train.steps", "train.lr", "train.batch_size", "model.channel_mults", "data.name", "data.path",
         "process.eps", "train.time_limit_minutes", "sample.sampler", "train.nope", "nosection.key", "train",
         "model", "", "train.steps.deeper"]
_VALUES = st.one_of(st.text(max_size=20), st.integers().map(str), st.floats().map(str),
                    st.sampled_from(["[1, 2]", "{a: 1}", "null", "~", "true", "[", "{", "'", '"', "${train.lr}",
                                     "${oc.env:HOME}", "???", "1e400", "nan", "- 1"]))


@FUZZ
@given(st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KEYS), _VALUES)))
def test_config_override_parses_or_raises_value_error(override: str) -> None:
    try:
        config = load_config(None, [override])
    except ValueError as err:
        assert str(err)
        return
    # a config that parsed must be fully resolvable and typed
    assert isinstance(config.train.steps, int) and isinstance(config.train.lr, float)
    from discrete_diffusion.config import to_dict
    to_dict(config)


@FUZZ
@given(st.one_of(st.binary(max_size=200),
                 st.text(max_size=200).map(str.encode),
                 st.builds(lambda k, v: f"train:\n  {k}: {v}\n".encode(), st.sampled_from(["steps", "lr", "nope", ""]),
                           st.text(max_size=20))))
def test_config_file_parses_or_raises_value_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(data)
        try:
            config = load_config(path)
        except ValueError as err:
            assert str(err)
            return
        assert isinstance(config.train.steps, int)


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: _PNG_MAGIC + b)),
       st.integers(0, 120))
def test_png_folder_loads_or_raises_value_error(garbage: bytes, cut: int) -> None:
    """A folder with valid PNGs plus one garbage or truncated file: refused, naming the file."""
    from PIL import Image

    from discrete_diffusion.data import load_png_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(3):
            Image.fromarray(np.full((4, 4), 40 * i, dtype=np.uint8)).save(folder / f"ok{i}.png")
        good = (folder / "ok1.png").read_bytes()
        (folder / "zz.png").write_bytes(garbage if garbage else good[:cut])
        try:
            ds = load_png_folder(folder)
        except ValueError as err:
            assert "zz.png" in str(err)
            return
        assert ds.num_states == 256  # only possible when the cut left a complete image


# --------------------------------------------------------------------------- checkpoint manifests

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
_CKPT: dict[str, object] = {}


def _ckpt_objects(seed: int) -> tuple:
    from discrete_diffusion.train.ema import EMA
    from discrete_diffusion.train.optim import build_optimizer, warmup_cosine_schedule

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = warmup_cosine_schedule(opt, warmup_steps=2, total_steps=10)
    ema = EMA(model, decay=0.9)
    return model, opt, sched, ema, {"data": torch.Generator().manual_seed(seed)}


def _json_paths(obj, prefix=()) -> list[tuple]:
    """Every place in a manifest a value can be replaced (long lists: their first two items)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:2]):
            out += _json_paths(v, prefix + (i,))
    return out


def _checkpoint_pair() -> tuple[Path, dict]:
    """Two valid checkpoints (steps 1 and 2) of a tiny model, built once; returns the folder and step 2's manifest."""
    if not _CKPT:
        from discrete_diffusion.train.checkpoint import save_checkpoint

        folder = Path(tempfile.mkdtemp(prefix="fuzz_ckpt_"))
        model, opt, sched, ema, gens = _ckpt_objects(0)
        for step in (1, 2):
            model(torch.randn(2, 3)).sum().backward()
            opt.step()
            sched.step()
            ema.update(model)
            save_checkpoint(folder, step, model, opt, sched, ema, gens, extra={"best": [1.0, step]}, keep_last=None)
        _CKPT.update(folder=folder, meta=json.loads((folder / "ckpt_00000002.json").read_text()))
    return _CKPT["folder"], _CKPT["meta"]


@st.composite
def hostile_manifests(draw) -> bytes:
    """Step 2's manifest with one value replaced or removed, or raw bytes / a truncated copy / deep nesting."""
    _, meta = _checkpoint_pair()
    text = json.dumps(meta)
    kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "bytes", "truncate", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncate":
        return text.encode()[:draw(st.integers(0, len(text)))]
    if kind == "deep":
        depth = draw(st.integers(1, 50_000))
        return text.replace('"extra": {', '"extra": {"x": ' + "[" * depth + "]" * depth + ", ").encode()
    path = draw(st.sampled_from(_json_paths(meta)))
    meta = json.loads(text)
    node = meta
    for key in path[:-1]:
        node = node[key]
    if kind == "delete":
        del node[path[-1]]
    else:
        node[path[-1]] = draw(_JSON)
    return json.dumps(meta).encode()


@settings(max_examples=int(__import__("os").environ.get("FUZZ_N", 30)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(hostile_manifests())
def test_hostile_manifest_is_skipped_or_refused_with_value_error(data: bytes) -> None:
    """A manifest with any value replaced: scanning returns it or the previous valid checkpoint (never raises);
    loading it either restores or raises ValueError before anything is restored. About 0.1 s an example:
    30 by default (under 5 s); FUZZ_N=1200 ran clean (2 min)."""
    from discrete_diffusion.runs.weights import find_latest_checkpoint
    from discrete_diffusion.train.checkpoint import load_checkpoint
    from discrete_diffusion.train.trainer import best_record

    folder, _ = _checkpoint_pair()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "ckpts"
        shutil.copytree(folder, work)
        (work / "ckpt_00000002.json").write_bytes(data)
        latest = find_latest_checkpoint(work)
        assert latest in (work / "ckpt_00000001.json", work / "ckpt_00000002.json")
        model, opt, sched, ema, gens = _ckpt_objects(7)
        before = [t.clone() for t in model.state_dict().values()] + [gens["data"].get_state()]
        try:
            load_checkpoint(work / "ckpt_00000002.json", model, opt, sched, ema, gens, check_extra=best_record)
        except ValueError as err:
            assert str(err) and "\n" not in str(err)
            after = [t.clone() for t in model.state_dict().values()] + [gens["data"].get_state()]
            assert all(torch.equal(a, b) for a, b in zip(before, after))
        else:
            assert latest.name == "ckpt_00000002.json"  # what loads by name is never skipped by the scan
        if latest.name == "ckpt_00000001.json":
            load_checkpoint(latest, *_ckpt_objects(8))  # the previous valid checkpoint still loads
