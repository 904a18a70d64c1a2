"""Run directories written by an earlier release still sample, evaluate and resume, bit for bit.

``tests/data/runs_v0_1/`` holds three tiny runs (Blackout + U-Net, masking + MLP, masking + transformer, digits,
4 steps) written by main at commit 6dde47d, before the layout redesign, plus what that code produced from them:
the samples of ``ddiff sample RUN --num 4 --steps 5 --seed 3`` and the SHA-256 of the tensors file after
``ddiff train --out RUN --resume train.steps=6`` (both with one thread). A change that alters an architecture,
the checkpoint format or the resume path for existing runs fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from discrete_diffusion.cli import main
from discrete_diffusion.runs.weights import find_latest_checkpoint

DATA = Path(__file__).parent / "data" / "runs_v0_1"
EXPECTED = json.loads((DATA / "expected.json").read_text())["runs"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the expected bytes were written with one thread
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_run_samples_identically(name, tmp_path, one_thread):
    run = tmp_path / name
    shutil.copytree(DATA / name, run)
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--num", "4", "--steps", "5", "--seed", "3", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    got = np.load(out / "bridge_5steps_seed3.npy")
    np.testing.assert_array_equal(got, np.load(DATA / f"{name}.samples_seed3.npy"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_run_resumes_bit_for_bit(name, tmp_path, one_thread):
    run = tmp_path / name
    shutil.copytree(DATA / name, run)
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "train.steps=6"]) == 0
    manifest = json.loads(find_latest_checkpoint(run / "checkpoints").read_text())
    assert manifest["step"] == 6
    assert manifest["tensors_sha256"] == EXPECTED[name]["resumed_step6_tensors_sha256"]


def test_old_run_evaluates(tmp_path, one_thread):
    run = tmp_path / "masking_mlp"
    shutil.copytree(DATA / "masking_mlp", run)
    assert main(["evaluate", str(run), "--device", "cpu", "--no-progress", "--t-samples", "1"]) == 0
