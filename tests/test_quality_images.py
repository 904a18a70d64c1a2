"""Sample-quality metrics (issue 14): feature distances against closed forms and hand examples, the image
classifier's cache, the dispatcher's bad-input errors, and `ddiff evaluate --samples / --sampler`."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from discrete_diffusion.data import DiscreteDataset, load_dataset
from discrete_diffusion.evaluate import image_quality
from discrete_diffusion.evaluate.count_quality import count_metrics, wasserstein1_per_site
from discrete_diffusion.evaluate.feature_metrics import (
    class_entropy_bits,
    frechet_distance,
    frechet_distance_of,
    kid,
    prdc,
)
from discrete_diffusion.evaluate.image_quality import ClassifierConfig, load_or_train_classifier
from discrete_diffusion.evaluate.quality import evaluate_quality, quality_family

#: A classifier trained for 150 steps: about 2 s on one core, about 91 % test accuracy on digits.
SMALL = ClassifierConfig(steps=150)
QUALITY_KEYS = {"sampler", "steps", "nfe", "seed", "num_samples", "family", "metrics", "samples_path"}


@pytest.fixture(scope="session")
def digits() -> DiscreteDataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory, digits) -> Path:
    """A quality cache folder holding the SMALL classifier of digits, trained once per session."""
    cache = tmp_path_factory.mktemp("quality")
    load_or_train_classifier(digits, cache, SMALL)
    return cache


@pytest.fixture
def small_default(monkeypatch):
    """Make the SMALL config the one image_family and evaluate_quality use."""
    monkeypatch.setattr(image_quality, "DEFAULT_CLASSIFIER", SMALL)


@pytest.fixture(scope="session")
def digits_test_features(classifier_cache, digits) -> torch.Tensor:
    clf = load_or_train_classifier(digits, classifier_cache, SMALL)
    assert clf.status == "cached"
    return clf.features_and_classes(digits.test)[0]


def _shuffled(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each image with its pixels permuted by its own random permutation."""
    g = torch.Generator().manual_seed(seed)
    flat = images.reshape(images.shape[0], -1)
    return torch.stack([row[torch.randperm(row.numel(), generator=g)] for row in flat]).reshape(images.shape)


# ---------------------------------------------------------------- feature metrics: exact values

def test_frechet_gaussian_closed_form():
    """Commuting covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2, to 1e-6 (measured ~1e-13)."""
    g = torch.Generator().manual_seed(0)
    d = 6
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a, b = torch.rand(d, generator=g, dtype=torch.float64) * 4, torch.rand(d, generator=g, dtype=torch.float64) * 4
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    exact = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    value = frechet_distance(mu1, rot @ torch.diag(a) @ rot.T, mu2, rot @ torch.diag(b) @ rot.T)
    assert value == pytest.approx(exact, abs=1e-6)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]),
                            torch.tensor([[9.0]])) == pytest.approx(9.0 + 1.0, abs=1e-12)


def test_frechet_non_commuting_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(1)
    d = 5
    m1, m2 = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = m1 @ m1.T + 0.1 * torch.eye(d, dtype=torch.float64), m2 @ m2.T
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    exact = float((mu ** 2).sum()) + float(np.trace(s1.numpy() + s2.numpy() - 2 * covmean))
    assert frechet_distance(mu, s1, torch.zeros(d, dtype=torch.float64), s2) == pytest.approx(exact, abs=1e-6)


def test_prdc_hand_example():
    """k = 1 on the line. Real 0, 1, 3, 10 (radii 1, 1, 2, 7); fake 0.4, 0.6, 1.1 (radii 0.2, 0.2, 0.5):
    every fake lies in a real ball (precision 1); only real 1 lies in a fake ball (recall 1/4); the fakes lie in
    2 + 2 + 2 real balls (density 6 / 3 = 2); the nearest fake of 0, 1, 3 is inside their balls, not of 10
    (coverage 3/4)."""
    real = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    fake = torch.tensor([[0.4], [0.6], [1.1]])
    assert prdc(real, fake, k=1) == pytest.approx({"precision": 1.0, "recall": 0.25, "density": 2.0,
                                                   "coverage": 0.75}, abs=1e-12)


def test_prdc_of_a_set_against_itself(digits_test_features):
    """Precision = recall = coverage = 1 exactly; density = (k + 1) / k (each real ball holds its centre)."""
    out = prdc(digits_test_features, digits_test_features, k=5)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] == pytest.approx(6 / 5, abs=0.02)  # ties among the 297 digits can add a little


def _scaled(clf, images: torch.Tensor, scale: float) -> torch.Tensor:
    return clf.features_and_classes(images)[0] / scale


def test_kid_identical_sets_and_shuffled(digits, classifier_cache):
    """KID of a set against itself (all m = 297 rows in the one subset) is not exactly 0: the cross term
    includes the m diagonal pairs k(x_i, x_i), so MMD_u^2 = 2 S/(m(m-1)) - 2 (S + T)/m^2 with S the off-diagonal
    and T the diagonal kernel sums, i.e. -2 (mean k(x_i, x_i) - mean_{i != j} k(x_i, x_j)) / m: measured
    -0.018 on the scaled features (RMS feature 1). That value is asserted to 1e-9, and it is under 5 % of KID
    between the test set and its pixel-shuffled copy (measured ~0.4 against the training target).
    KID of held-out test images against the training target: measured -0.005, |KID| < 0.02 asserted."""
    clf = load_or_train_classifier(digits, classifier_cache, SMALL)
    train = clf.features_and_classes(digits.train)[0]
    scale = float(train.pow(2).mean().sqrt())
    train, test = train / scale, _scaled(clf, digits.test, scale)
    m, d = test.shape
    gram = (test @ test.T / d + 1) ** 3
    diag, off = gram.diagonal().sum(), gram.sum() - gram.diagonal().sum()
    expected = float(2 * off / (m * (m - 1)) - 2 * (off + diag) / m ** 2)
    same = kid(test, test, subset_size=m)
    assert same == pytest.approx(expected, abs=1e-9)
    shuffled = kid(train, _scaled(clf, _shuffled(digits.test), scale))
    assert abs(same) < 0.05 * shuffled
    assert abs(kid(train, test)) < 0.02 < shuffled


def test_frechet_halves_small_shuffled_large(digits, classifier_cache):
    """Two halves of the digits test set (148 each) are close in classifier features and a half against the
    pixel-shuffled other half is far: measured 0.81 and 4.6 (5.6x) with the 150-step classifier, 1.09 and 6.6
    (6x) with the default one; with 64 features and 148 rows the halves' FD is mostly the estimator's
    small-sample bias, so > 4x is asserted here. Against the training set (the target the image family
    uses), test images score 0.10 and shuffled test images 5.0 (50x; > 10x asserted)."""
    clf = load_or_train_classifier(digits, classifier_cache, SMALL)
    train = clf.features_and_classes(digits.train)[0]
    scale = float(train.pow(2).mean().sqrt())
    train, test = train / scale, _scaled(clf, digits.test, scale)
    shuffled = _scaled(clf, _shuffled(digits.test), scale)
    half = test.shape[0] // 2
    halves = frechet_distance_of(test[:half], test[half:2 * half])
    assert frechet_distance_of(test[half:2 * half], shuffled[:half]) > 4 * halves
    assert frechet_distance_of(train, shuffled) > 10 * frechet_distance_of(train, test)


def test_class_entropy_bits():
    assert class_entropy_bits(torch.arange(10).repeat(3), 10) == pytest.approx(np.log2(10), abs=1e-12)
    assert class_entropy_bits(torch.zeros(7, dtype=torch.long), 10) == 0.0
    assert class_entropy_bits(torch.tensor([0, 0, 1, 1]), 10) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- counts family

def test_count_metrics_hand_example():
    """x sites (0, 2), (2, 2); target sites (1, 1, 4), (0, 0, 3). Means 1, 2 vs 2, 1 -> 1; population variances
    1, 0 vs 2, 2 -> 1.5; W1 (integrals of |F_x - F_t|) 4/3 and 5/3 -> 1.5."""
    x = torch.tensor([[0, 2], [2, 2]])
    t = torch.tensor([[1, 0], [1, 0], [4, 3]])
    assert count_metrics(x, t) == pytest.approx({"mean_abs_error": 1.0, "var_abs_error": 1.5,
                                                 "wasserstein1": 1.5}, abs=1e-12)
    assert wasserstein1_per_site(x, t).tolist() == pytest.approx([4 / 3, 5 / 3], abs=1e-12)


def test_wasserstein_matches_scipy_on_unequal_sizes():
    g = torch.Generator().manual_seed(3)
    x, t = torch.randint(0, 9, (37, 4), generator=g), torch.randint(0, 5, (61, 4), generator=g)
    expected = [scipy.stats.wasserstein_distance(x[:, d].numpy(), t[:, d].numpy()) for d in range(4)]
    assert wasserstein1_per_site(x, t).tolist() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- the dispatcher and bad input

def _run(dataset: DiscreteDataset) -> SimpleNamespace:
    return SimpleNamespace(dataset=dataset, device=torch.device("cpu"))


def test_families_of_the_datasets(digits):
    assert quality_family(digits) == "image"
    unlabelled = dataclasses.replace(digits, train_labels=None, val_labels=None, test_labels=None)
    assert quality_family(unlabelled) == "counts"
    seq = torch.zeros(4, 8, dtype=torch.long)
    text = DiscreteDataset(seq, seq, seq, 3, "text", "sequence", {"vocab": ["a", "b", "c"]})
    dna = DiscreteDataset(seq, seq, seq, 4, "ecoli", "sequence", {"vocab": list("ACGT"), "alphabet": "ACGT"})
    assert quality_family(text) == "text" and quality_family(dna) == "dna"
    assert quality_family(DiscreteDataset(seq, seq, seq, 3, "array", "tabular")) == "counts"
    bpe = DiscreteDataset(seq, seq, seq, 300, "kjv", "sequence", {"tokenizer_json": "{}"})
    assert quality_family(bpe) == "text"
    g = torch.Generator().manual_seed(0)
    acgt = torch.randint(0, 4, (6, 16), generator=g)
    dna_run = DiscreteDataset(acgt, acgt, acgt, 4, "fasta", "sequence", {"alphabet": "ACGT"})
    result = evaluate_quality(_run(dna_run), acgt.flip(1), cache_dir=Path("unused"))  # no cache needed
    assert result.family == "dna" and {"kmer_js_k3", "gc_content"} <= set(result.metrics)
    assert result.metrics["gc_content"]["samples"] == pytest.approx(result.metrics["gc_content"]["reference"])


def test_image_dispatch_reports_metrics_and_accuracy(digits, classifier_cache, small_default, tmp_path):
    cache = tmp_path / "quality"
    shutil.copytree(classifier_cache, cache)
    result = evaluate_quality(_run(digits), digits.val[:40], cache_dir=cache)
    assert result.family == "image" and result.extra["classifier_status"] == "cached"
    assert result.extra["classifier_test_accuracy"] > 0.8
    assert set(result.metrics) == {"frechet_distance", "kid", "precision", "recall", "density", "coverage",
                                   "class_entropy_bits"}
    noise = torch.randint(0, digits.num_states, (40, 8, 8), generator=torch.Generator().manual_seed(0))
    bad = evaluate_quality(_run(digits), noise, cache_dir=cache)
    assert bad.metrics["frechet_distance"]["samples"] > 5 * result.metrics["frechet_distance"]["samples"]
    assert bad.metrics["precision"]["samples"] < result.metrics["precision"]["samples"]
    assert bad.metrics["frechet_distance"]["reference"] == result.metrics["frechet_distance"]["reference"]


@pytest.mark.parametrize("samples, message", [
    (torch.zeros(10, 8, 7, dtype=torch.long), r"samples must have shape \(N, 8, 8\)"),
    (torch.zeros(10, 64, dtype=torch.long), r"samples must have shape \(N, 8, 8\)"),
    (torch.full((10, 8, 8), 17), "out of range"),
    (torch.full((10, 8, 8), -1), "negative"),
    (torch.full((10, 8, 8), 0.5), "non-integral"),
    (torch.zeros(1, 8, 8, dtype=torch.long), "at least 2 samples"),
])
def test_bad_samples_are_one_line_errors(digits, samples, message, tmp_path):
    with pytest.raises(ValueError, match=message) as err:
        evaluate_quality(_run(digits), samples, cache_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_unlabelled_images_get_counts_metrics_with_a_note(digits, tmp_path):
    unlabelled = dataclasses.replace(digits, train_labels=None, val_labels=None, test_labels=None)
    result = evaluate_quality(_run(unlabelled), digits.val[:20], cache_dir=tmp_path)
    assert result.family == "counts"
    assert set(result.metrics) == {"mean_abs_error", "var_abs_error", "wasserstein1"}
    assert any("need class labels" in note for note in result.extra["notes"])
    with pytest.raises(ValueError, match="need class labels"):
        load_or_train_classifier(unlabelled, tmp_path, SMALL)


def test_more_samples_than_reference_are_truncated_with_a_note(digits, tmp_path):
    unlabelled = dataclasses.replace(digits, train_labels=None, val_labels=None, test_labels=None)
    result = evaluate_quality(_run(unlabelled), digits.train[:200], reference_split="val", cache_dir=tmp_path)
    assert result.extra["num_samples"] == result.extra["num_reference"] == 150
    assert any("only 150 examples" in note for note in result.extra["notes"])


# ---------------------------------------------------------------- the classifier cache

def test_cache_reuse_and_retraining(digits, classifier_cache, tmp_path):
    cache = tmp_path / "q"
    shutil.copytree(classifier_cache, cache)
    start = time.perf_counter()
    cached = load_or_train_classifier(digits, cache, SMALL)
    assert cached.status == "cached" and time.perf_counter() - start < 1.0
    weights = cache / "classifier" / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF  # tamper with one byte of a weight
    weights.write_bytes(bytes(blob))
    few = dataclasses.replace(SMALL, steps=5)  # retraining in the test: few steps
    changed_config = load_or_train_classifier(digits, cache, few)
    assert changed_config.status == "retrained (config changed)"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert load_or_train_classifier(digits, cache, few).status == "retrained (weights file checksum mismatch)"
    other = dataclasses.replace(digits, train=digits.train.flip(-1))
    assert load_or_train_classifier(other, cache, few).status == "retrained (data_sha256 changed)"
    assert load_or_train_classifier(other, cache, few).status == "cached"
    (cache / "classifier" / "meta.json").write_text("{not json")
    assert load_or_train_classifier(other, cache, few).status.startswith("retrained (unreadable cache")


def test_cache_never_written_through_a_symlink(digits, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(ValueError, match="symbolic link"):
        load_or_train_classifier(digits, tmp_path / "link", dataclasses.replace(SMALL, steps=1))
    assert not any(real.iterdir())


# ---------------------------------------------------------------- the CLI

@pytest.fixture
def quality_run(trained_run, classifier_cache, tmp_path, small_default) -> Path:
    """A copy of the session's trained digits run with the SMALL classifier already cached."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("quality"))
    shutil.copytree(classifier_cache, run / "quality")
    return run


def test_cli_evaluate_samples_file_writes_the_record(ddiff, quality_run, digits, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    np.save(folder / "bridge_7steps_seed3.npy", digits.val[:30].numpy().astype(np.uint8))
    (folder / "bridge_7steps_seed3.json").write_text(json.dumps(
        {"sampler": {"name": "bridge", "num_steps": 7}, "seed": 3, "nfe_last_batch": 7.0}))
    res = ddiff("evaluate", quality_run, "--samples", folder / "bridge_7steps_seed3.npy", "--json", "--no-progress")
    assert res.rc == 0, res
    printed = json.loads(res.out)
    record = json.loads((quality_run / "quality" / "bridge_7steps_seed3.json").read_text())
    assert printed == record and QUALITY_KEYS <= set(record)
    assert (record["sampler"], record["steps"], record["nfe"], record["seed"]) == ("bridge", 7, 7.0, 3)
    assert record["num_samples"] == 30 and record["family"] == "image"
    assert record["samples_path"] == str((folder / "bridge_7steps_seed3.npy").resolve())
    assert set(record["metrics"]["kid"]) == {"samples", "reference"}
    table = ddiff("evaluate", quality_run, "--samples", folder, "--no-progress")
    assert table.rc == 0 and "frechet_distance" in table.out and "classifier accuracy on the test split" in table.out


def test_cli_evaluate_folder_and_on_the_fly(ddiff, quality_run, digits, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in ("a", "b"):
        np.save(folder / f"{name}.npy", digits.val[:20].numpy())
    res = ddiff("evaluate", quality_run, "--samples", folder, "--json", "--no-progress")
    assert res.rc == 0, res
    records = json.loads(res.out)
    assert [r["sampler"] for r in records] == [None, None] and len(records) == 2
    assert {p.name for p in (quality_run / "quality").glob("*.json")} == {"a.json", "b.json"}
    drawn = ddiff("evaluate", quality_run, "--sampler", "bridge", "--steps", "3", "--num-samples", "12",
                  "--seed", "5", "--no-progress")
    assert drawn.rc == 0, drawn
    record = json.loads((quality_run / "quality" / "bridge_3steps_seed5.json").read_text())
    assert (record["sampler"], record["steps"], record["seed"], record["num_samples"]) == ("bridge", 3, 5, 12)
    assert record["nfe"] == 3.0 and record["samples_path"] is None


def test_cli_evaluate_replaces_a_symlinked_record(ddiff, quality_run, digits, tmp_path):
    np.save(tmp_path / "s.npy", digits.val[:20].numpy())
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (quality_run / "quality" / "s.json").symlink_to(victim)
    assert ddiff("evaluate", quality_run, "--samples", tmp_path / "s.npy", "--no-progress").rc == 0
    assert victim.read_text() == "keep"
    assert not (quality_run / "quality" / "s.json").is_symlink()


@pytest.mark.parametrize("make, extra, message", [
    (lambda d: d.mkdir(), [], "no .npy sample files"),
    (lambda d: None, [], "does not exist"),
    (lambda d: np.save(d.with_suffix(".npy"), np.full((4, 8, 8), 99)), [], "out of range"),
    (lambda d: np.save(d.with_suffix(".npy"), np.zeros((4, 64))), [], r"shape \(N, 8, 8\)"),
    (lambda d: np.save(d.with_suffix(".npy"), np.zeros((4, 8, 8))), ["--sampler", "bridge"], "not both"),
    (lambda d: np.save(d.with_suffix(".npy"), np.zeros((4, 8, 8))), ["--t-samples", "2"], "option of the likelihood"),
    (lambda d: np.save(d.with_suffix(".npy"), np.zeros((4, 8, 8), dtype=object), allow_pickle=True), [], "dtype"),
])
def test_cli_evaluate_bad_samples(ddiff, quality_run, tmp_path, make, extra, message):
    target = tmp_path / "bad"
    make(target)
    path = target if not target.with_suffix(".npy").exists() else target.with_suffix(".npy")
    res = ddiff("evaluate", quality_run, "--samples", path, *extra, "--no-progress")
    assert res.rc == 2 and re.search(message, res.err), res
    assert len(res.err.strip().splitlines()) == 1


def test_sample_record_fields_are_type_checked(tmp_path):
    from discrete_diffusion.evaluate.sample_files import read_sample_record

    npy = tmp_path / "x.npy"
    assert read_sample_record(npy) == {"sampler": None, "steps": None, "nfe": None, "seed": None}
    npy.with_suffix(".json").write_text(json.dumps({"sampler": {"name": "exact", "num_steps": 100}, "seed": "3",
                                                    "nfe_last_batch": True}))
    assert read_sample_record(npy) == {"sampler": "exact", "steps": None, "nfe": None, "seed": None}
    npy.with_suffix(".json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a sample record"):
        read_sample_record(npy)
