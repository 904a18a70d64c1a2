"""Sample-quality metrics of text and DNA (issue 14): exact values on hand examples, the AR judge and its cache."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from discrete_diffusion.data.base import DiscreteDataset
from discrete_diffusion.data.dna import encode_dna, load_fasta
from discrete_diffusion.data.text import dataset_from_text, encode_text
from discrete_diffusion.evaluate.dna_quality import dna_quality, gc_content, is_dna
from discrete_diffusion.evaluate.ngram import (
    distinct_n,
    js_divergence_bits,
    kmer_spectrum,
    ngram_overlap,
    training_ngram_set,
    unigram_entropy_bits,
)
from discrete_diffusion.evaluate.text_quality import (
    ARJudgeConfig,
    is_char_level,
    is_text,
    load_or_train_ar_judge,
    text_quality,
)

TINY = ARJudgeConfig(dim=16, depth=1, heads=2, steps=30, batch_size=16, warmup_steps=5, eval_every=15)
CPU = torch.device("cpu")

_WORDS = ("in the beginning god created the heaven and the earth and the earth was without form and void "
          "and darkness was upon the face of the deep and the spirit of god moved upon the waters").split()


def _text(seed: int = 0, words: int = 900) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(_WORDS) for _ in range(words)) + ".\n"


@pytest.fixture(scope="module")
def text_data():
    return dataset_from_text(_text(), seq_len=32, val_fraction=0.1, test_fraction=0.1)


@pytest.fixture(scope="module")
def judged(text_data, tmp_path_factory):
    """One tiny judge trained once for the module, and the metrics of the test split against itself."""
    cache = tmp_path_factory.mktemp("quality")
    run = SimpleNamespace(dataset=text_data, device=CPU)
    metrics = text_quality(run, text_data.test, text_data.test, cache_dir=cache, ar_config=TINY)
    return cache, run, metrics


def _tokens(rows: list[str], vocab: str) -> torch.Tensor:
    return torch.stack([encode_text(r, vocab) for r in rows])


# --------------------------------------------------------------------------------- n-gram metrics


@pytest.mark.parametrize("num_states", [4, 1 << 16])   # exact base-K codes, and the hashed codes
def test_distinct_n_and_entropy_equal_hand_values(num_states):
    x = _tokens(["abab", "aaaa"], "abcd")
    # unigrams a: 6, b: 2 -> H = -(3/4 log2 3/4 + 1/4 log2 1/4)
    assert unigram_entropy_bits(x, 4) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)), abs=1e-12)
    # n-grams stay inside a row: bigrams ab ba ab | aa aa aa -> 3 of 6 (across rows it would be 3 of 7)
    expected = {1: 2 / 8, 2: 3 / 6, 3: 3 / 4, 4: 2 / 2}
    for n, value in expected.items():
        assert distinct_n(x, n, num_states) == pytest.approx(value, abs=1e-12)
    assert math.isnan(distinct_n(x, 5, num_states))


def test_memorisation_reads_training_windows_as_running_text():
    train = _tokens(["abcdabcd", "ddccbbaa"], "abcd")
    train_set = training_ngram_set(train, 8, 4)
    assert train_set.size == 9                      # 16 positions, 9 distinct 8-grams (all distinct here)
    straddling = _tokens(["abcdddcc"], "abcd")      # spans the junction of the two windows
    assert ngram_overlap(straddling, train_set, 8, 4) == 1.0
    assert ngram_overlap(_tokens(["aaaaaaaa", "abcdabcd"], "abcd"), train_set, 8, 4) == 0.5


def test_memorisation_of_training_windows_is_one_and_of_random_strings_about_zero(judged, text_data):
    _, run, _ = judged
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, text_data.num_states, (64, 32), generator=gen)
    metrics = text_quality(run, text_data.train[:64], noise, cache_dir=judged[0], ar_config=TINY)
    assert metrics["memorised_8gram_share"]["samples"] == 1.0
    assert metrics["memorised_8gram_share"]["reference"] < 1e-3
    assert metrics["distinct_1"]["reference"] == pytest.approx(
        torch.unique(noise).numel() / noise.numel(), abs=1e-12)


# ------------------------------------------------------------------------------------- AR judge


def test_generative_nll_of_held_out_text_equals_the_judges_test_nll(judged, text_data):
    cache, _, metrics = judged
    judge = load_or_train_ar_judge(text_data, cache, TINY, CPU)
    assert not judge.trained
    with torch.no_grad():   # by hand: cross-entropy of the causal logits, in float64
        logp = F.log_softmax(judge.model(text_data.test).double(), dim=-1)
        nll = -logp.gather(-1, text_data.test[..., None]).sum()
    by_hand = float(nll) / (text_data.test.numel() * math.log(2.0))
    nll_metric = metrics["ar_nll_bits_per_token"]
    assert nll_metric["reference"] == pytest.approx(by_hand, rel=1e-5)
    assert nll_metric["reference"] == pytest.approx(judge.record["test_bits_per_token"], rel=1e-6)
    assert nll_metric["samples"] == nll_metric["reference"]
    # the judge learned something: well below the uniform log2 K
    assert by_hand < math.log2(text_data.num_states) - 0.3
    assert is_char_level(text_data) and metrics["ar_nll_bits_per_char"] == nll_metric
    assert set(metrics) == {"ar_nll_bits_per_token", "ar_nll_bits_per_char", "unigram_entropy_bits", "distinct_1",
                            "distinct_2", "distinct_3", "distinct_4", "memorised_8gram_share"}


def test_ar_cache_reuses_and_retrains_on_changed_data_config_or_tampered_weights(text_data, tmp_path):
    first = load_or_train_ar_judge(text_data, tmp_path, TINY, CPU)
    assert first.trained
    weights = tmp_path / "ar_model" / "weights.safetensors"
    record = json.loads((tmp_path / "ar_model" / "config.json").read_text())
    assert record["data_sha256"] and record["weights_sha256"] and record["config"]["dim"] == 16
    second = load_or_train_ar_judge(text_data, tmp_path, TINY, CPU)
    assert not second.trained
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    # tampered weights: one byte of the tensor payload flipped
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="does not match its recorded SHA-256"):
        assert load_or_train_ar_judge(text_data, tmp_path, TINY, CPU).trained
    assert not load_or_train_ar_judge(text_data, tmp_path, TINY, CPU).trained
    # other data (another text): the data checksum differs
    other = dataset_from_text(_text(seed=1), seq_len=32, val_fraction=0.1, test_fraction=0.1)
    with pytest.warns(RuntimeWarning, match="data_sha256 changed"):
        assert load_or_train_ar_judge(other, tmp_path, TINY, CPU).trained
    # another config
    with pytest.warns(RuntimeWarning, match="config changed"):
        assert load_or_train_ar_judge(other, tmp_path, ARJudgeConfig(**{**TINY.__dict__, "steps": 31}), CPU).trained


def test_ar_cache_refuses_a_symlinked_cache(text_data, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "q").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "q" / "ar_model")
    with pytest.raises(ValueError, match="real directory"):
        load_or_train_ar_judge(text_data, tmp_path / "q", TINY, CPU)
    assert not any((tmp_path / "elsewhere").iterdir())


# ------------------------------------------------------------------------------------------- DNA


@pytest.fixture(scope="module")
def dna_data(tmp_path_factory):
    rng = random.Random(0)
    genome = "".join(rng.choice("ACGT") for _ in range(4000))
    path = tmp_path_factory.mktemp("dna") / "g.fa"
    path.write_text(">chr\n" + "\n".join(genome[i:i + 60] for i in range(0, len(genome), 60)) + "\n")
    return load_fasta(path, seq_len=40, val_fraction=0.1, test_fraction=0.1)


def test_js_divergence_hand_values():
    assert js_divergence_bits(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == pytest.approx(
        -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)) - 0.5, abs=1e-12)       # H(M) - (H(P) + H(Q)) / 2
    p = torch.tensor([0.2, 0.3, 0.5, 0.0])
    assert js_divergence_bits(p, p) == 0.0
    assert js_divergence_bits(torch.tensor([0.5, 0.5, 0, 0]), torch.tensor([0, 0, 0.25, 0.75])) == pytest.approx(1.0)


def test_kmer_spectrum_counts_inside_windows():
    x = torch.stack([encode_dna("ACGT"), encode_dna("AAAA")])
    spec = kmer_spectrum(x, 3, 4)    # ACG CGT | AAA AAA
    assert spec.shape == (64,) and float(spec.sum()) == pytest.approx(1.0)
    assert spec[0] == 0.5 and spec[1 * 4 + 2] == 0.25 and spec[6 * 4 + 3] == 0.25   # AAA, ACG, CGT


def test_dna_metrics_identical_disjoint_and_gc(dna_data):
    run = SimpleNamespace(dataset=dna_data, device=CPU)
    same = dna_quality(run, dna_data.test, dna_data.test, cache_dir=Path("unused"), progress=False)
    for k in (3, 4, 5, 6):
        assert same[f"kmer_js_k{k}"]["samples"] == 0.0
        assert 0.0 < same[f"kmer_js_k{k}"]["reference"] < 1.0      # test windows vs as many training windows
    n = dna_data.test.shape[0]
    all_a, all_c = torch.zeros(n, 40, dtype=torch.long), torch.ones(n, 40, dtype=torch.long)
    disjoint = dna_quality(run, all_a, all_c, cache_dir=Path("unused"))
    for k in (3, 4, 5, 6):
        assert disjoint[f"kmer_js_k{k}"]["samples"] == pytest.approx(1.0, abs=1e-12)
    assert disjoint["gc_content"] == {"samples": 0.0, "reference": 1.0}
    assert gc_content(torch.stack([encode_dna("ACGT"), encode_dna("GGCC")])) == 0.75
    with pytest.warns(RuntimeWarning, match="compare fairly only at equal sizes"):
        dna_quality(run, dna_data.test[:2], dna_data.test, cache_dir=Path("unused"))


# ----------------------------------------------------------------------------- families, bad input


def test_family_predicates(text_data, dna_data):
    x = torch.zeros(3, 4, 4, dtype=torch.long)
    digits = DiscreteDataset(x, x[:1], x[:1], num_states=17, name="digits", kind="image")
    assert is_text(text_data) and not is_dna(text_data)
    assert is_dna(dna_data) and not is_text(dna_data)
    assert not is_text(digits) and not is_dna(digits)


@pytest.mark.parametrize("family", ["text", "dna"])
def test_bad_samples_raise_one_line_value_errors(family, text_data, dna_data, tmp_path):
    data = text_data if family == "text" else dna_data
    fn = text_quality if family == "text" else dna_quality
    run = SimpleNamespace(dataset=data, device=CPU)
    good = data.test
    length = good.shape[1]
    bad = {
        "longer": torch.zeros(4, length + 1, dtype=torch.long),
        "1-d": torch.zeros(length, dtype=torch.long),
        "dtype": good.float(),
        "range": torch.full((4, length), data.num_states, dtype=torch.long),     # a mask index
        "negative": torch.full((4, length), -1, dtype=torch.long),
        "empty": torch.zeros(0, length, dtype=torch.long),
    }
    for what, samples in bad.items():
        for args in ((samples, good), (good, samples)):
            with pytest.raises(ValueError) as info:
                fn(run, *args, cache_dir=tmp_path)
            assert "\n" not in str(info.value), what
    assert not (tmp_path / "ar_model").exists()          # refused before any training
    other = SimpleNamespace(dataset=dna_data if family == "text" else text_data, device=CPU)
    with pytest.raises(ValueError, match="need a (text|DNA) dataset"):
        fn(other, other.dataset.test, other.dataset.test, cache_dir=tmp_path)


# ------------------------------------------------------------------------- with a real run directory


@pytest.mark.slow
def test_text_quality_of_a_trained_run(tmp_path):
    """A tiny masking run on a text file, loaded from its directory; its samples scored against the test split."""
    from conftest import with_overrides

    from discrete_diffusion.builders import build_sampler_from
    from discrete_diffusion.config import load_config
    from discrete_diffusion.pipeline import generate_samples, load_run
    from discrete_diffusion.train.trainer import Trainer

    path = tmp_path / "t.txt"
    path.write_text(_text(words=1500))
    config = load_config(None, with_overrides(
        "data.name=text", f"data.path={path}", "data.seq_len=32", "process.name=masking",
        "model.backbone=transformer", "model.dim=32", "model.depth=1", "model.heads=2", "train.steps=4",
        "train.eval_every=4", "train.checkpoint_every=4", "train.sample_every=4"))
    Trainer(config, tmp_path / "run", progress=False).fit()
    run = load_run(tmp_path / "run", "best", "cpu")
    reference = run.dataset.test
    samples = generate_samples(run, build_sampler_from(run.config), reference.shape[0], seed=0, progress=False)
    metrics = text_quality(run, samples, reference, cache_dir=tmp_path / "run" / "quality", ar_config=TINY)
    assert (tmp_path / "run" / "quality" / "ar_model" / "weights.safetensors").is_file()
    for name, values in metrics.items():
        assert math.isfinite(values["samples"]) and math.isfinite(values["reference"]), name
    # four training steps: the samples are far from text, the judge says so
    assert metrics["ar_nll_bits_per_token"]["samples"] > metrics["ar_nll_bits_per_token"]["reference"]
