"""Character-level text and DNA (FASTA) datasets: loaders, splits, vocabularies and error messages."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest
import torch

from discrete_diffusion.data import DATASETS, load_dataset
from discrete_diffusion.data.dna import ECOLI_PATH, decode_dna, encode_dna, load_ecoli, load_fasta, read_fasta
from discrete_diffusion.data.fashion_mnist import DatasetUnavailableError
from discrete_diffusion.data.kjv import extract_kjv_verses, kjv_cache_path, load_kjv
from discrete_diffusion.data.text import UNK, decode_text, encode_text, load_text_file

# ----------------------------------------------------------------------------------------- text


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_registered() -> None:
    for name in ("text", "kjv", "fasta", "ecoli"):
        assert name in DATASETS


def test_text_vocab_splits_windows(tmp_path: Path) -> None:
    text = "the quick brown fox jumps over the lazy dog.\n" * 40          # 1800 chars
    p = _write(tmp_path, "t.txt", text.encode())
    d = load_text_file(p, seq_len=16, val_fraction=0.1, test_fraction=0.1)
    assert d.kind == "sequence" and d.site_shape == (16,)
    n = len(text)
    n_test = round(n * 0.1)
    n_val = round(n * 0.1)
    n_train = n - n_val - n_test
    assert d.train.shape == (n_train // 16, 16)
    assert d.val.shape == (n_val // 16, 16)
    assert d.test.shape == (n_test // 16, 16)
    vocab = d.metadata["vocab"]
    assert vocab == sorted(set(text[:n_train]))
    assert d.num_states == len(vocab) and d.metadata["unk_index"] is None
    # Splits are contiguous blocks by position: decoding gives back exactly those blocks.
    assert "".join(decode_text(d.train, vocab)) == text[: (n_train // 16) * 16]
    assert "".join(decode_text(d.val, vocab)) == text[n_train : n_train + (n_val // 16) * 16]
    assert "".join(decode_text(d.test, vocab)) == text[n_train + n_val : n_train + n_val + (n_test // 16) * 16]
    assert d.metadata["split"]["chars"] == {"train": n_train, "val": n_val, "test": n_test}
    # deterministic
    d2 = load_dataset("text", path=str(p), seq_len=16, val_fraction=0.1, test_fraction=0.1)
    for s in ("train", "val", "test"):
        assert torch.equal(d.split(s), d2.split(s))


def test_text_unicode_and_round_trip(tmp_path: Path) -> None:
    text = "Grüße, 世界! naïve café. " * 30
    p = _write(tmp_path, "u.txt", b"\xef\xbb\xbf" + text.encode("utf-8"))   # with a BOM (dropped)
    d = load_text_file(p, seq_len=8, val_fraction=0.0, test_fraction=0.0)
    vocab = d.metadata["vocab"]
    assert "世" in vocab and "\ufeff" not in vocab
    assert decode_text(d.train, vocab)[0] == text[:8]
    tokens = encode_text(text, vocab)
    assert decode_text(tokens, vocab) == [text]


def test_text_unk_for_unseen_val_test_characters(tmp_path: Path) -> None:
    text = "ab" * 400 + "abcXYab" * 20                 # 'c', 'X', 'Y' only near the end (val/test)
    p = _write(tmp_path, "k.txt", text.encode())
    d = load_text_file(p, seq_len=10, val_fraction=0.1, test_fraction=0.1)
    vocab = d.metadata["vocab"]
    assert vocab == ["a", "b", UNK]
    assert d.metadata["unk_index"] == 2
    unk = d.metadata["unk_count"]
    assert unk["train"] == 0 and unk["val"] + unk["test"] > 0
    assert int((d.test == 2).sum()) > 0
    # a given vocabulary is used as is (e.g. from a run directory)
    d2 = load_text_file(p, seq_len=10, val_fraction=0.1, test_fraction=0.1, vocab=vocab)
    assert d2.metadata["vocab"] == vocab and torch.equal(d2.train, d.train)


def test_text_errors(tmp_path: Path) -> None:
    bad = _write(tmp_path, "latin1.txt", "abc déf".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*byte offset 5"):
        load_text_file(bad, seq_len=2)
    empty = _write(tmp_path, "empty.txt", b"")
    with pytest.raises(ValueError, match=r"empty\.txt.*empty"):
        load_text_file(empty)
    short = _write(tmp_path, "short.txt", b"hello")
    with pytest.raises(ValueError, match="seq_len"):
        load_text_file(short, seq_len=256)
    with pytest.raises(FileNotFoundError):
        load_text_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode_text("abz", "ab")


def test_extract_kjv_verses_format() -> None:
    raw = ("Obad1:1 The vision of Obadiah.\n"
           "Ge1:1 In the beginning God created the heaven and the earth.\n"
           "Ge1:2 And the earth was without form.\n"
           "1Cor13:13 And now abideth faith, hope, charity.\n"
           "Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.\n")
    out = extract_kjv_verses(raw)
    assert out == ("In the beginning God created the heaven and the earth.\nAnd the earth was without form.\n"
                   "And now abideth faith, hope, charity.\n"
                   "The grace of our Lord Jesus Christ be with you all. Amen.\n")
    with pytest.raises(ValueError, match="Ge1:1"):
        extract_kjv_verses("nothing here\n")


def test_kjv_missing_program_names_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DDIFF_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert kjv_cache_path() == tmp_path / "kjv.txt"
    with pytest.raises(DatasetUnavailableError, match="bible-kjv"):
        load_kjv()


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian package bible-kjv not installed")
def test_kjv_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DDIFF_DATA_DIR", str(tmp_path))
    d = load_kjv(seq_len=256)
    assert (tmp_path / "kjv.txt").is_file()                         # cached
    text = (tmp_path / "kjv.txt").read_text(encoding="utf-8")
    assert 4_000_000 < len(text) < 4_300_000
    assert text.startswith("In the beginning God created the heaven and the earth.\n")
    assert text.rstrip("\n").endswith("Amen.")
    assert re.search(r"(^|\n)(Ge|Gen)1:1", text) is None
    assert re.search(r"(^|\n)[1-3]?[A-Z][A-Za-z]*\d+:\d+ ", text) is None
    assert 60 <= d.num_states <= 66 and d.num_states == len(d.metadata["vocab"])
    assert d.kind == "sequence" and d.site_shape == (256,)
    assert d.train.shape[0] > 10 * d.test.shape[0] > 0
    assert decode_text(d.train[:1], d.metadata["vocab"])[0].startswith("In the beginning")
    # the second load reads the cache (no `bible` call needed)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert torch.equal(load_kjv(seq_len=256).test, d.test)


# ------------------------------------------------------------------------------------------ DNA

FASTA = (">chr1 first record\nACGTACGTAC\nacgtacgtac\nGGGG\n"
         ";comment\n>chr2\nTTTTCCCCAAAAGGGGTTTT\n")


def test_fasta_plain_and_gzip_round_trip(tmp_path: Path) -> None:
    plain = _write(tmp_path, "a.fa", FASTA.encode())
    gz = _write(tmp_path, "b.fa", gzip.compress(FASTA.encode()))    # no .gz suffix: magic bytes decide
    d1 = load_fasta(plain, seq_len=4, val_fraction=0.0, test_fraction=0.0)
    d2 = load_fasta(gz, seq_len=4, val_fraction=0.0, test_fraction=0.0)
    assert torch.equal(d1.train, d2.train)
    assert d1.num_states == 4 and d1.kind == "sequence"
    # windows within records: chr1 (24 bases) -> 6 windows, chr2 (20 bases) -> 5 windows
    assert d1.train.shape == (11, 4)
    seqs = decode_dna(d1.train)
    assert "".join(seqs[:6]) == "ACGTACGTACACGTACGTACGGGG"
    assert "".join(seqs[6:]) == "TTTTCCCCAAAAGGGGTTTT"
    assert torch.equal(encode_dna("acgt"), torch.tensor([0, 1, 2, 3]))
    assert d1.metadata["records"] == 2 and d1.metadata["record_names"] == ["chr1", "chr2"]
    recs = read_fasta(gz)
    assert [len(r) for r in recs] == [24, 20]
    # positional split: test = last windows
    d3 = load_fasta(plain, seq_len=4, val_fraction=0.2, test_fraction=0.2)
    assert torch.equal(torch.cat([d3.train, d3.val, d3.test]), d1.train)
    assert d3.test.shape[0] == 2 and d3.val.shape[0] == 2


def test_fasta_unknown_characters(tmp_path: Path) -> None:
    p = _write(tmp_path, "n.fa", b">r1\nACGTACGT\n>r2 x\nACGTAC\nGNACGTAC\n")
    with pytest.raises(ValueError, match=r"record 'r2'.*'N' at position 8") as e:
        load_fasta(p, seq_len=4)
    assert "unknown='skip'" in str(e.value)
    d = load_fasta(p, seq_len=4, unknown="skip", val_fraction=0.0, test_fraction=0.0)
    # r1: 2 windows; r2 = ACGT ACGN ACGT AC -> ACGN dropped -> 2 windows
    assert d.train.shape == (4, 4) and d.metadata["skipped_windows"] == 1
    assert decode_dna(d.train) == ["ACGT", "ACGT", "ACGT", "ACGT"]
    with pytest.raises(ValueError, match="unknown must be one of"):
        load_fasta(p, unknown="drop")
    iupac = _write(tmp_path, "r.fa", b">s\nACGRT\n")
    with pytest.raises(ValueError, match=r"'R' at position 4"):
        load_fasta(iupac, seq_len=2)


def test_fasta_file_errors(tmp_path: Path) -> None:
    data = gzip.compress((">r\n" + "ACGT" * 5000 + "\n").encode())
    trunc = _write(tmp_path, "t.fa.gz", data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t\.fa\.gz.*truncated gzip"):
        load_fasta(trunc)
    nohdr = _write(tmp_path, "h.fa", b"ACGTACGT\nACGT\n")
    with pytest.raises(ValueError, match=r"h\.fa.*'>' header"):
        load_fasta(nohdr)
    empty = _write(tmp_path, "e.fa", b"")
    with pytest.raises(ValueError, match="empty"):
        load_fasta(empty)
    short = _write(tmp_path, "s.fa", b">r\nACGT\n")
    with pytest.raises(ValueError, match="no complete window"):
        load_fasta(short, seq_len=8)


def test_ecoli_missing_names_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError, match="bowtie-examples"):
        load_ecoli(path=tmp_path / "nope.fna.gz")


@pytest.mark.skipif(not ECOLI_PATH.is_file(), reason="Debian package bowtie-examples not installed")
def test_ecoli_loads() -> None:
    d = load_dataset("ecoli", seq_len=1024)
    assert d.num_states == 4 and d.kind == "sequence" and d.site_shape == (1024,)
    assert int(d.train.min()) == 0 and int(d.train.max()) == 3
    assert d.metadata["bases"] == 4_938_920
    assert d.train.shape[0] + d.val.shape[0] + d.test.shape[0] == 4_938_920 // 1024
    assert decode_dna(d.train[:1])[0].startswith("AGCTTTTCATTCTGACTGCAACGG")


def test_likelihood_unit_names_characters_and_bases() -> None:
    from discrete_diffusion.data import DiscreteDataset
    from discrete_diffusion.pipeline import likelihood_unit

    def dataset(vocab):
        x = torch.zeros(2, 4, dtype=torch.long)
        meta = {} if vocab is None else {"vocab": vocab}
        return DiscreteDataset(x, x[:0], x[:0], num_states=4, name="t", kind="sequence", metadata=meta)

    assert likelihood_unit(dataset(list("ACGT"))) == "bits/base"
    assert likelihood_unit(dataset(list("abc "))) == "bits/char"
    assert likelihood_unit(dataset(None)) == "bits/dim"
