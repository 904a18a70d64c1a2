"""
Train and sample on digits
==========================

Train Blackout diffusion (a pure-death process on pixel counts, generation from an all-black image) on the
8x8 digits bundled with scikit-learn, then sample from the run directory and look at the samples. This is
``ddiff train`` + ``ddiff sample`` through the Python API, with a tiny model and a few hundred steps so that it
runs in well under a minute; ``make demo`` trains the real thing (test NLL about 1.72 bits/dim).
"""

# %%
# Train a small model into a run directory. Every option is a ``section.key=value`` override of the config
# (``ddiff train --help``); the run directory holds the config, checkpoints, metrics and data checksums.
import tempfile
from pathlib import Path

import torch

from discrete_diffusion.cli import main as ddiff
from discrete_diffusion.pipeline import generate_samples, load_run
from discrete_diffusion.report.grids import save_image_grid
from discrete_diffusion.samplers import build_sampler

torch.manual_seed(0)
run_dir = Path(tempfile.mkdtemp()) / "digits"
assert ddiff(["train", "--out", str(run_dir), "--no-progress", "train.steps=300", "train.batch_size=64",
       "train.eval_every=300", "train.checkpoint_every=300", "train.sample_every=100000",
       "train.eval_t_samples=2", "train.device=cpu", "model.base_channels=16", "model.channel_mults=[1,2]"]) == 0

# %%
# Rebuild everything from the run directory alone (nothing is unpickled) and draw 64 samples with the exact
# bridge sampler on 100 steps of the Blackout paper's grid.
run = load_run(run_dir, device="cpu")
sampler = build_sampler("bridge", num_steps=100)
samples = generate_samples(run, sampler, num_samples=64, batch_size=64, seed=0, progress=False)
print(samples.shape, samples.dtype, int(samples.min()), int(samples.max()))

# %%
# The samples as an image grid (17 grey levels, 0 = black).
Path("figures").mkdir(exist_ok=True)
_ = save_image_grid(samples, run.dataset.num_states, Path("figures") / "digits_samples.png")
