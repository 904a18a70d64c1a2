"""The training objectives beside the ELBO: D3PM's hybrid loss and plain cross-entropy on x0."""

from __future__ import annotations

import pytest
import torch
from conftest import read_metrics, with_overrides

from discrete_diffusion.config import load_config
from discrete_diffusion.losses import LogitAlphaProposal, Objective, draw_noise, training_loss, x0_cross_entropy
from discrete_diffusion.oracle import OracleDenoiser
from discrete_diffusion.processes import MaskingProcess, Prediction, UniformProcess
from discrete_diffusion.schedules import build_schedule
from discrete_diffusion.train.trainer import Trainer


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


K, D = 3, 3
PROBS = torch.tensor([0.2, 0.0, 0.05, 0.1, 0.0, 0.0, 0.3, 0.02, 0.03] * 3)


@pytest.fixture(params=["masking", "uniform"])
def setup(request):
    process = MaskingProcess(K) if request.param == "masking" else UniformProcess(K)
    oracle = OracleDenoiser(process, PROBS, D)
    x0 = oracle.sample(512, _gen(0))
    return process, oracle, x0


def test_cross_entropy_is_minus_log_prob_of_x0(setup):
    process, oracle, x0 = setup
    noise = draw_noise(process, x0, build_schedule("log-linear"), LogitAlphaProposal(), _gen(1))
    prediction = oracle(noise.xt, noise.lam)
    ce = x0_cross_entropy(process, x0, noise.xt, prediction)
    log_probs = process.x0_log_probs(prediction, noise.xt)
    by_hand = torch.stack([-sum(log_probs[b, d, x0[b, d]] for d in range(D)) for b in range(x0.shape[0])])
    torch.testing.assert_close(ce, by_hand.to(ce.dtype))
    assert torch.all(ce >= 0)


def test_hybrid_is_elbo_plus_weighted_cross_entropy(setup):
    process, oracle, x0 = setup
    sched, prop = build_schedule("log-linear"), LogitAlphaProposal()
    elbo = training_loss(process, oracle, x0, sched, prop, generator=_gen(2))
    hybrid = training_loss(process, oracle, x0, sched, prop, generator=_gen(2), objective=Objective("hybrid", 0.25))
    ce = training_loss(process, oracle, x0, sched, prop, generator=_gen(2), objective=Objective("x0-ce"))
    torch.testing.assert_close(hybrid.loss, elbo.loss + 0.25 * ce.loss)
    zero = training_loss(process, oracle, x0, sched, prop, generator=_gen(2), objective=Objective("hybrid", 0.0))
    torch.testing.assert_close(zero.loss, elbo.loss)
    # every objective logs the same unweighted ELBO term for the same draws
    torch.testing.assert_close(ce.elbo_diffusion, elbo.elbo_diffusion)
    assert float(ce.loss) > 0


def test_exact_posterior_minimises_cross_entropy(setup):
    """Gibbs: the exact p(x0 | x_t) has lower expected CE than any other prediction, e.g. a tempered one."""
    process, oracle, x0 = setup
    noise = draw_noise(process, x0, build_schedule("log-linear"), LogitAlphaProposal(), _gen(3))
    exact = oracle(noise.xt, noise.lam)

    def tempered(power: float) -> Prediction:
        logits = exact.x0_log_probs.double() * power
        return Prediction(x0_log_probs=torch.log_softmax(logits, -1).float())

    ce_exact = x0_cross_entropy(process, x0, noise.xt, exact).mean()
    for power in (0.7, 1.4):
        assert x0_cross_entropy(process, x0, noise.xt, tempered(power)).mean() > ce_exact + 1e-3


def test_objective_validation():
    with pytest.raises(ValueError, match="valid objectives: elbo, hybrid, x0-ce"):
        Objective("vb")
    with pytest.raises(ValueError, match="ce_weight"):
        Objective("hybrid", -1.0)


def test_cross_entropy_objective_refuses_blackout_mean_output(tmp_path):
    config = load_config(None, with_overrides("train.objective=x0-ce", "process.parameterization=mean"))
    with pytest.raises(ValueError, match="x0 log-probabilities.*parameterization=logits"):
        Trainer(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("objective", ["hybrid", "x0-ce"])
def test_trainer_runs_each_objective(tmp_path, objective):
    config = load_config(None, with_overrides(f"train.objective={objective}", "train.ce_weight=0.1",
                                              "process.name=masking", "process.schedule=log-linear",
                                              "sample.sampler=bridge"))
    result = Trainer(config, tmp_path / "run", progress=False, log=lambda _m: None).fit()
    assert result.step == 6
    train = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert train and all(r["loss"] > 0 and r["train_elbo_diffusion_bpd"] > 0 for r in train)
