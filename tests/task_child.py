"""The Trainer of one non-diffusion task on a tiny run, for tests/test_tasks.py (not a test module); run as a script
(``task_child.py KIND RUN_DIR OUT [overrides]``, e.g. under torchrun) it trains it into OUT.

KIND: ``exact`` (an AR transformer by exact NLL on the run's data), ``planner`` (the DDPD planner's BCE),
``classifier`` (the noisy classifier's cross-entropy); the latter two on the run's process and schedule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from discrete_diffusion.baselines import ARTransformer
from discrete_diffusion.baselines.exact_task import ExactLikelihoodTask
from discrete_diffusion.config import load_config
from discrete_diffusion.guidance.classifier_train import ClassifierTask
from discrete_diffusion.pipeline import load_run
from discrete_diffusion.planner import PlannerTask
from discrete_diffusion.train.trainer import Trainer

KINDS = ("exact", "planner", "classifier")
#: 6 steps of 16 examples, validation and checkpoints every 3 (warmup 2, then cosine: a resume that lost the
#: scheduler state would change the learning rate).
TASK_TRAIN = ["train.steps=6", "train.eval_every=3", "train.checkpoint_every=3", "train.batch_size=16",
              "train.warmup_steps=2", "train.sample_every=100", "train.device=cpu", "train.keep_last=5"]


def make_task(kind: str, run_dir: Path):
    run = load_run(run_dir, "best", "cpu")
    if kind == "exact":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = ARTransformer(run.dataset.num_states, run.dataset.num_sites, dim=16, depth=1, heads=2,
                                  dropout=0.0)
        return ExactLikelihoodTask(model, run.dataset.train, run.dataset.val, "digits")
    if kind == "planner":
        return PlannerTask(run.process, run.schedule, run.dataset)
    if kind == "classifier":
        return ClassifierTask(run.process, run.schedule, run.dataset, 10)
    raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")


def make_trainer(kind: str, run_dir: Path, out: Path, *overrides: str) -> Trainer:
    config = load_config(Path(run_dir) / "config.yaml", [*TASK_TRAIN, *overrides])
    return Trainer(config, out, progress=False, log=lambda _m: None, task=make_task(kind, Path(run_dir)))


if __name__ == "__main__":
    from discrete_diffusion.distributed import teardown

    torch.set_num_threads(1)   # the arithmetic of the in-process reference run (tests/conftest.py)
    kind_, run_, out_, *extra = sys.argv[1:]
    try:
        make_trainer(kind_, Path(run_), Path(out_), *extra).fit()
    finally:
        teardown()
