"""A ``ddiff train`` run for tests/test_sharding.py (not a test module), run under torchrun or alone:

    sharding_child.py OUT [--resume] [--kill-at STEP] [--shards JSON] [overrides...]

It trains the config of the overrides into OUT with the Trainer. ``--shards JSON`` writes, per rank, each
parameter's global and local (this rank's shard) shape to ``JSON.rank<R>`` before training; ``--kill-at STEP``
makes rank 0 SIGKILL itself at the start of step STEP + 1 (torchrun then stops the other rank), like kill -9.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

from discrete_diffusion.config import load_config
from discrete_diffusion.distributed import teardown
from discrete_diffusion.train.sharding import is_sharded
from discrete_diffusion.train.trainer import Trainer


def main(argv: list[str]) -> None:
    out, rest = Path(argv[0]), argv[1:]
    resume, kill_at, shards, overrides = False, None, None, []
    while rest:
        arg = rest.pop(0)
        if arg == "--resume":
            resume = True
        elif arg == "--kill-at":
            kill_at = int(rest.pop(0))
        elif arg == "--shards":
            shards = rest.pop(0)
        else:
            overrides.append(arg)
    trainer = Trainer(load_config(None, overrides), out, progress=False, log=lambda _m: None)
    if shards is not None:
        record = {name: {"global": list(p.shape), "local": list(p.to_local().shape if is_sharded(p) else p.shape),
                         "sharded": is_sharded(p)} for name, p in trainer.module.named_parameters()}
        Path(f"{shards}.rank{trainer.ctx.rank}").write_text(json.dumps(record))
    if kill_at is not None:
        real_step = Trainer.train_step

        def step(self):
            if self.step == kill_at and self.ctx.is_main:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_step(self)

        Trainer.train_step = step
    trainer.fit(resume=resume)


if __name__ == "__main__":
    torch.set_num_threads(1)   # the arithmetic of the in-process reference run (tests/conftest.py)
    try:
        main(sys.argv[1:])
    finally:
        teardown()
