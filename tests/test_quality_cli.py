"""End to end through the CLI: `ddiff train` a tiny text (and DNA) run, `ddiff sample`, `ddiff evaluate --samples
--json` (text: with a tiny AR judge, `--judge-steps`), then `ddiff report` draws the record (docs/quality.md)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import with_overrides

from discrete_diffusion.data.dna import encode_dna
from discrete_diffusion.report import data as report_data

#: A tiny masking transformer on 1-D windows of 32 symbols: seconds on a CPU.
SEQ = ["data.seq_len=32", "process.name=masking", "model.backbone=transformer", "model.dim=32", "model.depth=1",
       "model.heads=2", "train.steps=4", "train.eval_every=4", "train.checkpoint_every=4", "train.sample_every=4"]
TEXT_METRICS = {"ar_nll_bits_per_token", "ar_nll_bits_per_char", "unigram_entropy_bits", "distinct_1",
                "distinct_2", "distinct_3", "distinct_4", "memorised_8gram_share"}


def _train_sample_evaluate(ddiff, tmp_path: Path, data: list[str], *evaluate_options: str) -> tuple[Path, dict]:
    """Train, sample 32 windows with 4 tau-leaping steps, evaluate them; returns the run and the printed record."""
    run = tmp_path / "run"
    res = ddiff("train", "--out", run, "--no-progress", *with_overrides(*data, *SEQ))
    assert res.rc == 0, res
    res = ddiff("sample", run, "--sampler", "tau-leaping", "--steps", 4, "--num", 32, "--seed", 0, "--no-progress")
    assert res.rc == 0, res
    res = ddiff("evaluate", run, "--samples", run / "samples", "--json", "--no-progress", *evaluate_options)
    assert res.rc == 0, res
    return run, json.loads(res.out)


def _report_draws_the_record(ddiff, run: Path, record: dict, metric: str) -> None:
    """`ddiff report` succeeds, and its quality chart has one tau-leaping point: the record's NFE and value."""
    res = ddiff("report", run, "--metric", metric)
    assert res.rc == 0, res
    assert (run / "report" / "report.png").stat().st_size > 0 and (run / "report" / "report.html").is_file()
    records, notes = report_data.read_quality(run / "quality")
    assert notes == [] and len(records) == 1
    assert report_data.quality_series(records, metric) == {
        "tau-leaping": [(record["nfe"], pytest.approx(record["metrics"][metric]["samples"]))]}
    assert metric in (run / "report" / "report.html").read_text()


def test_text_run_evaluate_samples_with_a_tiny_judge_then_report(ddiff, tmp_path: Path) -> None:
    rng = random.Random(0)
    words = ["the", "lord", "said", "unto", "moses", "and", "he", "went", "up", "into", "mount", "of", "god"]
    path = tmp_path / "t.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(1500)))  # 5 % test windows: 10
    run, record = _train_sample_evaluate(ddiff, tmp_path, ["data.name=text", f"data.path={path}"],
                                         "--judge-steps", "5")
    assert record["family"] == "text" and set(record["metrics"]) == TEXT_METRICS
    assert (record["sampler"], record["steps"], record["nfe"]) == ("tau-leaping", 4, 4.0)
    assert all(math.isfinite(v) for m in record["metrics"].values() for v in m.values())
    # the judge that --judge-steps asked for was trained and cached
    judge = json.loads((run / "quality" / "ar_model" / "config.json").read_text())
    assert judge["config"]["steps"] == 5 and judge["fit"]["steps_done"] == 5
    # 32 samples, 10 test windows: the reference is the whole test split, so its NLL is the judge's test NLL
    assert record["extra"]["num_samples"] == 10 and "only 10 examples" in record["extra"]["notes"][0]
    assert record["metrics"]["ar_nll_bits_per_token"]["reference"] == pytest.approx(judge["test_bits_per_token"],
                                                                                   rel=1e-6)
    # a second evaluation reuses the cached judge (same config and data): same numbers
    res = ddiff("evaluate", run, "--samples", run / "samples", "--json", "--no-progress", "--judge-steps", "5")
    assert res.rc == 0 and json.loads(res.out)["metrics"] == record["metrics"], res
    _report_draws_the_record(ddiff, run, record, "ar_nll_bits_per_char")


def test_dna_run_evaluate_samples_then_report(ddiff, tmp_path: Path) -> None:
    rng = random.Random(1)
    genome = "".join(rng.choice("AACGTT") for _ in range(6400))  # GC content 1/3: not the uniform 1/2
    path = tmp_path / "g.fa"
    path.write_text(">chr\n" + "\n".join(genome[i:i + 60] for i in range(0, len(genome), 60)) + "\n")
    run, record = _train_sample_evaluate(ddiff, tmp_path, ["data.name=fasta", f"data.path={path}"])
    assert record["family"] == "dna"
    assert set(record["metrics"]) == {"kmer_js_k3", "kmer_js_k4", "kmer_js_k5", "kmer_js_k6", "gc_content"}
    # 200 windows, 10 test windows (the end of the genome): the reference is all of them; GC content by hand
    assert record["extra"]["num_samples"] == 10
    test = encode_dna(genome[-320:]).numpy()
    assert record["metrics"]["gc_content"]["reference"] == pytest.approx(float(np.isin(test, (1, 2)).mean()),
                                                                         abs=1e-12)
    samples = np.load(run / "samples" / "tau-leaping_4steps_seed0.npy")[:10]
    assert record["metrics"]["gc_content"]["samples"] == pytest.approx(float(np.isin(samples, (1, 2)).mean()),
                                                                       abs=1e-12)
    for k in (3, 4, 5, 6):
        assert 0.0 <= record["metrics"][f"kmer_js_k{k}"]["samples"] <= 1.0
    _report_draws_the_record(ddiff, run, record, "gc_content")


def test_judge_steps_is_checked(ddiff, trained_run: Path) -> None:
    res = ddiff("evaluate", trained_run, "--judge-steps", "3")
    assert res.rc == 2 and "--judge-steps is an option of sample quality" in res.err, res
    res = ddiff("evaluate", trained_run, "--sampler", "bridge", "--judge-steps", "0")
    assert res.rc == 2 and "--judge-steps must be in 1..1000000, got 0" in res.err, res
