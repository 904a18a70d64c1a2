"""Block diffusion through the CLI: train (model.block_size=4, time-free), resume, evaluate (bits/char), and sample
with a prompt, with and without the KV cache (identical), past seq_len (sliding context) and with --eos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. ") * 12


@pytest.fixture(scope="module")
def block_run(tmp_path_factory) -> Path:
    from discrete_diffusion.cli import main

    root = tmp_path_factory.mktemp("block")
    corpus = root / "genesis.txt"
    corpus.write_text(TEXT)
    run = root / "run"
    rc = main(["train", "--out", str(run), "--no-progress", "data.name=text", f"data.path={corpus}",
               "data.seq_len=16", "model.backbone=transformer", "process.name=masking", "model.block_size=4",
               "model.time_conditioning=false", "model.dim=32", "model.depth=1", "model.heads=2", "train.steps=4",
               "train.batch_size=8", "train.eval_every=4", "train.checkpoint_every=4", "train.sample_every=1000",
               "train.warmup_steps=1", "train.eval_t_samples=1", "train.t_draws=antithetic",
               "train.mask_rate_clip=[0.3,0.8]", "evaluate.t_samples=1", "sample.steps=3"])
    assert rc == 0
    return run


def test_block_run_records_its_block_size_and_evaluates_per_char(ddiff, block_run):
    config = (block_run / "config.yaml").read_text()
    assert "block_size: 4" in config and "time_conditioning: false" in config
    result = ddiff("evaluate", block_run, "--no-progress", "--t-samples", "1")
    assert result.rc == 0, result.err
    assert "bits/char" in result.out


def test_block_run_samples_with_a_prompt_identically_with_and_without_the_cache(ddiff, block_run, tmp_path):
    arrays = []
    for flags in ([], ["--no-cache"]):
        out = tmp_path / ("plain" if flags else "cached")
        result = ddiff("sample", block_run, "--num", "3", "--prompt", "And God", "--max-length", "40", "--out", out,
                       "--no-progress", *flags)
        assert result.rc == 0, result.err
        assert "KV cache " + ("off" if flags else "on") in result.out
        npy = next(out.glob("*.npy"))
        arrays.append(np.load(npy))
        lines = next(out.glob("*.txt")).read_text().splitlines()
        assert len(lines) == 3 and all(line.startswith("And God") and len(line) == 40 for line in lines)
    assert arrays[0].shape == (3, 40) and np.array_equal(arrays[0], arrays[1])


def test_batch_invariant_flag_makes_a_row_independent_of_the_batch_size(ddiff, block_run, tmp_path):
    rows = []
    for num, batch in (("3", "3"), ("3", "1")):
        out = tmp_path / f"b{batch}"
        result = ddiff("sample", block_run, "--num", num, "--batch-size", batch, "--batch-invariant", "--out", out,
                       "--no-progress")
        assert result.rc == 0, result.err
        rows.append(np.load(next(out.glob("*.npy"))))
    assert np.array_equal(rows[0], rows[1])


def test_block_run_stops_at_eos_and_says_so(ddiff, block_run, tmp_path):
    result = ddiff("sample", block_run, "--num", "4", "--eos", " ", "--max-length", "32", "--out", tmp_path,
                   "--no-progress")
    assert result.rc == 0, result.err
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(record["lengths"]) == 4 and len(record["stopped_at_eos"]) == 4
    if any(record["stopped_at_eos"]):
        assert "stopped at EOS" in result.out
    lines = next(tmp_path.glob("*.txt")).read_text().splitlines()
    for line, n, stopped in zip(lines, record["lengths"], record["stopped_at_eos"]):
        assert len(line) == n and (line.endswith(" ") if stopped else n == 32)


def test_block_options_are_refused_on_a_plain_run_and_guidance_on_a_block_run(ddiff, block_run, trained_run, tmp_path):
    result = ddiff("sample", trained_run, "--max-length", "10", "--out", tmp_path)
    assert result.rc == 2 and "block-diffusion" in result.err
    result = ddiff("sample", block_run, "--class", "1", "--out", tmp_path)
    assert result.rc == 2 and "--class" in result.err


def test_block_size_must_divide_the_sequence_and_needs_masking(ddiff, tmp_path):
    result = ddiff("train", "--out", tmp_path / "a", "data.name=text", f"data.path={tmp_path / 'x.txt'}",
                   "model.backbone=mlp", "model.block_size=4")
    assert result.rc == 2
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    for overrides, message in ((["process.name=uniform"], "masking"), (["data.seq_len=18"], "divide")):
        result = ddiff("train", "--out", tmp_path / "b", "--no-progress", "data.name=text", f"data.path={corpus}",
                       "model.backbone=transformer", "model.block_size=4", "process.name=masking", "data.seq_len=16",
                       "model.dim=16", "model.depth=1", "train.steps=1", *overrides)
        assert result.rc == 2 and message in result.err, result.err


def test_prompts_are_tokenised_by_the_runs_tokenizer():
    from types import SimpleNamespace

    from discrete_diffusion.cli.sample_blocks import encode_prompt, resolve_eos

    pytest.importorskip("tokenizers")
    from discrete_diffusion.data.tokenizer import BpeTokenizer, train_bpe

    tokenizer_json = train_bpe(TEXT, 300)
    bpe_run = SimpleNamespace(dataset=SimpleNamespace(metadata={"tokenizer_json": tokenizer_json}, num_states=300))
    ids = encode_prompt(bpe_run, "And the earth")
    assert torch_equal(ids, BpeTokenizer(tokenizer_json).encode("And the earth"))
    assert BpeTokenizer(tokenizer_json).decode(ids) == "And the earth"
    assert resolve_eos(bpe_run, "7") == 7
    char_run = SimpleNamespace(dataset=SimpleNamespace(metadata={"vocab": "ab ."}, num_states=4))
    assert encode_prompt(char_run, "ab a").tolist() == [0, 1, 2, 0]
    assert resolve_eos(char_run, ".") == 3 and resolve_eos(char_run, None) is None
    with pytest.raises(ValueError, match="vocabulary"):
        encode_prompt(char_run, "abc")
    with pytest.raises(ValueError, match="--eos"):
        resolve_eos(char_run, "z")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


@pytest.mark.slow
def test_block_run_resumes_bit_for_bit(tmp_path):
    """A 4-step block run extended to 8 with --resume equals a straight 8-step run (flat learning rate after warmup,
    so train.steps does not change the schedule): per-block noise draws and the model restore exactly."""
    import torch
    from safetensors.torch import load_file

    from discrete_diffusion.cli import main
    from discrete_diffusion.runs.weights import find_latest_checkpoint

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    common = ["--no-progress", "data.name=text", f"data.path={corpus}", "data.seq_len=16",
              "model.backbone=transformer", "process.name=masking", "model.block_size=4", "model.dim=16",
              "model.depth=1", "model.heads=2", "train.batch_size=8", "train.eval_every=4", "train.checkpoint_every=4",
              "train.sample_every=1000", "train.warmup_steps=1", "train.eval_t_samples=1", "train.min_lr_ratio=1.0"]
    assert main(["train", "--out", str(tmp_path / "straight"), *common, "train.steps=8"]) == 0
    assert main(["train", "--out", str(tmp_path / "extended"), *common, "train.steps=4"]) == 0
    assert main(["train", "--out", str(tmp_path / "extended"), "--resume", "--no-progress", "train.steps=8"]) == 0
    tensors = []
    for name in ("straight", "extended"):
        manifest = find_latest_checkpoint(tmp_path / name / "checkpoints")
        meta = json.loads(manifest.read_text())
        assert meta["step"] == 8
        tensors.append(load_file(str(manifest.parent / meta["tensors_file"])))
    assert sorted(tensors[0]) == sorted(tensors[1])
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0] if k.startswith(("model.", "ema.")))
