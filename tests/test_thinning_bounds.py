"""Thinning samplers refuse rates above their bound (issue 19 items 1-2).

Exact simulation draws candidate times from a rate bound and accepts with rate / bound. A rate above the bound must
raise, never be capped at 1 (that simulates another chain). Blackout's classifier-free guidance at gamma outside
{0, 1} has such rates (the guided mean m_c^gamma m_u^(1 - gamma) can exceed N - x_t) and is refused up front,
in Python and on the command line; at gamma 0 and 1 it is the plain model and runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import with_overrides

from discrete_diffusion.cli import main
from discrete_diffusion.guidance import ClassifierFreeDenoiser, GuidanceInterval
from discrete_diffusion.oracle import (
    ConditionalOracle,
    OracleDenoiser,
    all_configurations,
)
from discrete_diffusion.processes import Prediction, build_process
from discrete_diffusion.processes.uniform import UniformProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

D, C = 2, 3
SCHEDULE = build_schedule("log-linear")


def blackout_oracle(seed: int = 0) -> tuple[object, ConditionalOracle]:
    process = build_process("blackout", 3)
    joint = torch.rand(3 ** D, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 3 + 1e-3
    return process, ConditionalOracle(process, joint, D)


@pytest.mark.parametrize("gamma", [2.0, 4.0, 0.5, GuidanceInterval(2.0, -1.0, 1.0)])
def test_exact_simulation_refuses_blackout_guidance_off_0_and_1(gamma):
    """On main this ran and returned samples off the guided law (TV 0.0048 at gamma 2, 0.041 at gamma 4 against a
    floor of 0.0015): the acceptance was capped at 1."""
    process, oracle = blackout_oracle()
    with pytest.raises(ValueError, match="tau-leaping, euler or theta-trapezoidal") as info:
        build_sampler("exact").sample(process, ClassifierFreeDenoiser(oracle, 2, gamma), SCHEDULE, (8, D),
                                      torch.Generator().manual_seed(0))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("gamma", [0.0, 1.0, GuidanceInterval(1.0, -1.0, 1.0)])
def test_exact_simulation_runs_blackout_guidance_at_0_and_1(gamma):
    process, oracle = blackout_oracle()
    x = build_sampler("exact").sample(process, ClassifierFreeDenoiser(oracle, 2, gamma), SCHEDULE, (64, D),
                                      torch.Generator().manual_seed(0))
    assert x.shape == (64, D) and int(x.max()) <= 2


def test_guided_blackout_mean_exceeds_the_bound():
    """Why the refusal: at gamma 2 the guided mean passes N - x_t at some noisy state and level (the oracle)."""
    _, oracle = blackout_oracle()
    xt = all_configurations(3, D).repeat(5, 1)
    lam = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=torch.float64).repeat_interleave(9)
    mean = ClassifierFreeDenoiser(oracle, 2, 2.0)(xt, lam).mean_missing
    assert bool((mean > (2 - xt) + 1e-6).any())


class _OverBound:
    """A Blackout denoiser whose mean is 3 (N - x_t): three times the process's rate bound."""

    def __init__(self, process) -> None:
        self.process = process

    def __call__(self, xt: torch.Tensor, lam: torch.Tensor) -> Prediction:
        return Prediction(mean_missing=3.0 * (self.process.max_count - xt).double())


class _FastUniform(UniformProcess):
    """Uniform rates times 3: beyond the two-term bound of reverse_rate_bound_terms."""

    def reverse_rates(self, xt, prediction, lam):
        return 3.0 * super().reverse_rates(xt, prediction, lam)


def test_exact_simulation_raises_when_a_rate_exceeds_its_bound():
    """On main both samplers accepted with min(1, rate / bound) and returned samples."""
    process = build_process("blackout", 3)
    with pytest.raises(ValueError, match="exceeded the thinning bound"):
        build_sampler("exact").sample(process, _OverBound(process), SCHEDULE, (16, D), torch.Generator().manual_seed(0))
    uniform = _FastUniform(3)
    table = torch.rand(9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(ValueError, match="exceeded the thinning bound"):
        build_sampler("exact-thinning").sample(uniform, OracleDenoiser(uniform, table, D, torch.float64), SCHEDULE,
                                               (16, D), torch.Generator().manual_seed(0))


def test_float32_predictions_within_rounding_pass():
    """A float32 prediction whose mean equals N - x_t (sums of rounded probabilities) is not refused."""
    process = build_process("blackout", 3)

    def full(xt, lam):
        return Prediction(mean_missing=(process.max_count - xt).float() * (1 + 2e-7))

    x = build_sampler("exact").sample(process, full, SCHEDULE, (32, D), torch.Generator().manual_seed(0))
    assert x.shape == (32, D)


@pytest.fixture(scope="module")
def blackout_cond_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bcond") / "run"
    assert main(["train", "--out", str(run), "--no-progress",
                 *with_overrides("process.name=blackout", "model.num_classes=null", "train.cond_dropout=0.25")]) == 0
    return run


def test_cli_exact_blackout_guidance_is_one_line_error(blackout_cond_run, ddiff, tmp_path):
    """`ddiff sample RUN --class 1 --guidance 2 --sampler exact` on a Blackout run: exit 2, one line naming the
    samplers that work (on main it wrote samples); tau-leaping still samples."""
    res = ddiff("sample", blackout_cond_run, "--class", "1", "--guidance", "2", "--sampler", "exact", "--num", "2",
                "--out", tmp_path, "--no-progress")
    assert res.rc == 2, res.err
    assert len(res.err.strip().splitlines()) == 1 and "tau-leaping, euler or theta-trapezoidal" in res.err
    assert not list(tmp_path.glob("exact*.npy"))
    res = ddiff("sample", blackout_cond_run, "--class", "1", "--guidance", "2", "--sampler", "tau-leaping",
                "--steps", "3", "--num", "2", "--out", tmp_path, "--no-progress")
    assert res.rc == 0, res.err
