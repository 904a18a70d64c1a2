"""Sampler size options are bounded above (security review: `ddiff sample RUN -o key=value`).

Every integer size or count option of a sampler, and every float that scales its loop, has an upper (or, for a
width, lower) bound checked at construction: a hostile or mistyped value is one line naming the option, the value
and the range, instead of a multi-terabyte time grid or a loop that runs for hours. Before the bounds,
``-o num_steps=1000000000000`` was a TypeError traceback (two step counts), ``num_steps=inf`` an OverflowError and
``num_steps=1e12`` a 16 TB ``linspace``; ``block_size`` / ``top_k`` past int64 overflowed inside torch;
``lam_stop=1e12`` ran exact-thinning for ~1e12 S events and ``window=1e-12`` exact-window for 1e13 windows.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
import torch

from discrete_diffusion.config import MAX_SAMPLER_STEPS
from discrete_diffusion.oracle import OracleDenoiser, markov_chain_table
from discrete_diffusion.processes import MaskingProcess
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.samplers.base import MAX_OPTION_SIZE
from discrete_diffusion.samplers.exact import MAX_LAM_STOP
from discrete_diffusion.samplers.exact_window import MIN_WINDOW
from discrete_diffusion.schedules import build_schedule

RUN = Path(__file__).parent / "data" / "runs_v0_1" / "masking_transformer"
GRIDLESS = {"threshold", "factor"}           # no time grid; num_steps is an internal constant there
STEPS = f"num_steps must be an integer in 1..{MAX_SAMPLER_STEPS}"
TOP_K = rf"top_k must be an integer in 0\.\.{MAX_OPTION_SIZE} \(0 = off\)"
LAM_STOP = f"lam_stop must be a finite number <= {MAX_LAM_STOP:g}"
WINDOW = f"window must be a number >= {MIN_WINDOW:g}"
DUAL = {"approx_cache": "dual", "block_size": 4}


def _cases():
    """(sampler, option, refused values, the extreme accepted value, other options, message regex)."""
    for name in sorted(SAMPLERS):
        yield name, "num_steps", (MAX_SAMPLER_STEPS + 1, 10**12, 1e12, math.inf, math.nan, 10**400), \
            MAX_SAMPLER_STEPS, {}, STEPS
        yield name, "top_k", (MAX_OPTION_SIZE + 1, 10**30, 1e30), MAX_OPTION_SIZE, {}, TOP_K
    for name in sorted(GRIDLESS):
        yield name, "block_size", (MAX_OPTION_SIZE + 1, 10**30), MAX_OPTION_SIZE, {}, \
            rf"block_size must be an integer in 0\.\.{MAX_OPTION_SIZE} \(0 = the whole sequence\)"
        for cache in (DUAL, {"approx_cache": "partial"}):
            yield name, "refresh_every", (MAX_OPTION_SIZE + 1, 10**30), MAX_OPTION_SIZE, cache, \
                rf"refresh_every must be an integer in 0\.\.{MAX_OPTION_SIZE} \(0 = at each block only\)"
    for name in ("exact", "exact-thinning", "exact-window"):
        yield name, "lam_stop", (MAX_LAM_STOP + 1e-9, 1e12, math.inf, math.nan, -math.inf), MAX_LAM_STOP, {}, \
            LAM_STOP
    yield "exact-window", "window", (MIN_WINDOW * (1 - 1e-9), 1e-12, 0.0, -1.0, math.nan), MIN_WINDOW, {}, WINDOW


CASES = list(_cases())


@pytest.mark.parametrize("name, option, refused, extreme, others, message", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'-'.join(c[4]) or 'plain'}" for c in CASES])
def test_size_option_is_bounded(name, option, refused, extreme, others, message):
    for value in refused:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=message) as err:
            build_sampler(name, **others, **{option: value})
        assert time.perf_counter() - start < 1.0, (option, value)
        text = str(err.value)
        assert "\n" not in text and f"sampler {name!r}" in text and option in text, text
    sampler = build_sampler(name, **others, **{option: extreme})      # the extreme allowed value is accepted
    assert getattr(sampler, option) == extreme


def test_values_past_the_data_size_are_harmless():
    """top_k and block_size beyond the data's size (accepted up to 1e9) sample as their "off" value 0, draw for
    draw; refresh_every past the number of calls as 0 (refresh at each block only)."""
    proc, schedule = MaskingProcess(3), build_schedule("log-linear")
    oracle = OracleDenoiser(proc, markov_chain_table(3, 4), 4)

    def draw(name: str, **options) -> torch.Tensor:
        return build_sampler(name, **options).sample(proc, oracle, schedule, (16, 4),
                                                     generator=torch.Generator().manual_seed(0))

    assert torch.equal(draw("bridge", num_steps=4, top_k=MAX_OPTION_SIZE), draw("bridge", num_steps=4))
    assert torch.equal(draw("threshold", tau=0.5, block_size=MAX_OPTION_SIZE), draw("threshold", tau=0.5))


def test_step_count_as_an_option_is_the_step_count():
    """-o num_steps=N is --steps N (it was a TypeError traceback); both, different, is an error."""
    from discrete_diffusion.builders import build_sampler_from
    from discrete_diffusion.config import load_config

    config = load_config(None, ["sample.sampler=bridge", "sample.steps=7"])
    assert build_sampler_from(config, None, None, {"num_steps": 3}).num_steps == 3
    assert build_sampler_from(config, None, 3, {"num_steps": 3}).num_steps == 3
    with pytest.raises(ValueError, match="two step counts: 4 .--steps. and the sampler option num_steps=3"):
        build_sampler_from(config, None, 4, {"num_steps": 3})
    with pytest.raises(ValueError, match=r"1000000000000 sampler steps requested \(the sampler option num_steps\)"):
        build_sampler_from(config, None, None, {"num_steps": 10**12})
    with pytest.raises(ValueError, match="has no time grid"):
        build_sampler_from(config, "threshold", None, {"num_steps": 3})


@pytest.fixture(scope="module")
def old_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bounds") / "run"
    shutil.copytree(RUN, run)
    return run


@pytest.mark.parametrize("args, words", [
    (("sample", "--sampler", "bridge", "-o", "num_steps=1000000000000"),
     ("1000000000000 sampler steps requested (the sampler option num_steps)", "at most 1000000")),
    (("sample", "--sampler", "remdm", "-o", "num_steps=1e12"), (STEPS, "got 1000000000000")),
    (("sample", "--sampler", "bridge", "-o", "num_steps=.inf"), (STEPS, "got inf")),
    (("sample", "--sampler", "bridge", "--top-k", "1000000000000"), ("top_k must be an integer in 0..1000000000",)),
    (("sample", "--sampler", "threshold", "-o", "block_size=1000000000000"),
     ("block_size must be an integer in 0..1000000000",)),
    (("sample", "--sampler", "factor", "-o", "approx_cache=dual", "-o", "block_size=4", "-o",
      "refresh_every=100000000000"), ("refresh_every must be an integer in 0..1000000000",)),
    (("sample", "--sampler", "exact", "-o", "lam_stop=1e12"), (LAM_STOP,)),
    (("sample", "--sampler", "bridge", "--steps", "4", "-o", "num_steps=5"), ("two step counts",)),
    (("evaluate", "--sampler", "bridge", "--num-samples", "2", "-o", "num_steps=1000000000000"),
     ("1000000000000 sampler steps requested", "at most 1000000")),
])
def test_cli_refuses_huge_sampler_options_in_one_line(old_run, ddiff, tmp_path, args, words):
    command, *rest = args
    extra = ("--out", tmp_path / "out") if command == "sample" else ()
    start = time.perf_counter()
    r = ddiff(command, old_run, *rest, *extra, "--num-samples" if command == "sample" else "--seed",
              "2" if command == "sample" else "0", "--no-progress", "--device", "cpu")
    assert time.perf_counter() - start < 30.0
    assert r.rc == 2 and r.err.count("\n") == 1 and "Traceback" not in r.err, r
    assert r.err.startswith(f"ddiff {command}: error: "), r
    for word in words:
        assert word in r.err, (word, r)
    assert not (tmp_path / "out").exists()


def test_cli_accepts_the_step_count_as_an_option(old_run, ddiff, tmp_path):
    r = ddiff("sample", old_run, "--sampler", "bridge", "-o", "num_steps=3", "--num-samples", "2", "--out",
              tmp_path, "--no-progress", "--device", "cpu")
    assert r.rc == 0, r
    assert (tmp_path / "bridge_3steps_seed0.npy").is_file()
