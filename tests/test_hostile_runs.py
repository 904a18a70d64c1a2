"""Hostile contents of a run directory and hostile flags of the newer commands (issue 19 items 5-12).

Each test here failed on the code before the fix it names (a traceback, a hang, a misleading message or a
silently overwritten result) and passes after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import with_overrides

tokenizers = pytest.importorskip("tokenizers")

from discrete_diffusion.data.tokenizer import TOKENIZER_NAME, BpeTokenizer, train_bpe  # noqa: E402

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5000


def corpus(lines: int = 200) -> str:
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away"]
    return "".join(" ".join(rng.choice(words, 8)) + ".\n" for _ in range(lines))


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    """A tiny masking MLP on BPE tokens (data.tokenizer=bpe data.vocab_size=300), trained for 2 steps."""
    from discrete_diffusion.cli import main

    root = tmp_path_factory.mktemp("bpe")
    (root / "small.txt").write_text(corpus(), encoding="utf-8")
    rc = main(["train", "--out", str(root / "run"), "--no-progress", "data.name=text",
               f"data.path={root / 'small.txt'}", "data.tokenizer=bpe", "data.vocab_size=300", "data.seq_len=8",
               "process.name=masking", "model.backbone=mlp", "model.hidden=16", "model.depth=1", "train.steps=2",
               "train.batch_size=4", "train.eval_every=2", "train.checkpoint_every=2", "train.warmup_steps=1",
               "train.eval_t_samples=1", "train.device=cpu", "evaluate.t_samples=1", "sample.steps=2"])
    assert rc == 0
    return root / "run"


@pytest.fixture(scope="module")
def masking_run(tmp_path_factory) -> Path:
    """A tiny masking U-Net on the 8x8 digits (2 training steps)."""
    from discrete_diffusion.cli import main

    run = tmp_path_factory.mktemp("mask") / "run"
    rc = main(["train", "--out", str(run), "--no-progress",
               *with_overrides("process.name=masking", "train.steps=2", "train.eval_every=2",
                               "train.checkpoint_every=2", "train.sample_every=2", "sample.steps=2")])
    assert rc == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# ----- item 5: a FIFO at RUN/tokenizer.json -------------------------------------------------------------------------
def test_fifo_tokenizer_is_refused_at_once(bpe_run, tmp_path):
    from discrete_diffusion.runs.tokenizer_file import run_tokenizer_json

    run = _copy(bpe_run, tmp_path)
    (run / TOKENIZER_NAME).unlink()
    os.mkfifo(run / TOKENIZER_NAME)
    result: list = []

    def read() -> None:
        try:
            run_tokenizer_json(run)
            result.append("read")
        except ValueError as err:
            result.append(str(err))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():  # the old code blocks in open(): give it a writer so the thread ends
        fd = os.open(run / TOKENIZER_NAME, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(timeout=5)
        pytest.fail("reading a FIFO at RUN/tokenizer.json blocked")
    assert result and "not a regular file" in result[0] and "tokenizer.json" in result[0], result


def test_fifo_data_json_is_refused_at_once(masking_run, tmp_path):
    from discrete_diffusion.runs.data_record import _read_manifest

    run = tmp_path / "r"
    run.mkdir()
    os.mkfifo(run / "data.json")
    result: list = []
    thread = threading.Thread(target=lambda: result.append(pytest.raises(ValueError, _read_manifest,
                                                                          run / "data.json")), daemon=True)
    thread.start()
    thread.join(timeout=20)
    if thread.is_alive():
        os.close(os.open(run / "data.json", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO at RUN/data.json blocked")
    assert "not a regular file" in str(result[0].value)


# ----- item 6: an edited tokenizer.json whose checksum was updated to match -----------------------------------------
@pytest.fixture(scope="module")
def good_spec() -> dict:
    return json.loads(train_bpe(corpus(), 300))


def _merge_unknown(spec):
    spec["model"]["merges"][0] = ["zzzz", "q"]


def _merge_arity(spec):
    spec["model"]["merges"][0] = ["a", "b", "c"]


def _merge_string_arity(spec):
    spec["model"]["merges"][0] = "a b c"


def _prefix(spec):
    spec["model"]["continuing_subword_prefix"] = "##"


def _suffix(spec):
    spec["model"]["end_of_word_suffix"] = "</w>"


def _unk(spec):
    spec["model"]["unk_token"] = "zzzz"


def _ids_repeat(spec):
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab)[:2]
    vocab[a] = vocab[b]


def _byte_missing(spec):
    del spec["model"]["vocab"]["a"]


@pytest.mark.parametrize("edit", [_merge_unknown, _merge_arity, _merge_string_arity, _prefix, _suffix, _unk,
                                  _ids_repeat, _byte_missing])
def test_edited_tokenizer_structure_is_refused_before_the_library(good_spec, edit):
    spec = json.loads(json.dumps(good_spec))
    edit(spec)
    with pytest.raises(ValueError, match="not a byte-level BPE tokenizer") as err:
        BpeTokenizer(json.dumps(spec), where="RUN/tokenizer.json")
    assert "RUN/tokenizer.json" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ('{"model": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper"),
    ('{"version": "1.0", "model": {"type": "BPE", "dropout": ' + HUGE_INT + "}}", "a number of"),
])
def test_deep_or_huge_number_tokenizer_is_one_line(text, message):
    with pytest.raises(ValueError, match=message) as err:
        BpeTokenizer(text, where="RUN/tokenizer.json")
    assert str(err.value).startswith("RUN/tokenizer.json") and "\n" not in str(err.value)


def test_a_panic_inside_tokenizers_becomes_one_line(good_spec, monkeypatch):
    import discrete_diffusion.data.tokenizer as module

    class Panicking:
        class Tokenizer:
            @staticmethod
            def from_str(text):
                raise BaseException("PanicException: called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(module, "_tokenizers", lambda: Panicking)
    with pytest.raises(ValueError, match="tokenizers library cannot load it"):
        BpeTokenizer(json.dumps(good_spec), where="RUN/tokenizer.json")


def test_edited_tokenizer_with_updated_checksum_is_one_line_in_every_command(bpe_run, ddiff, tmp_path):
    run = _copy(bpe_run, tmp_path)
    spec = json.loads((run / TOKENIZER_NAME).read_text(encoding="utf-8"))
    spec["model"]["continuing_subword_prefix"] = "##"  # a pyo3 PanicException inside tokenizers before the fix
    text = json.dumps(spec)
    (run / TOKENIZER_NAME).write_text(text, encoding="utf-8")
    manifest = json.loads((run / "data.json").read_text())
    manifest["files"]["tokenizer"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (run / "data.json").write_text(json.dumps(manifest))
    for command in (("sample", run, "--num", "1", "--no-progress", "--out", tmp_path / "s"),
                    ("evaluate", run, "--no-progress"),
                    ("train", "--out", run, "--resume", "--no-progress", "train.steps=3")):
        r = ddiff(*command)
        assert r.rc == 2 and "continuing_subword_prefix" in r.err and _one_line(r.err), (command, r)
        assert f"{run / TOKENIZER_NAME}: not a byte-level BPE tokenizer" in r.err, (command, r)


# ----- item 7: tampered quality caches, sample records, data.json ---------------------------------------------------
def test_bounded_json_reader_bounds_depth_numbers_and_size():
    from discrete_diffusion.data.bounded_json import loads_bounded

    assert loads_bounded('{"a": ["[[[", {"b": 1.5}], "c": NaN}', "f")["a"][1]["b"] == 1.5
    for text, message in ((DEEP, "nested deeper than 64"), ('{"a": ' + HUGE_INT + "}", "a number of"),
                          ("[1, 2", "not valid JSON"), (b"\xff", "not UTF-8"), ("1" * 10, None)):
        if message is None:
            assert loads_bounded(text, "f") == 1111111111
            continue
        with pytest.raises(ValueError, match=message) as err:
            loads_bounded(text, "RUN/x.json")
        assert str(err.value).startswith("RUN/x.json") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="over 10 bytes"):
        loads_bounded("[" + "1," * 10 + "1]", "f", max_bytes=10)


@pytest.mark.parametrize("field, value", [("train_seconds", [1]), ("train_seconds", 10 ** 400),
                                          ("train_seconds", "abc"), ("test_accuracy", "abc"),
                                          ("test_accuracy", 10 ** 400), ("train_seconds", float("nan"))])
def test_tampered_quality_classifier_record_means_retrain(tmp_path, field, value):
    from safetensors.torch import save

    from discrete_diffusion.evaluate.image_quality import SmallCNN, _load_cached

    model = SmallCNN(1, 3, 4, 4)
    blob = save(model.state_dict())
    (tmp_path / "weights.safetensors").write_bytes(blob)
    key = {"format": 1}
    meta = {"key": key, "weights_sha256": hashlib.sha256(blob).hexdigest(), "test_accuracy": 0.5,
            "train_seconds": 1.0}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    good, reason = _load_cached(tmp_path, key, model)
    assert good is not None and reason == ""
    meta[field] = value
    text = json.dumps(meta)
    if value == 10 ** 400:
        text = text.replace(str(10 ** 400), "1" + "0" * 400)
    (tmp_path / "meta.json").write_text(text)
    cached, reason = _load_cached(tmp_path, key, model)
    assert cached is None and "unreadable cache" in reason


@pytest.mark.parametrize("content", [DEEP, '{"format": ' + HUGE_INT + "}", "FIFO"])
def test_tampered_ar_judge_record_means_retrain(tmp_path, content):
    from discrete_diffusion.evaluate.text_quality import _read_record

    path = tmp_path / "config.json"
    if content == "FIFO":
        os.mkfifo(path)
    else:
        path.write_text(content)
    assert _read_record(path) is None


def test_deep_sample_record_beside_samples_is_one_line(masking_run, ddiff, tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((2, 8, 8), dtype=np.int64))
    (tmp_path / "s.json").write_text(DEEP)
    r = ddiff("evaluate", masking_run, "--samples", tmp_path / "s.npy", "--no-progress")
    assert r.rc == 2 and "s.json" in r.err and "nested deeper" in r.err and _one_line(r.err), r


@pytest.mark.parametrize("content", [DEEP, '{"format": ' + HUGE_INT + "}"])
def test_tampered_data_json_is_one_line(masking_run, ddiff, tmp_path, content):
    run = _copy(masking_run, tmp_path)
    (run / "data.json").write_text(content)
    r = ddiff("sample", run, "--num", "1", "--no-progress")
    assert r.rc == 2 and "data.json" in r.err and _one_line(r.err), r


@pytest.mark.parametrize("content", [DEEP, '{"step": ' + HUGE_INT + "}"])
def test_tampered_metrics_line_is_dropped_on_resume(masking_run, ddiff, tmp_path, content):
    run = _copy(masking_run, tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(content + "\n")
    r = ddiff("train", "--out", run, "--resume", "--no-progress", "train.steps=3")
    assert r.rc == 0, r
    assert content not in (run / "metrics.jsonl").read_text()


# ----- item 8: ddiff report on hostile contents ---------------------------------------------------------------------
def _report_dir(tmp_path: Path) -> Path:
    run = tmp_path / "rep"
    (run / "samples").mkdir(parents=True)
    (run / "quality").mkdir()
    (run / "config.yaml").write_text("data: {}\n")
    return run


def test_report_with_infinite_float_samples_and_no_data_json(ddiff, tmp_path):
    run = _report_dir(tmp_path)
    x = np.zeros((4, 8, 8))
    x[0, 0, 0] = np.inf
    np.save(run / "samples" / "a.npy", x)
    r = ddiff("report", run)
    assert r.rc == 0 and "samples not shown" in r.out + r.err, r


@pytest.mark.parametrize("where", ["nfe", "metric", "metrics.jsonl"])
def test_report_with_subnormal_values_skips_and_counts_them(ddiff, tmp_path, where):
    run = _report_dir(tmp_path)
    tiny = 5e-324
    for i in range(2):
        record = {"sampler": "bridge", "nfe": tiny if (where == "nfe" and i == 0) else float(10 * (i + 1)),
                  "num_samples": 4, "family": "image",
                  "metrics": {"m": {"samples": tiny if (where == "metric" and i == 0) else 0.5, "reference": 0.1}}}
        (run / "quality" / f"q{i}.json").write_text(json.dumps(record))
    lines = [{"step": s, "loss": tiny if (where == "metrics.jsonl" and s == 1) else 1.0 / s} for s in range(1, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = ddiff("report", run)
    assert r.rc == 0 and (run / "report" / "report.png").is_file(), r
    if where == "nfe":
        assert "skipped q0.json: " in r.out + r.err and "nfe" in r.out + r.err, r
    if where == "metrics.jsonl":
        assert "1 NaN/infinite/non-numeric" in r.out + r.err, r


# ----- items 9-12: flags of sample, evaluate and posterior ----------------------------------------------------------
FAST = ("--steps", "2", "--no-progress", "--device", "cpu")


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    """A tiny class-conditional masking U-Net on the 8x8 digits (2 training steps)."""
    from discrete_diffusion.cli import main

    run = tmp_path_factory.mktemp("cond") / "run"
    rc = main(["train", "--out", str(run), "--no-progress",
               *with_overrides("process.name=masking", "model.num_classes=null", "train.cond_dropout=0.25",
                               "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
                               "train.sample_every=2", "sample.steps=2")])
    assert rc == 0
    return run


def _refused(r, *words: str) -> None:
    assert r.rc == 2 and _one_line(r.err), r
    for word in words:
        assert word in r.err, (word, r)


@pytest.mark.parametrize("args, words", [
    (("sample", "--num", "1000000000", "--batch-size", "1000000000"), ("--num-samples 1000000000", "at most")),
    (("sample", "--num", "4", "--batch-size", "1000000000000"), ("--batch-size must be in 1..",)),
    (("evaluate", "--num-samples", "100000000000"), ("--num-samples must be in 1..",)),
    (("evaluate", "--num-samples", "100000000", "--steps", "2"), ("--num-samples 100000000", "data.max_bytes")),
    (("evaluate", "--batch-size", "1000000000"), ("--batch-size 1000000000", "at most")),
    (("evaluate", "--t-samples", "100000000000"), ("--t-samples must be in 1..",)),
])
def test_size_flags_of_sample_and_evaluate_are_bounded(cond_run, ddiff, tmp_path, args, words):
    command, *rest = args
    r = ddiff(command, cond_run, *rest, "--no-progress")
    _refused(r, *words)


def _posterior(ddiff, run, *args):
    return ddiff("posterior", run, "--method", "dps", "--num", "1", *FAST, *args)


@pytest.mark.parametrize("args, words", [
    (("--operator", "channel", "--eps", "0.1", "--test-index", "0", "--num", "1000000000", "--batch-size",
      "1000000000"), ("--num 1000000000", "at most")),
    (("--operator", "channel", "--eps", "0.1", "--test-index", "0:10000000000"), ("--test-index 0:10000000000",)),
    (("--operator", "channel", "--eps", "0.1", "--test-index", "0", "-m", "mc_samples=1000000000000"),
     ("mc_samples must be in 1..65536",)),
])
def test_size_flags_of_posterior_are_bounded(cond_run, ddiff, args, words):
    _refused(_posterior(ddiff, cond_run, *args), *words)


def test_split_gibbs_iterations_are_bounded(cond_run, ddiff):
    r = ddiff("posterior", cond_run, "--method", "split-gibbs", "--operator", "inpaint", "--mask", "top-half",
              "--test-index", "0", "-m", "iterations=1000000000000", *FAST)
    _refused(r, "iterations must be in 1..1000000")


@pytest.mark.parametrize("groups, words", [
    ([[i % 64] for i in range(100_000)], ("100000 groups", "at most 64 groups")),
    ("[[[[[[0]]]]]]", ("--groups", "nested deeper than 2")),
    ("[" * 50_000 + "]" * 50_000, ("--groups", "nested deeper than 2")),
])
def test_parity_groups_are_bounded_in_count_and_depth(cond_run, ddiff, tmp_path, groups, words):
    path = tmp_path / "groups.json"
    path.write_text(groups if isinstance(groups, str) else json.dumps(groups))
    _refused(_posterior(ddiff, cond_run, "--operator", "parity", "--groups", path, "--test-index", "0"), *words)


def test_posterior_folders_keep_every_distinct_request_apart(cond_run, ddiff, tmp_path):
    run = _copy(cond_run, tmp_path)
    common = ("--operator", "inpaint")
    for extra in (("--test-index", "0:3", "--mask", "top-half"), ("--test-index", "0,3", "--mask", "top-half"),
                  ("--test-index", "0:3", "--mask", "bottom-half"), ("--test-index", "0:3", "--mask", "top-half",
                                                                     "--num", "2")):
        r = ddiff("posterior", run, "--method", "infill", "--num", "1", *FAST, *common, *extra)
        assert r.rc == 0, r
    folders = sorted((run / "posterior").iterdir())
    assert len(folders) == 4, folders
    records = [json.loads((f / "posterior.json").read_text()) for f in folders]
    assert len({r["request_sha256"] for r in records}) == 4
    # the same request again writes into its own folder (no refusal), nothing else
    r = ddiff("posterior", run, "--method", "infill", "--num", "1", *FAST, *common, "--test-index", "0,3", "--mask",
              "top-half")
    assert r.rc == 0 and len(list((run / "posterior").iterdir())) == 4, r


def test_an_out_folder_never_mixes_two_requests(cond_run, ddiff, tmp_path):
    out = tmp_path / "p"
    r = _posterior(ddiff, cond_run, "--operator", "channel", "--eps", "0.1", "--test-index", "0", "--out", out)
    assert r.rc == 0 and (out / "truth.npy").is_file(), r
    y = tmp_path / "y.npy"
    shutil.copy(out / "y.npy", y)
    r = _posterior(ddiff, cond_run, "--operator", "channel", "--eps", "0.1", "--y", y, "--out", out)
    _refused(r, "already holds the outputs of another posterior request")
    r = _posterior(ddiff, cond_run, "--operator", "channel", "--eps", "0.1", "--y", y, "--out", tmp_path / "q")
    assert r.rc == 0 and not (tmp_path / "q" / "truth.npy").exists(), r


def test_sample_stems_keep_class_lists_apart(cond_run, ddiff, tmp_path):
    for classes in ("0,1", "all", "1,0"):
        r = ddiff("sample", cond_run, "--class", classes, "--num", "2", "--out", tmp_path, *FAST)
        assert r.rc == 0, r
    stems = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert stems == ["bridge_2steps_seed0_classes.npy", "bridge_2steps_seed0_classes0-1.npy",
                     "bridge_2steps_seed0_classes1-0.npy"], stems


@pytest.mark.parametrize("where", ["link", "file"])
def test_posterior_checks_its_folder_before_sampling(cond_run, ddiff, tmp_path, monkeypatch, where):
    import discrete_diffusion.cli.posterior as posterior_cli

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking the output folder")

    monkeypatch.setattr(posterior_cli, "draw_posterior", no_sampling)
    run = _copy(cond_run, tmp_path)
    args = ("--operator", "channel", "--eps", "0.1", "--test-index", "0")
    if where == "link":
        (tmp_path / "elsewhere").mkdir()
        (run / "posterior").symlink_to(tmp_path / "elsewhere")
        _refused(_posterior(ddiff, run, *args), "symbolic link")
    else:
        (tmp_path / "file").write_text("x")
        _refused(_posterior(ddiff, run, *args, "--out", tmp_path / "file"), "not a directory")


@pytest.mark.parametrize("args, words", [
    (("posterior", "--method", "dps", "--operator", "downsample", "--block", "²", "--test-index", "0"), ("--block",)),
    (("sample", "--class", "²"), ("--class", "'²'")),
    (("sample", "--class=--1"), ("--class", "'--1'")),
    (("sample", "--class", "99999999999999999999999"), ("--class 99999999999999999999999 is out of range",)),
    (("posterior", "--method", "dps", "--operator", "channel", "--eps", "0.1", "--test-index", "0", "--top-p", "0.9"),
     ("--method dps", "--top-p")),
    (("posterior", "--method", "dps", "--operator", "channel", "--eps", "0.1", "--test-index", "0", "--temperature",
      "2"), ("--method dps", "--temperature")),
])
def test_bad_flag_values_name_the_flag(cond_run, ddiff, args, words):
    command, *rest = args
    r = ddiff(command, cond_run, *rest, *FAST)
    _refused(r, *words)
    assert "invalid literal" not in r.err and "Overflow" not in r.err and "classifier guidance" not in r.err


def test_numbers_typed_as_options_are_numbers():
    from argparse import Namespace

    from discrete_diffusion.cli.common import parse_option_value, sampler_options
    from discrete_diffusion.cli.posterior_inputs import method_options_from_args

    options = method_options_from_args(Namespace(method="split-gibbs", method_options=["t_min=1e-3", "iterations=7"]))
    assert options == {"t_min": 0.001, "iterations": 7} and type(options["iterations"]) is int
    assert method_options_from_args(Namespace(method="dps", method_options=["gamma=1e308"]))["gamma"] == 1e308
    assert sampler_options(Namespace(option=["eta=5E-2", "multi_jump=first", "final_denoise=false"], temperature=None,
                                     top_p=None, top_k=None, cache=None)) == \
        {"eta": 0.05, "multi_jump": "first", "final_denoise": False}
    assert parse_option_value("-o", "x=.5", ".5") == 0.5 and parse_option_value("-o", "x=-3", "-3") == -3
    with pytest.raises(ValueError, match="a number of 5000 characters"):
        parse_option_value("--method-option", "gamma=" + HUGE_INT, HUGE_INT)


def test_uint64_infill_reports_its_value(cond_run, ddiff, tmp_path):
    np.save(tmp_path / "known.npy", np.full((8, 8), 2**64 - 1, dtype=np.uint64))
    np.save(tmp_path / "mask.npy", np.ones((8, 8), dtype=bool))
    r = ddiff("sample", cond_run, "--infill", tmp_path / "known.npy", "--mask", tmp_path / "mask.npy", *FAST)
    _refused(r, "--infill", "18446744073709551615")
    assert "got -1" not in r.err


def test_prompt_on_a_bpe_run_says_why(bpe_run, ddiff):
    r = ddiff("sample", bpe_run, "--prompt", "the", *FAST)
    _refused(r, "--prompt", "BPE")


def test_companion_overrides_after_options(cond_run, ddiff, tmp_path, monkeypatch):
    import sys

    cli_main = sys.modules["discrete_diffusion.cli.main"]   # the package re-exports main(), which shadows the module
    seen = {}
    monkeypatch.setitem(cli_main.COMMANDS, "train-classifier", lambda args: seen.setdefault("args", args) and 0)
    r = ddiff("train-classifier", cond_run, "model.depth=1", "--out", tmp_path / "c", "train.steps=5")
    assert r.rc == 0, r
    assert seen["args"].overrides == ["model.depth=1", "train.steps=5"] and str(seen["args"].out) == str(tmp_path / "c")
    r = ddiff("train-classifier", cond_run, "--out", tmp_path / "c", "--bogus")
    assert r.rc == 2 and "unrecognized arguments: --bogus" in r.err, r


def test_evaluate_samples_checks_the_header_before_reading(tmp_path):
    import tracemalloc

    from discrete_diffusion.evaluate.sample_files import read_samples

    path = tmp_path / "big.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 7, 7), dtype=np.uint8))
    header["shape"] = (4_000_000, 7, 7)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.truncate(f.tell() + 4_000_000 * 49)        # 196 MB of (sparse) payload
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"shape \(N, 8, 8\).*\(4000000, 7, 7\)"):
            read_samples(path, 1 << 30, (8, 8))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
