"""Count data without a maximum (data.counts, the jump process's default) and a jump run through the CLI.

- arrays load as counts with num_states None and values of any size; a process that needs K says what to set;
- the negative-binomial mixture generator is deterministic and has the paper's means;
- a count run with values in the thousands trains, samples and evaluates through ``ddiff`` without num_states.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from discrete_diffusion.builders import build_dataset, build_process_from
from discrete_diffusion.config import load_config
from discrete_diffusion.data import PAPER_MIXTURE, dataset_from_arrays, load_dataset, negative_binomial_mixture
from discrete_diffusion.report import build_report
from discrete_diffusion.report.counts import count_histogram, log_bin_edges


def test_counts_without_num_states_keep_any_value():
    x = np.array([[0, 3], [250_000, 1], [7, 70_000]] * 10)
    data = dataset_from_arrays(x, counts=True)
    assert data.num_states is None and int(data.train.max()) <= 250_000
    assert int(torch.cat([data.train, data.val, data.test]).max()) == 250_000
    with pytest.raises(ValueError, match="negative"):
        dataset_from_arrays(-x, counts=True)
    # without counts the same array asks for 250001 states, over the limit, and the error names the way out
    with pytest.raises(ValueError, match="process.name=jump"):
        dataset_from_arrays(x)


def test_a_process_that_needs_num_states_names_what_to_set(tmp_path):
    path = tmp_path / "counts.npy"
    np.save(path, np.array([[0, 3000], [5, 12]] * 20))
    config = load_config(None, ["data.name=array", f"data.path={path}", "data.counts=true"])
    dataset = build_dataset(config)
    assert dataset.num_states is None
    with pytest.raises(ValueError, match="data.num_states=K .*process.name=jump"):
        build_process_from(config, dataset.num_states)
    jump = load_config(None, ["data.name=array", f"data.path={path}", "process.name=jump"])
    assert jump.data.counts is True and jump.process.parameterization == "mean" and jump.process.schedule == "blackout"
    assert build_process_from(jump, build_dataset(jump).num_states).name == "jump"
    # every other process keeps today's defaults (a run directory written before data.counts existed reads the same)
    plain = load_config(None, [])
    assert plain.data.counts is False and plain.process.parameterization == "logits"


def test_negative_binomial_mixture_is_deterministic_with_the_papers_means():
    a = negative_binomial_mixture(200_000, PAPER_MIXTURE, seed=3)
    assert np.array_equal(a, negative_binomial_mixture(200_000, PAPER_MIXTURE, seed=3)) and a.dtype == np.int64
    expected = 0.75 * 1 * 0.1 / 0.9 + 0.25 * 10 * 0.9 / 0.1      # 22.58
    assert abs(a.mean() - expected) < 0.3 and (a == 0).mean() > 0.6 and a.max() > 200
    with pytest.raises(ValueError, match="p in"):
        negative_binomial_mixture(10, ((1.0, 2.0, 1.5),))
    data = load_dataset("nbinom-mixture", counts=True, size=2000)
    assert data.num_states is None and data.site_shape == (1,) and data.train.shape[0] == 1600


def test_cli_trains_samples_and_evaluates_counts_in_the_thousands(tmp_path, ddiff):
    counts = negative_binomial_mixture(400, ((0.6, 2.0, 0.3), (0.4, 10.0, 0.005)), sites=3, seed=1)
    assert counts.max() > 3000
    path = tmp_path / "counts.npy"
    np.save(path, counts)
    run = tmp_path / "run"
    done = ddiff("train", "--out", str(run), "--no-progress", "data.name=array", f"data.path={path}",
                  "process.name=jump", "process.options={scale: 2.0}", "model.backbone=mlp", "model.hidden=32",
                  "model.depth=1", "train.steps=6", "train.batch_size=32", "train.eval_every=6",
                  "train.checkpoint_every=6", "train.eval_t_samples=1", "train.warmup_steps=1")
    assert done.rc == 0, done.err[-2000:]
    recorded = (run / "config.yaml").read_text()
    assert "num_states: null" in recorded and "mean_scale:" in recorded and "counts: true" in recorded
    done = ddiff("sample", str(run), "--num", "40", "--steps", "8", "--sampler", "tau-leaping", "--no-progress")
    assert done.rc == 0, done.err[-2000:]
    samples = np.load(run / "samples" / "tau-leaping_8steps_seed0.npy")
    assert samples.shape == (40, 3) and samples.dtype == np.int64 and samples.min() >= 0
    done = ddiff("evaluate", str(run), "--json", "--no-progress", "--t-samples", "1")
    assert done.rc == 0, done.err[-2000:]
    result = json.loads(done.out[done.out.index("{"):])
    assert np.isfinite(result["nll_bits_per_dim"]) and result["encoding_bits_per_dim"] > 3.0
    # the report shows count histograms of the samples and of the training data on log axes
    report = build_report(run)
    assert report.counts is not None and set(report.counts) == {"samples", "data (train split)"}
    data_x = [x for x, _ in report.counts["data (train split)"]]
    assert max(data_x) > 1000 and min(data_x) == 1.0            # count + 1: zeros at 1, the tail past 1000
    assert done.rc == 0 and ddiff("report", str(run)).rc == 0 and (run / "report" / "report.png").is_file()
    # posterior sampling needs a finite state space: one line, not a traceback
    done = ddiff("posterior", str(run), "--operator", "thinning", "--p", "0.5", "--test-index", "0", "--method", "dps")
    assert done.rc != 0 and "counts without a maximum" in done.err


def test_log_bins_and_histograms():
    edges = log_bin_edges(5000)
    assert edges[:8].tolist() == [0, 1, 2, 3, 4, 6, 8, 12] and edges[-1] > 5000 and edges[-2] <= 5000
    hist = count_histogram(np.array([0, 0, 1, 5, 5000]), edges)
    assert hist[0] == (1.0, 0.4)
    total = sum(p * float(edges[np.searchsorted(edges, x - 1) + 1] - (x - 1)) for x, p in hist)
    assert abs(total - 1.0) < 1e-12


def test_randhie_real_counts_load_offline_or_say_how_to_install(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("statsmodels") is not None:
        data = load_dataset("randhie", counts=True)
        every = torch.cat([data.train, data.val, data.test])
        assert data.num_states is None and every.shape == (20190, 1)
        assert int(every.max()) == 77 and abs(float(every.double().mean()) - 2.8604) < 1e-3
        assert load_dataset("randhie").num_states == 78
    from discrete_diffusion.data import randhie

    monkeypatch.setattr(randhie.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps statsmodels"):
        load_dataset("randhie")
