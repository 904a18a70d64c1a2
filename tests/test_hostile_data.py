"""Hostile data files (issue 11): small inputs that describe huge arrays, unclear messages, separate test
files, and data replaced after training. Each hostile file is made cheaply (a crafted header, a patched zip
size, a deflate stream of repeated full-flush blocks) and must give a one-line ValueError quickly, with
bounded memory (tracemalloc counts numpy's and Python's allocations)."""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from numpy.lib import format as npformat
from PIL import Image

from discrete_diffusion.data import load_dataset, read_fasta

# The library's limits and manifest are imported inside the tests, so that on code without them each test
# fails on its own behaviour rather than all at collection.

MiB = 1 << 20


def refused_quickly(fn, match: str, max_seconds: float = 5.0, max_peak: int = 16 * MiB) -> str:
    """Run ``fn``; it must raise a one-line ValueError matching ``match`` within the time and memory bounds."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=match) as info:
            fn()
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message
    assert elapsed < max_seconds, f"took {elapsed:.1f} s"
    assert peak < max_peak, f"peak allocation {peak / MiB:.0f} MiB"
    return message


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()  # magic, version, length and header


# ----------------------------------------------------------------------------- .npy / .npz


def test_npy_header_claiming_a_huge_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_header((2**40, 16)) + bytes(64))
    message = refused_quickly(lambda: load_dataset("array", path=path), r"huge\.npy.*\(1099511627776, 16\)")
    assert "data.max_bytes" in message


def test_npy_header_disagreeing_with_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.npy"
    path.write_bytes(npy_header((4, 4), "<i8") + bytes(64))
    refused_quickly(lambda: load_dataset("array", path=path), r"short\.npy: truncated \.npy.*128 bytes.*only 64")


@pytest.mark.parametrize("content", ["random", "pickle"])
def test_npy_messages_never_suggest_unpickling(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.npy"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes())
    else:
        np.save(path, np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    message = refused_quickly(lambda: load_dataset("array", path=path), r"bad\.npy")
    for advice in ("allow_pickle", "unsafe", "pickle.load"):
        assert advice not in message
    assert ("not a NumPy .npy array" in message) if content == "random" else ("object (pickled)" in message)


def _patch_zip_size(raw: bytes, size: int) -> bytes:
    """Set the uncompressed size of the (single) member in the local header and the central directory."""
    out = bytearray(raw)
    local = out.find(b"PK\x03\x04")
    central = out.find(b"PK\x01\x02")
    out[local + 22 : local + 26] = struct.pack("<I", size)
    out[central + 24 : central + 28] = struct.pack("<I", size)
    return bytes(out)


def test_npz_member_claiming_a_huge_size_is_refused(tmp_path: Path) -> None:
    member = npy_header((2**31,)) + bytes(64)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("train.npy", member)
    path = tmp_path / "bomb.npz"
    path.write_bytes(_patch_zip_size(buf.getvalue(), 2**31 + len(member) - 64))
    message = refused_quickly(lambda: load_dataset("array", path=path), r"bomb\.npz member 'train'")
    assert "data.max_bytes" in message


def test_npz_of_zeros_is_refused_before_inflating(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, train=np.zeros((MiB // 4, 16), dtype=np.uint8))  # 4 MiB inflated, 4 KiB on disk
    assert path.stat().st_size < MiB
    refused_quickly(lambda: load_dataset("array", path=path, max_bytes=MiB), r"zeros\.npz member 'train'.*max_bytes",
                    max_peak=2 * MiB)
    ds = load_dataset("array", path=path, max_bytes=64 * MiB)  # a larger budget loads it
    assert ds.train.shape[0] + ds.val.shape[0] + ds.test.shape[0] == MiB // 4


def test_num_states_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 3), dtype=np.int64))
    refused_quickly(lambda: load_dataset("array", path=path, num_states=2**40), r"num_states=1099511627776.*1\.\.65536")
    assert load_dataset("array", path=path, num_states=65536).num_states == 65536
    np.save(path, np.full((4, 3), 2**40, dtype=np.int64))
    refused_quickly(lambda: load_dataset("array", path=path), r"values up to 1099511627776.*65536")


# ----------------------------------------------------------------------------- gzip FASTA and PNG


def _deflate_bomb(prefix: bytes, fill: bytes, gib: int) -> bytes:
    """A gzip whose inflated size is ``gib`` GiB: one full-flush deflate block of 1 MiB repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(fill * MiB) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(fill * MiB) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == again  # a full flush resets the window: identical input, identical bytes
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + first + block * (gib * 1024) + c.flush() + struct.pack("<II", 0, 0)


def test_gzip_fasta_bomb_is_refused_while_streaming(tmp_path: Path) -> None:
    path = tmp_path / "bomb.fa.gz"
    path.write_bytes(_deflate_bomb(b">chr1\n", b"A", 6))  # 6 GiB of 'A' in about 6 MB
    assert path.stat().st_size < 8 * MiB
    cap = (1 << 30) // 8  # the default data.max_bytes of 1 GiB, 8 bytes per state
    message = refused_quickly(lambda: load_dataset("fasta", path=path, seq_len=8), r"bomb\.fa\.gz: the gzip stream",
                              max_seconds=10, max_peak=cap + 16 * MiB)
    assert "data.max_bytes" in message


def test_cr_only_fasta_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "mac.fa"
    path.write_bytes(b">r1 first record\rACGTACGT\racgt\r;comment\r>r2\rGGGGCCCC\r")
    records = read_fasta(path)
    assert [(r.name, r.header, r.raw) for r in records] == [
        ("r1", "r1 first record", b"ACGTACGTacgt"), ("r2", "r2", b"GGGGCCCC")]
    ds = load_dataset("fasta", path=path, seq_len=4, val_fraction=0.0, test_fraction=0.0)
    assert ds.train.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [2, 2, 2, 2], [1, 1, 1, 1]]
    crlf = tmp_path / "dos.fa"
    crlf.write_bytes(path.read_bytes().replace(b"\r", b"\r\n"))
    assert [r.raw for r in read_fasta(crlf)] == [r.raw for r in records]


def _png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros, written directly (IHDR, one IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes(width)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def test_large_pngs_are_refused_before_decoding(tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    big = _png(8000, 8000)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(big)
    message = refused_quickly(lambda: load_dataset("png-folder", path=folder), r"pngs: the images up to 2\.png",
                              max_peak=4 * len(big) + MiB)
    assert "8000x8000" in message and "data.max_bytes" in message
    # a small budget refuses a single image from its header too
    (folder / "1.png").unlink(), (folder / "2.png").unlink()
    refused_quickly(lambda: load_dataset("png-folder", path=folder, max_bytes=MiB), r"8000x8000",
                    max_peak=4 * len(big) + MiB)


# ----------------------------------------------------------------------------- separate test / val files


def test_separate_test_and_val_files_for_each_loader(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", np.arange(40).reshape(20, 2) % 5)
    np.save(tmp_path / "test.npy", np.ones((7, 2), dtype=np.int64))
    ds = load_dataset("array", path=tmp_path / "train.npy", test_path=tmp_path / "test.npy", val_fraction=0.1)
    assert ds.test.tolist() == [[1, 1]] * 7 and ds.train.shape[0] + ds.val.shape[0] == 20 and ds.val.shape[0] == 2
    assert set(ds.metadata["files"]) == {"path", "test_path"}
    np.savez(tmp_path / "both.npz", train=np.zeros((5, 2)), test=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="already holds a 'test' array"):
        load_dataset("array", path=tmp_path / "both.npz", test_path=tmp_path / "test.npy")

    (tmp_path / "train.txt").write_text("abcd" * 20)
    (tmp_path / "test.txt").write_text("abxy" * 3)
    ds = load_dataset("text", path=tmp_path / "train.txt", test_path=tmp_path / "test.txt", seq_len=4,
                      val_fraction=0.0)
    assert ds.train.shape == (20, 4) and ds.test.shape == (3, 4)
    assert ds.metadata["unk_count"]["test"] == 6

    (tmp_path / "train.fa").write_text(">a\n" + "ACGT" * 10 + "\n")
    (tmp_path / "val.fa").write_text(">b\nGGGGCCCC\n")
    ds = load_dataset("fasta", path=tmp_path / "train.fa", val_path=tmp_path / "val.fa", seq_len=4,
                      test_fraction=0.0)
    assert ds.val.tolist() == [[2, 2, 2, 2], [1, 1, 1, 1]] and ds.train.shape == (10, 4) and ds.test.shape[0] == 0

    for name, n in (("tr", 5), ("te", 2)):
        (tmp_path / name).mkdir()
        for i in range(n):
            Image.fromarray(np.full((4, 4), 16 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    ds = load_dataset("png-folder", path=tmp_path / "tr", test_path=tmp_path / "te", val_fraction=0.0)
    assert ds.train.shape == (5, 4, 4) and ds.test.shape == (2, 4, 4) and int(ds.test[1].max()) == 16


def _train(ddiff, run: Path, *extra: str) -> None:
    res = ddiff("train", "--out", run, "--no-progress", *TINY, "model.backbone=mlp", "model.hidden=16",
                "model.depth=1", "data.name=array", *extra)
    assert res.rc == 0, res


def _evaluate(ddiff, run: Path, *extra: str):
    return ddiff("evaluate", run, "--json", "--no-progress", "--t-samples", "1", *extra)


def test_test_path_end_to_end_and_data_change_is_refused(ddiff, tmp_path: Path) -> None:
    from discrete_diffusion.runs.data_record import DataChangedWarning

    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.integers(0, 4, (40, 6)))
    np.save(tmp_path / "test.npy", rng.integers(0, 4, (13, 6)))
    run = tmp_path / "run"
    _train(ddiff, run, f"data.path={tmp_path / 'train.npy'}", f"data.test_path={tmp_path / 'test.npy'}",
           "data.num_states=4")
    manifest = json.loads((run / "data.json").read_text())
    assert set(manifest["files"]) == {"path", "test_path"} and manifest["sizes"]["test"] == 13
    res = _evaluate(ddiff, run)
    assert res.rc == 0, res
    assert json.loads(res.out)["num_examples"] == 13  # the test file, not a slice of train.npy

    np.save(tmp_path / "test.npy", rng.integers(0, 4, (13, 6)))  # replaced after training
    res = _evaluate(ddiff, run)
    assert res.rc == 2 and res.out == ""
    line = res.err.strip()
    assert "\n" not in line and "test.npy" in line and "changed since training" in line
    assert manifest["files"]["test_path"]["sha256"] in line and "--allow-data-change" in line
    res = ddiff("sample", run, "--num-samples", "2", "--no-progress", "--out", tmp_path / "s")
    assert res.rc == 2 and "changed since training" in res.err
    with pytest.warns(DataChangedWarning, match="DATA CHANGED SINCE TRAINING"):
        res = _evaluate(ddiff, run, "--allow-data-change")
    assert res.rc == 0 and json.loads(res.out)["num_examples"] == 13

    res = ddiff("train", "--out", run, "--resume", "--no-progress", "train.steps=7")
    assert res.rc == 2 and "a resumed run must train on the data it started with" in res.err

    (run / "data.json").unlink()  # a run written before checksums were recorded keeps working, with a warning
    with pytest.warns(DataChangedWarning, match="records no data checksums"):
        res = _evaluate(ddiff, run)
    assert res.rc == 0


def test_data_manifest_covers_builtin_datasets(tmp_path: Path) -> None:
    from discrete_diffusion.runs.data_record import DataChangedError, check_data_manifest, write_data_manifest

    ds = load_dataset("digits")
    write_data_manifest(tmp_path, ds)
    assert check_data_manifest(tmp_path, ds) == []
    other = load_dataset("digits", split_seed=1)
    with pytest.raises(DataChangedError, match="splits sha256"):
        check_data_manifest(tmp_path, other)
