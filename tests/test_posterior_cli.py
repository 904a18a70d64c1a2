"""`ddiff posterior`: files and record written, infill keeps the observed pixels exactly, y from a file reproduces the
simulated run, DPS samples satisfy a hard thinning constraint, the default folder refuses links, one-line errors;
and the helpers (half masks, observation pictures, accuracy / PSNR)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import with_overrides
from PIL import Image

from discrete_diffusion.cli import main
from discrete_diffusion.cli.posterior import observation_levels, posterior_grid
from discrete_diffusion.cli.posterior_inputs import build_cli_operator, half_mask
from discrete_diffusion.posterior import DownsampleOperator, ThinningOperator
from discrete_diffusion.posterior.metrics import posterior_mean, psnr, rounded_accuracy, sample_accuracy, sample_scores

#: A tiny masking run (the session's trained_run is Blackout).
MASKING = with_overrides("process.name=masking")
FAST = ("--steps", "4", "--no-progress", "--device", "cpu")


@pytest.fixture(scope="module")
def masking_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("post") / "masking"
    assert main(["train", "--out", str(run), "--no-progress", *MASKING]) == 0
    return run


def test_infill_keeps_observed_pixels_and_writes_every_file(ddiff, masking_run, tmp_path):
    """Inpainting the lower half of three test digits under a masking run: samples (3, 4, 8, 8) equal the truth on the
    observed (top) half exactly, y holds -1 on the bottom half, the grid has one column per observation and rows
    observation / 4 samples / mean / truth, and the JSON records the configuration, cost and hidden-half scores.
    The y written, given back with --y, reproduces the samples for the same seed."""
    out = tmp_path / "a"
    res = ddiff("posterior", masking_run, "--operator", "inpaint", "--mask", "top-half", "--test-index", "0:3",
                "--method", "infill", "--num", "4", "--out", out, *FAST)
    assert res.rc == 0, res
    samples, truth, y = (np.load(out / f"{name}.npy") for name in ("samples", "truth", "y"))
    assert samples.shape == (3, 4, 8, 8) and truth.shape == (3, 8, 8) and y.shape == (3, 8, 8)
    assert samples.min() >= 0 and samples.max() <= 16
    np.testing.assert_array_equal(samples[:, :, :4], np.broadcast_to(truth[:, None, :4], (3, 4, 4, 8)))
    assert (y[:, 4:] == -1).all() and (y[:, :4] == truth[:, :4]).all()
    np.testing.assert_allclose(np.load(out / "mean.npy"), samples.mean(1), atol=1e-6)
    width, height = Image.open(out / "grid.png").size
    assert (width - 2) // 34 == 3 and (height - 2) // 34 == 1 + 4 + 1 + 1     # 32 px tiles, 2 px padding
    record = json.loads((out / "posterior.json").read_text())
    assert record["operator"] == {"name": "inpaint"} and record["method"] == "infill"
    assert record["sampler"]["name"] == "tau-leaping" and record["sampler"]["num_steps"] == 4
    assert record["observation"] == {"test_index": [0, 1, 2], "mask": "top-half", "observed_sites": 3 * 32}
    assert record["network_calls"] == 4 and record["network_rows"] == 4 * 12 and record["seconds"] >= 0
    assert record["checkpoint"].startswith(str(masking_run.resolve()))
    hidden = record["metrics"]["unobserved_sites"]
    assert 0 <= hidden["accuracy"] <= 1 and record["metrics"]["all_sites"]["accuracy"] >= 0.5
    assert "unobserved_sites: accuracy" in res.out and str(out / "grid.png") in res.out

    again = tmp_path / "b"
    res = ddiff("posterior", masking_run, "--operator", "inpaint", "--y", out / "y.npy", "--method", "infill",
                "--num", "4", "--out", again, *FAST)
    assert res.rc == 0, res
    np.testing.assert_array_equal(np.load(again / "samples.npy"), samples)
    assert not (again / "truth.npy").exists() and "metrics" not in json.loads((again / "posterior.json").read_text())

    mask = np.zeros((8, 8), dtype=bool)
    mask[:, ::2] = True
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "values.npy", truth[0].astype(np.uint8))
    res = ddiff("posterior", masking_run, "--operator", "inpaint", "--y", tmp_path / "values.npy", "--mask",
                tmp_path / "mask.npy", "--method", "infill", "--num", "2", "--out", tmp_path / "c", *FAST)
    assert res.rc == 0, res
    kept = np.load(tmp_path / "c" / "samples.npy")
    assert kept.shape == (1, 2, 8, 8) and (kept[0][:, mask] == truth[0][mask]).all()


def test_dps_thinning_respects_the_hard_constraint(ddiff, trained_run, tmp_path):
    """DPS with the (tiny, Blackout) session run and binomial thinning simulated from a file of two images: every
    sample has x0 >= y (y ~ Binomial(x0, p) rules out smaller counts), the grid has rows observation / 2 samples /
    mean / truth, and the network rows counted include DPS's candidate evaluations (far more than the sampler's)."""
    from discrete_diffusion.pipeline import load_run

    clean = load_run(trained_run, device="cpu").dataset.split("val")[:2].numpy()
    np.save(tmp_path / "clean.npy", clean)
    res = ddiff("posterior", trained_run, "--operator", "thinning", "--p", "0.5", "--simulate-from",
                tmp_path / "clean.npy", "--method", "dps", "--num", "2", "--seed", "3", "--out", tmp_path / "o", *FAST)
    assert res.rc == 0, res
    samples, y = np.load(tmp_path / "o" / "samples.npy"), np.load(tmp_path / "o" / "y.npy")
    assert samples.shape == (2, 2, 8, 8) and y.shape == (2, 8, 8)
    assert (samples >= y[:, None]).all()
    assert bool(torch.isfinite(ThinningOperator(17, 0.5).log_likelihood(
        torch.from_numpy(samples.reshape(4, 8, 8)), torch.from_numpy(y).repeat_interleave(2, 0))).all())
    record = json.loads((tmp_path / "o" / "posterior.json").read_text())
    assert record["operator"] == {"name": "thinning", "p": 0.5} and record["seed"] == 3
    assert record["network_rows"] > 10 * 4 * 4                 # 4 rows x 4 steps is the sampler's own share
    assert (Image.open(tmp_path / "o" / "grid.png").size[1] - 2) // 34 == 1 + 2 + 1 + 1
    y_again = np.load(tmp_path / "o" / "y.npy")
    res = ddiff("posterior", trained_run, "--operator", "thinning", "--p", "0.5", "--simulate-from",
                tmp_path / "clean.npy", "--method", "dps", "--num", "2", "--seed", "3", "--out", tmp_path / "p", *FAST)
    assert res.rc == 0 and np.array_equal(np.load(tmp_path / "p" / "samples.npy"), samples)
    assert np.array_equal(np.load(tmp_path / "p" / "y.npy"), y_again)


def test_split_gibbs_through_the_command_line(ddiff, trained_run, masking_run, tmp_path):
    """split-gibbs, registered in posterior_sample, runs from the command line with its options (-m) and its prior
    step's sampler: 3 iterations of a 2-step bridge on 2 x 2 rows cost 3 x 2 x 4 network rows, recorded; under
    masking a coupled measurement and, on a run, the exact (table) prior step are one-line errors."""
    out = tmp_path / "sg"
    res = ddiff("posterior", trained_run, "--operator", "thinning", "--p", "0.5", "--test-index", "0,1", "--method",
                "split-gibbs", "-m", "iterations=3", "-m", "t_max=0.5", "--sampler", "bridge", "--steps", "2",
                "--num", "2", "--out", out, "--no-progress", "--device", "cpu")
    assert res.rc == 0, res
    record = json.loads((out / "posterior.json").read_text())
    assert record["method"] == "split-gibbs" and record["method_options"] == {"iterations": 3, "t_max": 0.5}
    assert record["sampler"]["name"] == "bridge" and record["network_rows"] == 3 * 2 * 4
    samples = np.load(out / "samples.npy")
    assert samples.shape == (2, 2, 8, 8) and samples.min() >= 0 and samples.max() <= 16
    for run, args, message in [
            (masking_run, ("--operator", "downsample", "--block", "2"), "coupled|factorise"),
            (trained_run, ("--operator", "thinning", "--p", "0.5", "-m", "exact_prior=true"), "enumerated table")]:
        res = ddiff("posterior", run, *args, "--test-index", "0", "--method", "split-gibbs", "--out", tmp_path / "x",
                    *FAST)
        assert res.rc == 2 and len(res.err.strip().splitlines()) == 1, res
        assert __import__("re").search(message, res.err), res.err
        assert not (tmp_path / "x").exists()


def test_default_folder_is_inside_the_run_and_refuses_links(ddiff, masking_run, tmp_path):
    """Without --out the files go to RUN_DIR/posterior/STEM/; a symbolic link planted at RUN_DIR/posterior is refused
    (one line) and its target stays empty."""
    run = tmp_path / "run"
    shutil.copytree(masking_run, run)
    args = ("posterior", run, "--operator", "channel", "--eps", "0.2", "--test-index", "5", "--method", "dps",
            "--num", "1", *FAST)
    res = ddiff(*args)
    assert res.rc == 0, res
    folder, = (run / "posterior").glob("test5_channel-eps0.2_dps_tau-leaping_4steps_seed0_n1_*")
    assert (folder / "samples.npy").is_file() and (folder / "grid.png").is_file()
    width, height = Image.open(folder / "grid.png").size     # one observation: its tiles in one row
    assert (height - 2) // 34 == 1 and (width - 2) // 34 == 1 + 1 + 1 + 1     # observation, sample, mean, truth
    shutil.rmtree(run / "posterior")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (run / "posterior").symlink_to(target)
    res = ddiff(*args)
    assert res.rc == 2 and len(res.err.strip().splitlines()) == 1 and "symbolic link" in res.err, res
    assert not any(target.iterdir())


def _errors(run: Path, tmp: Path) -> list[tuple[tuple, str]]:
    np.save(tmp / "float.npy", np.zeros((8, 8)))
    np.save(tmp / "big.npy", np.full((8, 8), 17))
    np.save(tmp / "shape.npy", np.zeros((7, 8), dtype=np.int64))
    np.save(tmp / "strings.npy", np.array([["a"] * 8] * 8))
    (tmp / "groups.json").write_text("[[0, 1], [2, 99]]")
    (tmp / "bad.json").write_text("{not json")
    test = ("--test-index", "0")
    table = [
        ((*test, "--operator", "thinning", "--p", "0.3"), "give --method: one of dps, infill"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "exact-guidance"),
         "exact-guidance needs the prior as an enumerable table.*use one of dps, infill"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "langevin"), "unknown --method 'langevin'"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "infill"), "inpaint measurement only"),
        ((*test, "--operator", "inpaint", "--mask", "top-half", "--method", "infill"), "exact for masking only"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "dps", "-m", "beta=2"),
         "takes the options \\['gamma', 'mc_samples'\\], got 'beta'"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "dps", "-m", "gamma"),
         "malformed --method-option"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "dps", "-m", "gamma=-1"), "finite number >= 0"),
        ((*test, "--operator", "thinning", "--p", "0.3", "--method", "dps", "--sampler", "bridge"),
         "use one of \\['tau-leaping', 'euler'\\]"),
        ((*test, "--operator", "blur", "--method", "dps"), "unknown --operator 'blur'; valid: inpaint, channel"),
        ((*test, "--operator", "callable", "--method", "dps"), "unknown --operator 'callable'"),
        ((*test, "--operator", "thinning", "--method", "dps"), "the thinning measurement needs --p"),
        ((*test, "--operator", "thinning", "--p", "1.5", "--method", "dps"), "thinning: p .* must be a number in"),
        ((*test, "--operator", "thinning", "--eps", "0.1", "--p", "0.3", "--method", "dps"),
         "--eps is an option of the channel measurement, not of thinning"),
        ((*test, "--operator", "channel", "--eps", "0.1", "--mask", "top-half", "--method", "dps"),
         "--mask is an option of the inpaint measurement"),
        ((*test, "--operator", "downsample", "--block", "3", "--method", "dps"), "must divide the site shape"),
        ((*test, "--operator", "downsample", "--block", "two", "--method", "dps"), "--block takes an integer"),
        ((*test, "--operator", "parity", "--groups", tmp / "groups.json", "--method", "dps"), "names site 99"),
        ((*test, "--operator", "parity", "--groups", tmp / "bad.json", "--method", "dps"), "is not JSON"),
        ((*test, "--operator", "parity", "--groups", tmp / "none.json", "--method", "dps"), "no such file"),
        ((*test, "--operator", "inpaint", "--method", "dps"), "needs --mask"),
        ((*test, "--operator", "inpaint", "--mask", "middle", "--method", "dps"), "--mask middle: no such file"),
        (("--test-index", "400", "--operator", "channel", "--eps", "0.1", "--method", "dps"),
         "must name indices in 0..296"),
        (("--test-index", "a:b", "--operator", "channel", "--eps", "0.1", "--method", "dps"), "--test-index takes"),
        (("--operator", "channel", "--eps", "0.1", "--method", "dps"), "exactly one of --y"),
        ((*test, "--y", tmp / "big.npy", "--operator", "channel", "--eps", "0.1", "--method", "dps"),
         "exactly one of .* \\(got --y, --test-index\\)"),
        (("--y", tmp / "missing.npy", "--operator", "channel", "--eps", "0.1", "--method", "dps"), "no such file"),
        (("--y", tmp / "float.npy", "--operator", "channel", "--eps", "0.1", "--method", "dps"),
         "must be an integer tensor"),
        (("--y", tmp / "big.npy", "--operator", "thinning", "--p", "0.3", "--method", "dps"), "must lie in 0..16"),
        (("--y", tmp / "shape.npy", "--operator", "channel", "--eps", "0.1", "--method", "dps"),
         "must have shape \\(8, 8\\) or \\(N, 8, 8\\), got \\(7, 8\\)"),
        (("--y", tmp / "strings.npy", "--operator", "channel", "--eps", "0.1", "--method", "dps"), "dtype|must hold"),
        (("--simulate-from", tmp / "big.npy", "--operator", "channel", "--eps", "0.1", "--method", "dps"),
         "--simulate-from"),
        ((*test, "--operator", "channel", "--eps", "0.1", "--method", "dps", "--num", "0"), "--num and --batch-size"),
    ]
    return table


def test_bad_input_is_one_line_and_writes_nothing(ddiff, trained_run, tmp_path):
    """Every bad input (files, shapes, dtypes, ranges, flags of another operator, a method that does not apply to the
    run or the measurement, exact guidance without a table prior) exits 2 with one line and writes no output."""
    import re

    out = tmp_path / "out"
    for args, message in _errors(trained_run, tmp_path):
        res = ddiff("posterior", trained_run, *args, "--out", out, *FAST)
        assert res.rc == 2 and len(res.err.strip().splitlines()) == 1, (args, res)
        assert re.search(message, res.err), (message, res.err)
        assert not out.exists(), args


def test_count_operators_refuse_token_data():
    """thinning and downsample treat values as counts: a run whose data are a vocabulary's tokens is refused."""
    run = SimpleNamespace(dataset=SimpleNamespace(metadata={"vocab": list("abc")}, num_states=3, site_shape=(8,)))
    args = SimpleNamespace(operator="thinning", eps=None, p=0.5, block=None, groups=None, flip=None)
    with pytest.raises(ValueError, match="treats values as counts; this run's data are tokens"):
        build_cli_operator(args, run)
    args.operator, args.p, args.eps = "channel", None, 0.1
    assert build_cli_operator(args, run).name == "channel"


def test_half_masks_and_observation_pictures():
    """Named masks pick the right half; the observation picture of thinning is round(y / p) clipped, of downsample
    each block's mean spread over the block; the grid stacks observation / samples / mean / truth."""
    top = half_mask("top-half", (4, 2))
    assert top[:2].all() and not top[2:].any()
    assert half_mask("right-half", (2, 4))[:, 2:].all() and not half_mask("right-half", (2, 4))[:, :2].any()
    assert half_mask("last-half", (3, 3)).reshape(-1).tolist() == [False] * 4 + [True] * 5
    with pytest.raises(ValueError, match="needs image sites"):
        half_mask("left-half", (6,))
    levels, flagged = observation_levels(ThinningOperator(17, 0.3), torch.tensor([[[1, 5], [0, 2]]]), (2, 2), 17)
    assert levels.tolist() == [[[3, 16], [0, 7]]] and not flagged.any()
    levels, _ = observation_levels(DownsampleOperator(17, 2), torch.tensor([[[6, 1]]]), (2, 4), 17)
    assert levels.tolist() == [[[2, 2, 0, 0], [2, 2, 0, 0]]]
    samples = torch.randint(0, 17, (3, 5, 2, 2))
    tiles = posterior_grid(samples, (samples[:, 0], samples[:, 0] > 8), samples[:, 1], 17, sample_rows=2)
    assert tiles.shape == (3 * (1 + 2 + 1 + 1), 3, 2, 2)
    assert torch.equal(tiles[3:6, 0], samples[:, 0]) and torch.equal(tiles[12:15, 1], samples[:, 1])
    flagged = samples[:, 0] > 8                                       # shown dark red: (8, 0, 0)
    assert bool((tiles[:3, 0][flagged] == 8).all()) and bool((tiles[:3, 1:].permute(1, 0, 2, 3)[:, flagged] == 0).all())
    assert torch.equal(tiles[:3, 2][~flagged], samples[:, 0][~flagged])


def test_accuracy_and_psnr_hand_values():
    """Hand-computed scores: two samples of one 2x2 image."""
    truth = torch.tensor([[[0, 4], [8, 16]]])
    samples = torch.tensor([[[[0, 4], [8, 0]], [[0, 2], [8, 16]]]])
    mean = posterior_mean(samples)
    assert mean.tolist() == [[[0.0, 3.0], [8.0, 8.0]]]
    assert rounded_accuracy(mean, truth) == 0.5
    assert sample_accuracy(samples, truth) == 6 / 8
    assert math.isclose(psnr(mean, truth, 16.0), 10 * math.log10(256 / ((1 + 64) / 4)))
    assert psnr(truth.double(), truth, 16.0) == math.inf
    region = torch.tensor([[[False, False], [True, True]]])
    assert sample_scores(samples, truth, 17, region)["sample_accuracy"] == 3 / 4
    assert rounded_accuracy(mean, truth, region) == 0.5
