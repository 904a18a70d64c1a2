"""Backbones that must fit a small correlated table (issue 19 items 13 and 14), and the exact law of a reverse
chain by enumeration that measures the fit (``evaluate.reverse_law``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from discrete_diffusion.builders import build_denoiser, build_proposal, build_schedule_from
from discrete_diffusion.config import load_config
from discrete_diffusion.evaluate.reverse_law import reverse_chain_law
from discrete_diffusion.losses import training_loss
from discrete_diffusion.oracle import OracleDenoiser, all_configurations, total_variation
from discrete_diffusion.processes import build_process
from discrete_diffusion.schedules import build_schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from table_fit import correlated_table, product_of_marginals, site_marginals  # noqa: E402

SITES, STATES = 4, 3


@pytest.mark.parametrize("name", ["masking", "uniform"])
def test_reverse_chain_law_of_the_exact_denoiser_is_the_table(name):
    """Oracle: the reverse chain of the exact denoiser from the prior has the table's law (DESIGN.md section 6)."""
    process = build_process(name, STATES)
    probs = correlated_table(2, 2.0)
    law = reverse_chain_law(process, OracleDenoiser(process, probs, SITES), build_schedule("log-linear"), SITES,
                            steps=60)
    assert abs(float(law.sum()) - 1.0) < 1e-9
    assert total_variation(law, probs) < 1e-3
    assert total_variation(product_of_marginals(probs), probs) > 0.15     # the table is far from independent


def _train(config_overrides: list[str], steps: int, seed: int = 0):
    """A few hundred Adam steps of the ELBO on draws from the table; returns (config, process, denoiser)."""
    torch.manual_seed(seed)
    config = load_config(None, ["process.name=masking", "model.dropout=0.0", *config_overrides])
    process = build_process("masking", STATES)
    denoiser = build_denoiser(config, process, (SITES,))
    schedule, proposal = build_schedule_from(config), build_proposal(config)
    probs = correlated_table(2, 2.0)
    configs = all_configurations(STATES, SITES)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = configs[torch.multinomial(probs, 128, replacement=True, generator=gen)]
        loss = training_loss(process, denoiser, x0, schedule, proposal, generator=gen).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return config, process, denoiser.eval()


def _all_masked_predictions(process, denoiser) -> torch.Tensor:
    xt = torch.full((1, SITES), process.mask_index)
    with torch.no_grad():
        return process.x0_log_probs(denoiser(xt, torch.zeros(1)), xt)[0].exp().double()   # (D, K)


TRANSFORMER = ["model.backbone=transformer", "model.dim=32", "model.depth=1", "model.heads=2"]


def test_rotary_only_transformer_predicts_one_marginal_at_every_masked_site():
    """The old architecture (rotary only): identical predictions at all-masked sites, whatever it learns."""
    _, process, denoiser = _train([*TRANSFORMER, "model.position_embedding=none"], 60)
    pred = _all_masked_predictions(process, denoiser)
    assert float((pred - pred[0]).abs().max()) < 1e-5


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_absolute_positions_give_each_masked_site_its_marginal(kind):
    """With absolute positions the all-masked prediction at site d approaches the table's marginal of d (which
    differ by up to 0.6); rotary only gives the same vector everywhere (0.29 off at the worst site)."""
    _, process, denoiser = _train([*TRANSFORMER, f"model.position_embedding={kind}"], 250)
    pred = _all_masked_predictions(process, denoiser)
    marginals = site_marginals(correlated_table(2, 2.0))
    average = marginals.mean(0, keepdim=True).expand_as(marginals)
    assert float((average - marginals).abs().max()) > 0.25                # what rotary-only predicts is far off
    assert float((pred - marginals).abs().max()) < 0.1
