"""Shared fixtures for the CLI / resume / end-to-end tests: tiny configs and one trained run per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from discrete_diffusion.cli import main

# The models here are tiny: on a shared CPU, intra-op threading costs far more than it gains
# (measured: a 16-channel U-Net forward on 4 images takes ~0.7 s with 2 busy threads, ~2 ms with 1).
torch.set_num_threads(1)

#: A tiny U-Net and a handful of steps on the bundled 8x8 digits (17 levels): seconds on a CPU.
TINY = [
    "train.steps=6", "train.batch_size=8", "train.eval_every=3", "train.checkpoint_every=3",
    "train.sample_every=6", "train.warmup_steps=2", "train.eval_t_samples=1", "train.device=cpu",
    "model.base_channels=16", "model.channel_mults=[1]", "sample.steps=5", "evaluate.t_samples=1",
]


def with_overrides(*extra: str, base: list[str] | None = None) -> list[str]:
    """``base`` (default TINY) with the keys of ``extra`` replaced or added."""
    keys = {item.split("=", 1)[0] for item in extra}
    return [o for o in (TINY if base is None else base) if o.split("=", 1)[0] not in keys] + list(extra)


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class CliResult:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err

    def __repr__(self) -> str:
        return f"CliResult(rc={self.rc}, out={self.out[-500:]!r}, err={self.err[-1000:]!r})"


@pytest.fixture
def ddiff(capsys):
    """Run ``ddiff ARGS`` in-process; returns rc, stdout and stderr (argparse exits become rc too)."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            rc = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(rc, out, err)

    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """`ddiff train --out RUN TINY...`, trained once per session. Tests must not write into it."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    rc = main(["train", "--out", str(run_dir), "--no-progress", *TINY])
    assert rc == 0
    return run_dir
