"""Classifier (predictor) guidance on the reverse rates (issue 12 item 3; docs/guidance.md "Classifier guidance"),
checked against the exact noisy classifier p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0) of a joint table pi(x, c)
and the exact class-conditional oracle (DESIGN.md sections 3 and 6)."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion.guidance import ClassifierGuidance, classifier_guided_sample
from discrete_diffusion.oracle import (
    ConditionalOracle,
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    empirical_distribution,
    total_variation,
)
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.schedules import build_schedule

D, C = 2, 3
PROCESSES = ["masking", "uniform", "blackout", "matrix"]


def make_process(name: str):
    if name == "matrix":
        return build_process("matrix", 3, rates="birth-death")
    return build_process(name, 3)


def joint_table(process, seed: int = 0) -> torch.Tensor:
    """A random joint pi(x, c) with full support, classes clearly separated."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(process.num_states ** D, C, generator=g, dtype=torch.float64) ** 3 + 1e-3


def every_state_and_level(process):
    xt = all_configurations(process.num_values, D)
    lams = torch.tensor([-3.0, -0.7, 0.0, 1.3, 4.0], dtype=torch.float64)
    return xt.repeat(lams.shape[0], 1), lams.repeat_interleave(xt.shape[0])


def schedule_for(name: str):
    return build_schedule("blackout" if name == "blackout" else "log-linear")


@pytest.mark.parametrize("name", PROCESSES)
def test_guided_rates_at_gamma_1_equal_the_exact_conditional_model(name):
    """For every x_t, noise level and one-site move y: R(x -> y) p_t(c | y) / p_t(c | x) with the exact noisy
    classifier equals the exact conditional model's rate to 1e-10; gamma = 0 gives the unguided rates exactly."""
    process = make_process(name)
    joint = joint_table(process)
    oracle = ConditionalOracle(process, joint, D)
    marginal = OracleDenoiser(process, joint.sum(1), D, torch.float64)
    xt, lam = every_state_and_level(process)
    unguided = process.reverse_rates(xt, marginal(xt, lam), lam)
    for c in range(C):
        want = process.reverse_rates(xt, OracleDenoiser(process, joint[:, c], D, torch.float64)(xt, lam), lam)
        for gamma, target in ((1.0, want), (0.0, unguided)):
            guidance = ClassifierGuidance(process, oracle.noisy_classifier(), c, gamma)
            got = guidance.process.reverse_rates(xt, guidance.denoiser(marginal)(xt, lam), lam)
            assert (got - target).abs().max() <= 1e-10 * max(1.0, float(target.abs().max()))
        assert (want - unguided).abs().max() > 1e-3          # the classes do differ
