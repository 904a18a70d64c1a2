"""Tests for discrete_diffusion.data."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from discrete_diffusion.data import (
    DATASETS,
    DatasetUnavailableError,
    DiscreteDataset,
    dataset_from_arrays,
    load_dataset,
    quantize,
    read_idx,
    split_indices,
    validate_values,
)
from discrete_diffusion.data import fashion_mnist as fm

# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DiscreteDataset:
    return load_dataset("digits")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(x.shape[0], -1)}


def test_digits_split_sizes_range_and_labels(digits: DiscreteDataset) -> None:
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1350, 150, 297)
    assert digits.site_shape == (8, 8)
    assert digits.num_states == 17 and digits.kind == "image"
    for x in (digits.train, digits.val, digits.test):
        assert x.dtype == torch.long
        assert int(x.min()) == 0 and int(x.max()) == 16
    assert digits.train_labels is not None and digits.train_labels.shape == (1350,)
    assert set(digits.test_labels.tolist()) == set(range(10))
    json.dumps(digits.metadata)  # JSON-serialisable


def test_digits_split_disjoint_and_pinned(digits: DiscreteDataset) -> None:
    from sklearn.datasets import load_digits

    test_idx, val_idx, train_idx = split_indices(1797, [297, 150, 1350], seed=0)
    all_idx = np.concatenate([test_idx, val_idx, train_idx])
    assert sorted(all_idx.tolist()) == list(range(1797))  # disjoint and complete
    # the fixed split is pinned: changing the permutation must fail this test
    assert test_idx[:4].tolist() == [1526, 286, 1504, 1076]
    assert val_idx[:2].tolist() == [778, 1749] and train_idx[:2].tolist() == [5, 472]
    raw = load_digits()
    assert torch.equal(digits.test[0], torch.from_numpy(raw.images[1526].astype(np.int64)))
    assert int(digits.test_labels[0]) == int(raw.target[1526])
    # as sets of images: train/test overlap only through duplicate images in the source
    assert len(_rows(digits.test) & _rows(digits.train)) < 5


def test_digits_deterministic(digits: DiscreteDataset) -> None:
    again = load_dataset("digits")
    for s in ("train", "val", "test"):
        assert torch.equal(digits.split(s), again.split(s))
        assert torch.equal(digits.labels(s), again.labels(s))
    other = load_dataset("digits", split_seed=1)
    assert not torch.equal(other.test, digits.test)


def test_digits_binary(digits: DiscreteDataset) -> None:
    b = load_dataset("digits-binary")
    assert b.num_states == 2 and b.name == "digits-binary"
    assert set(torch.unique(b.train).tolist()) == {0, 1}
    assert torch.equal(b.train, (digits.train >= 8).long())
    assert torch.equal(b.test_labels, digits.test_labels)


def test_unknown_dataset_lists_names() -> None:
    with pytest.raises(ValueError) as e:
        load_dataset("mnist-color")
    for name in DATASETS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="accepted options"):
        load_dataset("digits", levls=3)
    assert load_dataset("DIGITS_binary").num_states == 2  # normalised names


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "data, k, pattern",
    [
        (np.array([[0, 1], [2, 5]]), 4, r"max found 5.*0\.\.3"),
        (np.array([[0, -1], [2, 3]]), 4, r"negative.*min found -1"),
        (np.array([[0.0, np.nan]]), 4, "NaN"),
        (np.array([[0.0, np.inf]]), 4, "NaN/inf"),
        (np.array([[0.0, 1.5]]), 4, "non-integral value 1.5"),
        (np.zeros((0, 3), dtype=np.int64), 4, "empty"),
        (np.array([0, 1, 2]), 4, "at least 2 dimensions"),
        (np.array([["a", "b"]]), 4, "dtype"),
    ],
)
def test_validate_values_errors(data: np.ndarray, k: int, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as e:
        validate_values(data, k, "my.npy")
    assert "my.npy" in str(e.value) or "dtype" in pattern


def test_validate_values_accepts_integral_floats_and_tensors() -> None:
    out = validate_values(np.array([[0.0, 3.0]], dtype=np.float32), 4, "x")
    assert out.dtype == torch.long and out.tolist() == [[0, 3]]
    out = validate_values(torch.tensor([[True, False]]), 2, "x")
    assert out.tolist() == [[1, 0]]


def test_dataset_from_arrays_splits_and_labels() -> None:
    x = np.arange(100 * 3).reshape(100, 3) % 5
    y = np.arange(100)
    ds = dataset_from_arrays(x, train_labels=y, val_fraction=0.2, test_fraction=0.1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (70, 20, 10)
    assert ds.num_states == 5 and ds.kind == "sequence"
    ids = torch.cat([ds.train_labels, ds.val_labels, ds.test_labels])
    assert sorted(ids.tolist()) == list(range(100))
    assert torch.equal(ds.train, torch.from_numpy(x)[ds.train_labels])  # labels follow rows
    with pytest.raises(ValueError, match="val_fraction"):
        dataset_from_arrays(x, val_fraction=0.6, test_fraction=0.5)


# ----------------------------------------------------------------------------- array files


def test_array_npy_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(50, 6, 6)).astype(np.uint8)
    p = tmp_path / "x.npy"
    np.save(p, x)
    ds = load_dataset("array", path=p)
    assert ds.num_states == int(x.max()) + 1 and ds.kind == "image" and ds.site_shape == (6, 6)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 5, 5)
    joined = torch.cat([ds.train, ds.val, ds.test])
    assert _rows(joined) == _rows(torch.from_numpy(x.astype(np.int64)))
    ds2 = load_dataset("array", path=p, num_states=10, kind="tabular")
    assert ds2.num_states == 10 and ds2.kind == "tabular" and torch.equal(ds2.test, ds.test)
    assert ds.metadata["sha256"] and json.dumps(ds.metadata)


def test_array_npz_roundtrip(tmp_path: Path) -> None:
    tr = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 1]])
    va = np.array([[0, 0, 0]])
    te = np.array([[2, 2, 2], [0, 2, 0]])
    p = tmp_path / "d.npz"
    np.savez(p, train=tr, val=va, test=te, train_labels=np.array([0, 1, 0]))
    ds = load_dataset("array", path=p, num_states=3)
    assert torch.equal(ds.train, torch.tensor(tr)) and torch.equal(ds.val, torch.tensor(va))
    assert torch.equal(ds.test, torch.tensor(te)) and ds.train_labels.tolist() == [0, 1, 0]
    single = tmp_path / "single.npz"
    np.savez(single, anything=np.tile(tr, (10, 1)))
    assert load_dataset("array", path=single).num_states == 3
    many = tmp_path / "many.npz"
    np.savez(many, a=tr, b=tr)
    with pytest.raises(ValueError, match="found keys: a, b"):
        load_dataset("array", path=many)


def test_array_bad_inputs(tmp_path: Path) -> None:
    p = tmp_path / "big.npy"
    np.save(p, np.array([[0, 1], [2, 7]]))
    with pytest.raises(ValueError, match=r"big\.npy.*max found 7.*num_states=4"):
        load_dataset("array", path=p, num_states=4)
    neg = tmp_path / "neg.npz"
    np.savez(neg, train=np.array([[0, 1]] * 5), test=np.array([[-2, 1]]))
    with pytest.raises(ValueError, match=r"neg\.npz 'test'.*min found -2"):
        load_dataset("array", path=neg)
    oned = tmp_path / "oned.npy"
    np.save(oned, np.arange(5))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        load_dataset("array", path=oned)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="junk.npy"):
        load_dataset("array", path=junk)


# ----------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(">u1").tobytes()


def test_idx_parser(tmp_path: Path) -> None:
    arr = (np.arange(2 * 3 * 4) * 7 % 256).astype(np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a-idx3-ubyte"
    p.write_bytes(_idx_bytes(arr))
    assert np.array_equal(read_idx(p), arr)
    gz = tmp_path / "a-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(arr)))
    assert np.array_equal(read_idx(gz), arr)
    i32 = np.array([1, -2, 70000], dtype=">i4")
    p32 = tmp_path / "b"
    p32.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + i32.tobytes())
    assert read_idx(p32).tolist() == [1, -2, 70000]


def test_idx_parser_errors(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))
    trunc = tmp_path / "trunc"
    trunc.write_bytes(good[:-3])
    with pytest.raises(ValueError, match=r"trunc.*truncated.*9 bytes follow"):
        read_idx(trunc)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    badgz = tmp_path / "bad.gz"
    badgz.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="bad.gz.*gzip"):
        read_idx(badgz)


# ----------------------------------------------------------------------------- PNG folder


def test_png_folder_gray_and_rgb(tmp_path: Path) -> None:
    gray = tmp_path / "gray"
    gray.mkdir()
    arrays = [np.full((5, 4), 10 * i, dtype=np.uint8) for i in range(10)]
    arrays[3][0, 0] = 255
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(gray / f"img{i:02d}.png")
    ds = load_dataset("png-folder", path=gray, val_fraction=0.2, test_fraction=0.1)
    assert ds.site_shape == (5, 4) and ds.num_states == 256 and ds.metadata["channels"] == 1
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7, 2, 1)
    joined = torch.cat([ds.train, ds.val, ds.test])
    assert _rows(joined) == _rows(torch.from_numpy(np.stack(arrays).astype(np.int64)))
    q = load_dataset("png-folder", path=gray, levels=16)
    assert q.num_states == 16 and int(torch.cat([q.train, q.val, q.test]).max()) == 15

    rgb = tmp_path / "rgb"
    rgb.mkdir()
    img = np.zeros((3, 2, 3), dtype=np.uint8)
    img[..., 0], img[..., 2] = 200, 7  # R and B planes
    for i in range(4):
        Image.fromarray(img).save(rgb / f"{i}.png")
    ds = load_dataset("png-folder", path=rgb)
    assert ds.site_shape == (3, 3, 2) and ds.metadata["channels"] == 3
    assert ds.train[0, 0].unique().tolist() == [200] and ds.train[0, 2].unique().tolist() == [7]


def test_png_folder_errors(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(d / "b.png")
    with pytest.raises(ValueError, match=r"b\.png.*6x4.*a\.png.*4x4"):
        load_dataset("png-folder", path=d)
    (d / "b.png").unlink()
    (d / "c.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"c\.png.*cannot read"):
        load_dataset("png-folder", path=d)
    (d / "c.png").unlink()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(d / "d.png")
    with pytest.raises(ValueError, match=r"d\.png"):
        load_dataset("png-folder", path=d)  # grayscale + RGB mixed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_dataset("png-folder", path=empty)


def test_quantize() -> None:
    x = torch.arange(256).reshape(1, 256)
    q = quantize(x, 256, 16)
    assert torch.equal(q, x // 16)
    with pytest.raises(ValueError):
        quantize(x, 256, 1)


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_missing_gives_install_hint(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


def test_fashion_mnist_download_checksum_mismatch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fm, "_fetch", lambda url, timeout=60.0: b"not the real file")
    with pytest.raises(DatasetUnavailableError, match="MD5 mismatch"):
        fm.download_fashion_mnist(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


def test_fashion_mnist_local_checksum_mismatch(tmp_path: Path) -> None:
    for stem, (_, _, shape) in fm.FASHION_MNIST_FILES.items():
        (tmp_path / stem).write_bytes(_idx_bytes(np.zeros((1,) + shape[1:], dtype=np.uint8)))
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)


@pytest.mark.skipif(not fm.SYSTEM_DIR.is_dir(), reason=f"apt package {fm.DEBIAN_PACKAGE} not installed")
def test_fashion_mnist_debian_files() -> None:
    ds = load_dataset("fashion-mnist-binary", data_dir=fm.SYSTEM_DIR, download=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.site_shape == (28, 28) and ds.num_states == 2
    assert set(torch.unique(ds.test).tolist()) == {0, 1}
    assert ds.test_labels[:5].tolist() == [9, 2, 1, 1, 6]  # official t10k label order
    assert sorted(torch.unique(ds.train_labels).tolist()) == list(range(10))


def test_data_config_keys_reach_the_loaders(tmp_path: Path) -> None:
    """data.max_bytes / data.test_path from the config reach the file loaders; built-in data ignore the budget."""
    from discrete_diffusion.builders import build_dataset
    from discrete_diffusion.config import load_config

    np.save(tmp_path / "x.npy", np.zeros((10, 4), dtype=np.uint8))
    np.save(tmp_path / "t.npy", np.ones((3, 4), dtype=np.uint8))
    base = ["data.name=array", f"data.path={tmp_path / 'x.npy'}"]
    with pytest.raises(ValueError, match=r"x\.npy.*over the limit data\.max_bytes=64 "):
        build_dataset(load_config(None, base + ["data.max_bytes=64"]))
    ds = build_dataset(load_config(None, base + [f"data.test_path={tmp_path / 't.npy'}", "data.max_bytes=4096"]))
    assert ds.test.shape == (3, 4) and ds.num_states == 2
    assert build_dataset(load_config(None, ["data.max_bytes=64"])).name == "digits"
    with pytest.raises(ValueError, match="bad options for dataset 'digits'.*test_path"):
        build_dataset(load_config(None, [f"data.test_path={tmp_path / 't.npy'}"]))
