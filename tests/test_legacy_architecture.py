"""Run directories written before ``model.noise_conditioning`` / ``model.position_embedding`` existed (issue 19
items 13 and 14) load, sample and resume with the architecture they were trained with; new runs get the fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import with_overrides

from discrete_diffusion import cli
from discrete_diffusion.builders import build_denoiser, build_sampler_from
from discrete_diffusion.config import load_config, load_run_config
from discrete_diffusion.nn.mlp import ResidualMLPBlock
from discrete_diffusion.pipeline import generate_samples, load_run
from discrete_diffusion.runs.weights import load_model_weights
from discrete_diffusion.train.trainer import Trainer

MLP_RUN = ["data.name=array", "data.num_states=3", "process.name=masking", "model.backbone=mlp", "model.hidden=16",
           "model.depth=1", "train.batch_size=8", "sample.steps=4"]
TRANSFORMER_RUN = ["data.name=array", "data.num_states=3", "process.name=masking", "model.backbone=transformer",
                   "model.dim=16", "model.depth=1", "model.heads=2", "train.batch_size=8", "sample.steps=4"]


def _table_file(folder: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 3, size=(200, 4))
    path = folder / "table.npy"
    np.save(path, data)
    return path


def _old_run(tmp_path: Path, base: list[str]) -> Path:
    """A run trained with the legacy architecture, its config.yaml then stripped of the new keys: what today's
    main writes."""
    run = tmp_path / "run"
    config = load_config(None, with_overrides(*base, f"data.path={_table_file(tmp_path)}",
                                              "model.noise_conditioning=additive", "model.position_embedding=none"))
    Trainer(config, run, progress=False, log=lambda _: None).fit()
    text = (run / "config.yaml").read_text()
    stripped = re.sub(r"^  (noise_conditioning|position_embedding): .*\n", "", text, flags=re.M)
    assert stripped != text
    (run / "config.yaml").write_text(stripped)
    return run


def test_new_runs_get_the_fix_by_default():
    mlp = load_config(None, ["model.backbone=mlp", "process.name=masking"])
    assert mlp.model.noise_conditioning == "none"                # masking: no noise input (recorded)
    assert load_config(None, ["model.backbone=mlp", "process.name=uniform"]).model.noise_conditioning == "adaln-zero"
    assert load_config(None, ["model.backbone=transformer"]).model.position_embedding == "sinusoidal"
    with pytest.raises(ValueError, match="model.noise_conditioning must be one of"):
        load_config(None, ["model.noise_conditioning=sideways"])


def test_config_without_the_new_keys_means_the_old_architecture(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("model:\n  backbone: mlp\nprocess:\n  name: masking\n")
    old = load_run_config(path)
    assert old.model.noise_conditioning == "additive" and old.model.position_embedding == "none"
    assert load_config(path).model.noise_conditioning == "none"   # the same file as a new run's --config


def test_old_mlp_run_loads_samples_and_resumes(tmp_path):
    run = _old_run(tmp_path, MLP_RUN)
    loaded = load_run(run, "latest", "cpu")
    backbone = loaded.denoiser.backbone
    assert loaded.config.model.noise_conditioning == "additive"
    assert isinstance(backbone.blocks[0], ResidualMLPBlock) and backbone.noise_embedding is not None
    x = generate_samples(loaded, build_sampler_from(loaded.config), 4, seed=0, progress=False)
    assert x.shape == (4, 4) and int(x.max()) < 3
    # the weights are the legacy network's: today's default architecture cannot take them
    with pytest.raises(ValueError, match="do not match"):
        denoiser = build_denoiser(load_config(run / "config.yaml"), loaded.process, (4,))
        load_model_weights(loaded.checkpoint, denoiser, use_ema=True)
    assert cli.main(["train", "--out", str(run), "--resume", "--no-progress", "train.steps=8"]) == 0
    assert load_run(run, "latest", "cpu").checkpoint.name == "ckpt_00000008.json"
    assert "noise_conditioning: additive" in (run / "config.yaml").read_text()   # recorded from now on


def test_old_transformer_run_loads_rotary_only(tmp_path):
    run = _old_run(tmp_path, TRANSFORMER_RUN)
    loaded = load_run(run, "latest", "cpu")
    assert loaded.config.model.position_embedding == "none" and loaded.denoiser.backbone.positions is None
    x = generate_samples(loaded, build_sampler_from(loaded.config), 4, seed=0, progress=False)
    assert x.shape == (4, 4)
    assert cli.main(["train", "--out", str(run), "--resume", "--no-progress", "train.steps=8"]) == 0


def test_masking_mlp_without_noise_input_ignores_the_level():
    from discrete_diffusion.nn import MLP

    torch.manual_seed(0)
    net = MLP(4, 3, (4,), hidden=16, depth=2, noise_input=False)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 4, (5, 4))
    assert torch.equal(net(x, torch.full((5,), -0.9)), net(x, torch.full((5,), 0.7)))
    assert not torch.equal(net(x, torch.zeros(5)), net(x.flip(1), torch.zeros(5)))


def test_noise_free_processes_are_those_whose_posterior_ignores_the_level():
    from discrete_diffusion.config import NOISE_FREE_PROCESSES
    from discrete_diffusion.processes import PROCESSES

    assert set(NOISE_FREE_PROCESSES) == {name for name, cls in PROCESSES.items()
                                         if not cls.posterior_depends_on_noise_level}
