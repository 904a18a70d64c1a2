"""data.normalize=text8, the text8 file, line-per-example and JSON Lines document corpora with EOS (issue 20 item 1),
and the data record of text runs (data.json) with and without the new keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from discrete_diffusion.builders import build_dataset
from discrete_diffusion.config import load_config
from discrete_diffusion.data import EOS, TEXT8_VOCAB, decode_text, load_dataset, normalize_text
from discrete_diffusion.data import kjv as kjv_module
from discrete_diffusion.runs.data_record import DataChangedError, check_data_manifest, data_manifest


def rows(ds, split="train") -> list[str]:
    return [r.replace(EOS, "|") for r in decode_text(ds.split(split), ds.metadata["vocab"])]


# ----------------------------------------------------------------------------------------- normalisation

def test_text8_rule() -> None:
    assert normalize_text("In the Beginning, God... (Gen 1:1)\n") == "in the beginning god gen "
    assert normalize_text("Ünïcode\tÀB--x") == " n code b x"      # non-ASCII letters are "other characters"
    assert normalize_text("  \n\n  ") == " "
    s = "The LORD's 2 words;\r\nAmen."
    once = normalize_text(s)
    assert normalize_text(once) == once                          # idempotent
    assert set(once) <= set(TEXT8_VOCAB) and "  " not in once
    assert normalize_text(s, "none") == s
    with pytest.raises(ValueError, match="data.normalize must be one of none, text8"):
        normalize_text(s, "lower")


def test_normalize_before_split_and_recorded(tmp_path: Path) -> None:
    raw = "Alpha, beta!\n" * 30 + "GAMMA delta?\n" * 10             # 520 characters -> 450 after normalising
    (tmp_path / "t.txt").write_text(raw)
    ds = load_dataset("text", path=str(tmp_path / "t.txt"), seq_len=8, normalize="text8")
    norm = normalize_text(raw)
    assert ds.metadata["normalize"] == "text8" and ds.metadata["num_chars"] == len(norm) == 450
    assert ds.metadata["normalized_from_chars"] == len(raw)
    assert ds.metadata["vocab"] == list(TEXT8_VOCAB) and ds.num_states == 27   # the 27 symbols, every letter
    # the split is taken on the normalised text: the test block is its last 5 % (22 characters: 2 windows)
    assert ds.metadata["split"]["chars"] == {"train": 406, "val": 22, "test": 22}
    assert "".join(decode_text(ds.test, ds.metadata["vocab"])) == norm[-22:][:16]
    assert data_manifest(ds)["text"] == {"normalize": "text8", "format": "plain"}
    plain = load_dataset("text", path=str(tmp_path / "t.txt"), seq_len=8)
    assert "text" not in data_manifest(plain)                     # a plain run's data.json is as before
    assert "A" in plain.metadata["vocab"] and "," in plain.metadata["vocab"] and plain.metadata["normalize"] == "none"


def test_kjv_27(monkeypatch) -> None:
    text = "In the beginning God created the heaven.\nAnd the earth.\n" * 40
    monkeypatch.setattr(kjv_module, "kjv_text", lambda: text)
    ds = kjv_module.load_kjv(seq_len=16, normalize="text8")
    assert ds.metadata["label"] == "KJV-27" and ds.num_states == 27
    assert rows(ds)[0] == "in the beginning"
    assert "label" not in kjv_module.load_kjv(seq_len=16).metadata


def test_config_and_builder_pass_the_text_options(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("One line.\nTwo lines!\n" * 20)
    cfg = load_config(None, ["data.name=text", f"data.path={tmp_path / 't.txt'}", "data.seq_len=8",
                             "data.normalize=text8", "data.format=lines", "data.packing=pad"])
    ds = build_dataset(cfg)
    assert ds.metadata["text_format"] == "lines" and ds.metadata["packing"] == "pad" and ds.num_states == 28
    assert rows(ds)[:2] == ["one line", "two line"]                # "two lines" + EOS is cut to 8 characters
    for bad, match in (("data.normalize=lower", "data.normalize must be"), ("data.format=csv", "data.format must"),
                       ("data.packing=wrap", "data.packing must")):
        with pytest.raises(ValueError, match=match):
            load_config(None, ["data.name=text", f"data.path={tmp_path / 't.txt'}", bad])
    with pytest.raises(ValueError, match="data.format applies to the datasets text, not 'kjv'"):
        build_dataset(load_config(None, ["data.name=kjv", "data.format=lines"]))
    with pytest.raises(ValueError, match="data.normalize applies to the datasets kjv, text, not 'digits'"):
        build_dataset(load_config(None, ["data.name=digits", "data.normalize=text8"]))


# ------------------------------------------------------------------------------------------- text8 file

def test_text8_file_split_90_5_5(tmp_path: Path) -> None:
    text = ("anarchism originated as a term of abuse " * 50)[:2000]
    (tmp_path / "text8").write_text(text)
    ds = load_dataset("text", path=str(tmp_path / "text8"), seq_len=50, format="text8")
    assert ds.metadata["split"]["chars"] == {"train": 1800, "val": 100, "test": 100}   # 90 M / 5 M / 5 M scaled
    assert ds.metadata["vocab"] == list(TEXT8_VOCAB) and ds.train.shape == (36, 50) and ds.test.shape == (2, 50)
    assert "".join(decode_text(ds.test, ds.metadata["vocab"])) == text[-100:]
    assert data_manifest(ds)["text"] == {"normalize": "none", "format": "text8"}
    (tmp_path / "bad").write_text(text[:100] + "X" + text[100:])
    with pytest.raises(ValueError, match=r"not a text8 file: character 'X' at position 100.*data.normalize=text8"):
        load_dataset("text", path=str(tmp_path / "bad"), seq_len=50, format="text8")
    with pytest.raises(ValueError, match="val_path / data.test_path do not apply"):
        load_dataset("text", path=str(tmp_path / "text8"), seq_len=50, format="text8", test_path=str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="packing=pad applies to data.format=lines only"):
        load_dataset("text", path=str(tmp_path / "text8"), seq_len=50, format="text8", packing="pad")


# -------------------------------------------------------------------------------------------- lines

LINES = "Hello, World!\nsecond line here\n\nthird\nA much longer line\nfifth\n"


def test_lines_packed_with_eos(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text(LINES)
    ds = load_dataset("text", path=str(tmp_path / "l.txt"), seq_len=12, format="lines", normalize="text8",
                      val_fraction=0.2, test_fraction=0.2)
    # 6 lines (the final newline starts none): train = the first 4 (one empty: skipped), val = 1, test = 1
    assert ds.metadata["num_examples"] == {"train": 3, "val": 1, "test": 1}
    assert ds.metadata["skipped_examples"] == {"train": 1, "val": 0, "test": 0}
    assert ds.metadata["vocab"] == list(TEXT8_VOCAB) + [EOS] and ds.metadata["eos"] == 27
    assert rows(ds) == ["hello world|", "second line "]     # 35 tokens: 2 windows, 11 dropped
    assert ds.metadata["dropped_tokens"]["train"] == 11
    assert ds.val.shape == (1, 12) and rows(ds, "val") == ["a much longe"]
    assert ds.test.shape == (0, 12)                                  # "fifth|" is 6 tokens < seq_len: dropped
    assert data_manifest(ds)["text"] == {"normalize": "text8", "format": "lines", "packing": "pack", "eos": 27}


def test_lines_padded_one_row_each(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text(LINES.replace("\n", "\r\n"))   # CRLF files read the same
    (tmp_path / "v.txt").write_text("val one\nval two two two two\n")
    ds = load_dataset("text", path=str(tmp_path / "l.txt"), seq_len=12, format="lines", packing="pad",
                      val_path=str(tmp_path / "v.txt"), test_fraction=0.2)
    eos = ds.metadata["eos"]
    assert ds.metadata["vocab"][eos] == EOS and ds.metadata["vocab"][-1] == "<unk>"   # "v" and "f" unseen in train
    assert rows(ds) == ["Hello, World", "second line ", "third|||||||", "A much longe"]
    assert ds.metadata["truncated_lines"] == {"train": 3, "val": 1, "test": 0}  # no room for EOS: no EOS
    assert (ds.train[2, 5:] == eos).all() and (ds.train[2, :5] != eos).all()   # after the first EOS: all EOS
    assert ds.val.shape == (2, 12) and ds.test.shape == (1, 12)
    with pytest.raises(ValueError, match="as int64 states"):        # padded rows are bounded before allocating
        load_dataset("text", path=str(tmp_path / "l.txt"), seq_len=4096, format="lines", packing="pad",
                     max_bytes=1 << 16)


# ---------------------------------------------------------------------------------------- documents

def test_documents_jsonl(tmp_path: Path) -> None:
    docs = [{"text": "Doc one.\nLine two."}, "doc two", {"text": "doc three is longer", "url": "x"}, {"text": ""},
            {"text": "four"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n\n")
    ds = load_dataset("text", path=str(tmp_path / "d.jsonl"), seq_len=8, format="documents", val_fraction=0.2,
                      test_fraction=0.2)
    assert ds.metadata["num_examples"] == {"train": 3, "val": 0, "test": 1}
    stream = "Doc one.\nLine two.|doc two|doc three is longer|"
    assert "".join(rows(ds)) == stream[: len(stream) // 8 * 8]       # documents + EOS, cut into windows
    assert ds.metadata["packing"] == "pack" and ds.metadata["vocab"][ds.metadata["eos"]] == EOS
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON string or an object with a string field"):
        load_dataset("text", path=str(tmp_path / "bad.jsonl"), seq_len=2, format="documents")
    (tmp_path / "bad2.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_dataset("text", path=str(tmp_path / "bad2.jsonl"), seq_len=2, format="documents")
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ValueError, match="line 1"):
        load_dataset("text", path=str(tmp_path / "deep.jsonl"), seq_len=2, format="documents")
    with pytest.raises(ValueError, match="a sub-word EOS token is not built"):
        load_dataset("text", path=str(tmp_path / "d.jsonl"), seq_len=8, format="documents", tokenizer="bpe",
                     vocab_size=300)
    with pytest.raises(ValueError, match="holds more than"):       # bounded like every loader
        load_dataset("text", path=str(tmp_path / "d.jsonl"), seq_len=8, format="documents", max_bytes=64)


# ------------------------------------------------------------------------------------- the data record

def test_data_record_refuses_a_changed_reading_rule(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("Some Text, here.\n" * 40)
    plain = load_dataset("text", path=str(tmp_path / "t.txt"), seq_len=8)
    norm = load_dataset("text", path=str(tmp_path / "t.txt"), seq_len=8, normalize="text8")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data.json").write_text(json.dumps(data_manifest(norm)))
    assert check_data_manifest(tmp_path / "run", norm) == []
    with pytest.raises(DataChangedError, match='read as .*"normalize": "text8".* in training and as .*"none"'):
        check_data_manifest(tmp_path / "run", plain)
    # a data.json written before the key existed (no "text") describes plain text: unchanged
    old = data_manifest(plain)
    assert "text" not in old
    (tmp_path / "run" / "data.json").write_text(json.dumps(old))
    assert check_data_manifest(tmp_path / "run", plain) == []
    with pytest.raises(DataChangedError):
        check_data_manifest(tmp_path / "run", norm)


def test_text_run_without_the_new_keys_loads_unchanged(tmp_path: Path) -> None:
    """A text run whose config.yaml has no data.normalize / format / packing (written before them) trains, resumes
    and evaluates on the same data: the defaults mean plain, unnormalised text."""
    from discrete_diffusion.cli import main
    (tmp_path / "t.txt").write_text("In the beginning God created the heaven and the earth.\n" * 40)
    run = tmp_path / "run"
    common = ["--no-progress", "data.name=text", f"data.path={tmp_path / 't.txt'}", "data.seq_len=16",
              "process.name=masking", "model.backbone=transformer", "model.dim=16", "model.depth=1", "model.heads=2",
              "train.batch_size=4", "train.eval_every=2", "train.checkpoint_every=2", "train.sample_every=100",
              "train.device=cpu", "evaluate.batch_size=64"]
    assert main(["train", "--out", str(run), *common, "train.steps=2"]) == 0
    manifest = json.loads((run / "data.json").read_text())
    assert "text" not in manifest
    config = (run / "config.yaml").read_text()
    stripped = "\n".join(line for line in config.splitlines()
                         if line.strip().split(":")[0] not in ("normalize", "format", "packing")) + "\n"
    assert stripped != config
    (run / "config.yaml").write_text(stripped)
    assert main(["evaluate", str(run), "--device", "cpu", "--no-progress", "--t-samples", "1"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "train.steps=4"]) == 0
    ds = build_dataset(load_config(str(run / "config.yaml"), []))
    assert ds.metadata["normalize"] == "none" and torch.equal(ds.train, load_dataset(
        "text", path=str(tmp_path / "t.txt"), seq_len=16).train)


def test_documents_lines_are_parsed_within_bounds():
    """A JSON Lines document with a 5000-digit number or deep nesting is one ValueError naming the file and line
    (json alone raises Python's digit-limit error without the file, or a RecursionError)."""
    from discrete_diffusion.data.text_formats import read_documents

    assert read_documents('{"text": "ab"}\n"cd"\n', "f.jsonl") == ["ab", "cd"]
    for bad in ['{"text": ' + "1" * 5000 + "}", "[" * 100_000 + "]" * 100_000]:
        with pytest.raises(ValueError, match=r"^f\.jsonl: line 1 is not valid JSON"):
            read_documents(bad, "f.jsonl")
