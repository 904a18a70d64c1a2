"""Byte-level BPE text (issue 15 item 3): deterministic training on the training block only, exact round
trips, the run's cached tokenizer and its checksum, bits per character, and a tiny end-to-end run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")

from discrete_diffusion.config import load_config  # noqa: E402
from discrete_diffusion.data import load_text_file  # noqa: E402
from discrete_diffusion.data.tokenizer import TOKENIZER_NAME, BpeTokenizer, TokenizerUnavailableError, train_bpe
from discrete_diffusion.likelihood import LikelihoodResult, bits_per_char
from discrete_diffusion.pipeline import per_char_fields  # noqa: E402
from discrete_diffusion.runs.tokenizer_file import run_tokenizer_json

WORDS = ["the", "lord", "said", "unto", "moses", "and", "he", "went", "out", "of", "land", "egypt", "city",
         "king", "day", "Ünïcödé", "☃", "日本語"]


def corpus(lines: int = 300, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(10)).capitalize() + ".\n" for _ in range(lines))


@pytest.fixture
def small_txt(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(corpus(), encoding="utf-8")
    return path


def test_training_is_deterministic_and_uses_the_training_block_only(small_txt):
    a = load_text_file(small_txt, seq_len=16, tokenizer="bpe", vocab_size=300)
    b = load_text_file(small_txt, seq_len=16, tokenizer="bpe", vocab_size=300)
    assert a.metadata["tokenizer_json"] == b.metadata["tokenizer_json"]
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert a.num_states == 300 and int(a.train.max()) < 300
    train_chars = a.metadata["split"]["chars"]["train"]
    text = small_txt.read_text(encoding="utf-8")
    assert a.metadata["tokenizer_json"] == train_bpe(text[:train_chars], 300)  # trained on train only
    assert a.metadata["tokenizer_json"] != train_bpe(text, 300)  # the whole text gives other merges


def test_round_trip_of_the_training_text(small_txt):
    text = small_txt.read_text(encoding="utf-8") + "\tno  normalisation\r\n  ∑ é e\u0301 \U0001F600\n"
    bpe = BpeTokenizer(train_bpe(text, 320))
    ids = bpe.encode(text)
    assert ids.dtype == torch.long and ids.numel() < len(text.encode("utf-8"))  # merges shorten it
    assert bpe.decode(ids) == text
    ds = load_text_file(small_txt, seq_len=16, tokenizer="bpe", vocab_size=300)
    windows = BpeTokenizer(ds.metadata["tokenizer_json"]).decode(ds.train.reshape(-1))
    assert text.startswith(windows) and len(windows) == ds.metadata["window_chars"]["train"]


def test_out_of_vocabulary_ids_decode_to_replacement(small_txt):
    bpe = BpeTokenizer(train_bpe(small_txt.read_text(encoding="utf-8"), 300))
    ids = bpe.encode("the lord")
    assert bpe.decode_rows(torch.cat([ids, torch.tensor([bpe.size + 3])])[None]) == ["the lord\ufffd"]


def test_bits_per_char_is_bits_per_token_times_tokens_over_chars():
    # 4 tokens decoding to 10 characters at 5 bits per token: 20 bits over 10 characters = 2 bits/char
    assert bits_per_char(5.0, 4, 10) == 2.0
    assert bits_per_char(3.0, 7, 21) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ValueError, match="positive"):
        bits_per_char(1.0, 3, 0)


def test_per_char_fields_use_the_split_windows(small_txt):
    ds = load_text_file(small_txt, seq_len=16, tokenizer="bpe", vocab_size=300)
    result = LikelihoodResult(2.5, 0.1, 2.4, 0.1, 0.0, ds.test.shape[0], 1, "prior")
    fields = per_char_fields(ds, "test", result)
    tokens, chars = ds.test.numel(), ds.metadata["window_chars"]["test"]
    assert fields["num_tokens"] == tokens and fields["num_chars"] == chars
    assert fields["nll_bits_per_token"] == 2.5
    assert fields["nll_bits_per_char"] == pytest.approx(2.5 * tokens / chars, rel=1e-15)
    assert per_char_fields(load_text_file(small_txt, seq_len=16), "test", result) == {}  # characters: none


@pytest.mark.parametrize("size", [256, 100, 1 << 20, True])
def test_bad_vocab_size_is_a_one_line_error(small_txt, size):
    with pytest.raises(ValueError, match=r"vocab_size must be an integer in 257\.\.65536") as err:
        load_text_file(small_txt, seq_len=16, tokenizer="bpe", vocab_size=size)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"data.vocab_size must be an integer in 257\.\.65536"):
        load_config(None, ["data.name=text", f"data.path={small_txt}", "data.tokenizer=bpe",
                           f"data.vocab_size={int(size)}"])


def test_config_needs_vocab_size_and_text_data(small_txt):
    with pytest.raises(ValueError, match="needs data.vocab_size"):
        load_config(None, ["data.name=text", "data.tokenizer=bpe"])
    with pytest.raises(ValueError, match="applies to data.tokenizer=bpe only"):
        load_config(None, ["data.vocab_size=300"])
    with pytest.raises(ValueError, match="must be char or bpe"):
        load_config(None, ["data.tokenizer=wordpiece"])
    from discrete_diffusion.builders import build_dataset
    with pytest.raises(ValueError, match="apply to text datasets"):
        build_dataset(load_config(None, ["data.name=digits", "data.tokenizer=bpe", "data.vocab_size=300"]))


def test_missing_tokenizers_package_names_the_extra(small_txt, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers" or name.startswith("tokenizers."):
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(TokenizerUnavailableError, match=r"pip install discrete-diffusion\[text\]") as err:
        load_text_file(small_txt, seq_len=16, tokenizer="bpe", vocab_size=300)
    assert "\n" not in str(err.value)


def test_hostile_tokenizer_json_is_refused_before_parsing(small_txt):
    good = json.loads(train_bpe(small_txt.read_text(encoding="utf-8"), 300))
    for key, value in (("normalizer", {"type": "Lowercase"}), ("added_tokens", [{"id": 0, "content": "x"}]),
                       ("model", {"type": "WordPiece", "vocab": {}})):
        spec = dict(good, **{key: value})
        with pytest.raises(ValueError, match="not a byte-level BPE tokenizer"):
            BpeTokenizer(json.dumps(spec))
    with pytest.raises(ValueError, match="not valid JSON"):
        BpeTokenizer("{not json")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    """A tiny masking transformer on BPE tokens of a small text, trained for a few steps with the CLI."""
    from discrete_diffusion.cli import main

    root = tmp_path_factory.mktemp("bpe")
    (root / "small.txt").write_text(corpus(), encoding="utf-8")
    rc = main(["train", "--out", str(root / "run"), "--no-progress", "data.name=text",
               f"data.path={root / 'small.txt'}", "data.tokenizer=bpe", "data.vocab_size=300", "data.seq_len=16",
               "process.name=masking", "model.backbone=transformer", "model.dim=32", "model.depth=1",
               "model.heads=2", "train.steps=4", "train.batch_size=8", "train.eval_every=2",
               "train.checkpoint_every=2", "train.warmup_steps=1", "train.eval_t_samples=1", "train.device=cpu",
               "evaluate.t_samples=1"])
    assert rc == 0
    return root / "run"


def test_end_to_end_trains_samples_text_and_evaluates_both_units(bpe_run, ddiff, tmp_path):
    assert (bpe_run / TOKENIZER_NAME).is_file()
    manifest = json.loads((bpe_run / "data.json").read_text())
    assert manifest["num_states"] == 300 and "tokenizer" in manifest["files"]
    r = ddiff("sample", bpe_run, "--num", "3", "--steps", "3", "--out", tmp_path / "s", "--no-progress")
    assert r.rc == 0, r
    lines = (tmp_path / "s" / "bridge_3steps_seed0.txt").read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[3] == "" and all(lines[:3])  # one decoded sample per line
    r = ddiff("evaluate", bpe_run, "--json", "--no-progress")
    assert r.rc == 0, r
    out = json.loads(r.out)
    assert out["unit"] == "bits/token" and out["nll_bits_per_token"] == out["nll_bits_per_dim"]
    assert out["nll_bits_per_char"] == pytest.approx(out["nll_bits_per_token"] * out["num_tokens"] / out["num_chars"])
    assert out["num_chars"] > out["num_tokens"] > 0
    r = ddiff("evaluate", bpe_run, "--no-progress")
    assert r.rc == 0 and "bits/token = " in r.out and "bits/char" in r.out, r


def test_tampered_cached_tokenizer_is_refused(bpe_run, ddiff, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(bpe_run, run)
    assert run_tokenizer_json(run) == (run / TOKENIZER_NAME).read_text(encoding="utf-8")
    spec = json.loads((run / TOKENIZER_NAME).read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # swap two token ids: still a valid tokenizer, other meanings
    (run / TOKENIZER_NAME).write_text(json.dumps(spec), encoding="utf-8")
    for command in (("evaluate", run, "--no-progress"), ("sample", run, "--num", "1", "--no-progress")):
        r = ddiff(*command)
        assert r.rc == 2 and "tokenizer changed since training" in r.err and "sha256" in r.err, r
    r = ddiff("train", "--out", run, "--resume", "--no-progress", "train.steps=6")
    assert r.rc == 2 and "tokenizer changed since training" in r.err, r
    (run / TOKENIZER_NAME).unlink()
    (run / TOKENIZER_NAME).symlink_to(bpe_run / TOKENIZER_NAME)
    r = ddiff("evaluate", run, "--no-progress")
    assert r.rc == 2 and "not a regular file" in r.err, r


def test_resume_uses_the_cached_tokenizer(bpe_run, ddiff, tmp_path, monkeypatch):
    import shutil

    import discrete_diffusion.data.bpe_text as text_module

    run = tmp_path / "run"
    shutil.copytree(bpe_run, run)

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run must not train a new tokenizer")

    monkeypatch.setattr(text_module, "train_bpe", no_training)
    r = ddiff("train", "--out", run, "--resume", "--no-progress", "train.steps=6")
    assert r.rc == 0 and "trained to step 6" in r.out, r
