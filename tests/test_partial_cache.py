"""The partial-refresh cache of threshold / factor decoding (nn/partial_refresh.py, samplers/partial_cache.py):
option errors, the exact cases (a full pass is the network bit for bit; refresh_ratio=1 and refresh_every=1 are
uncached decoding bit for bit), the selection (the positions whose input moved most), a measured-deviation bound,
determinism, batch invariance and cost accounting."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_approx_cache import BLOCK, SCHEDULE, K, S, _gen, _network

from discrete_diffusion.cli import main
from discrete_diffusion.denoiser import noise_level_input
from discrete_diffusion.nn.partial_refresh import full_pass, partial_pass, relative_cost
from discrete_diffusion.nn.transformer import SequenceTransformer
from discrete_diffusion.oracle import OracleDenoiser, markov_chain_table
from discrete_diffusion.processes import MaskingProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.samplers.partial_cache import PartialRefreshCache


def _sample(proc, net, batch: int = 8, seed: int = 1, name: str = "threshold", block_size: int = 0, **options):
    rule = {"tau": 0.9} if name == "threshold" else {"factor": 1.0}
    sampler = build_sampler(name, block_size=block_size, **rule, **options)
    return sampler.sample(proc, net, SCHEDULE, (batch, S), generator=_gen(seed)), sampler


def test_option_errors_config_and_tag():
    with pytest.raises(ValueError, match=r"refresh_ratio needs approx_cache=partial\|vverify"):
        build_sampler("threshold", block_size=4, approx_cache="prefix", refresh_ratio=0.5)
    with pytest.raises(ValueError, match=r"refresh_ratio needs approx_cache=partial\|vverify"):
        build_sampler("factor", refresh_ratio=0.5)
    for bad in (0, 1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match=r"refresh_ratio must be a number in \(0, 1\]"):
            build_sampler("threshold", approx_cache="partial", refresh_ratio=bad)
    with pytest.raises(ValueError, match="refresh_every has no effect with refresh_ratio=1"):
        build_sampler("threshold", approx_cache="vverify", refresh_ratio=1, refresh_every=2)
    with pytest.raises(ValueError, match="refresh_ratio has no effect with refresh_every=1"):
        build_sampler("threshold", approx_cache="partial", refresh_ratio=0.5, refresh_every=1)
    sampler = build_sampler("threshold", tau=0.8, approx_cache="partial")       # no block_size needed
    assert sampler.config() == {"name": "threshold", "confidence": "probability", "approx_cache": "partial",
                                "refresh_every": 0, "refresh_ratio": 0.25, "tau": 0.8}
    assert sampler.file_tag == "-tau0.8-partialcache-r0.25"
    tagged = build_sampler("factor", factor=2, block_size=8, approx_cache="partial", refresh_every=3,
                           refresh_ratio=0.5)
    assert tagged.file_tag == "-f2-block8-partialcache3-r0.5"
    assert "refresh_ratio" not in build_sampler("threshold", block_size=4, approx_cache="dual").config()


@pytest.mark.parametrize("attend", ["all", "selected"])
@pytest.mark.parametrize("position_embedding", ["sinusoidal", "learned", "none"])
@pytest.mark.parametrize("time_conditioning", [True, False])
def test_full_pass_is_the_network_and_a_full_budget_matches_it(attend, position_embedding, time_conditioning):
    proc = MaskingProcess(K)
    torch.manual_seed(0)
    backbone = SequenceTransformer(proc.feature_channels, proc.output_channels("logits"), seq_len=S, dim=32, depth=2,
                                   heads=2, dropout=0.0, position_embedding=position_embedding,
                                   time_conditioning=time_conditioning).eval()
    with torch.no_grad():
        for param in backbone.parameters():
            param.copy_(torch.randn(param.shape) * 0.15)
    x = torch.randint(0, proc.mask_index + 1, (3, S))
    lam = torch.tensor([-1.0, 0.0, 0.5])
    noise = noise_level_input(lam)
    with torch.no_grad():
        reference = backbone(x, noise)
        out, features = full_pass(backbone, x, noise)
        assert torch.equal(out, reference)
        same, _ = partial_pass(backbone, x, noise, features, 4, attend)   # nothing moved: the same output
        torch.testing.assert_close(same, reference, rtol=0, atol=1e-6)
        x2 = x.clone()
        x2[:, 5] = (x2[:, 5] + 1) % proc.mask_index
        moved = noise_level_input(lam + 0.3)
        everything, _ = partial_pass(backbone, x2, moved, features, S, attend)    # every position refreshed
        torch.testing.assert_close(everything, backbone(x2, moved), rtol=0, atol=1e-5)
        approx, _ = partial_pass(backbone, x2, moved, features, 4, attend)
        assert (approx - backbone(x2, moved)).abs().max() > 1e-3       # an approximation, not secretly exact


def test_the_refreshed_positions_are_those_whose_input_moved_most():
    """Time-free network: change the tokens at two positions; with a budget of 2 the first layer refreshes exactly
    those two (their values moved; every other position's first-layer input is unchanged)."""
    proc, net = _network(depth=2, time_conditioning=False)
    backbone = net.backbone
    x = torch.randint(0, proc.mask_index, (4, S))
    with torch.no_grad():
        _, features = full_pass(backbone, x, None)
        x2 = x.clone()
        x2[:, 3] = proc.mask_index
        x2[:, 11] = proc.mask_index
        _, updated = partial_pass(backbone, x2, None, features, 2)
    changed = (updated[0].values != features[0].values).any(-1)       # (B, S): positions refreshed in layer 0
    expected = torch.zeros(4, S, dtype=torch.bool)
    expected[:, [3, 11]] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("name", ["threshold", "factor"])
@pytest.mark.parametrize("block_size", [0, BLOCK])
def test_full_ratio_and_refresh_every_call_equal_uncached_decoding(name, block_size):
    proc, net = _network()
    exact, base = _sample(proc, net, name=name, block_size=block_size)
    for variant in ("partial", "vverify"):
        for options in ({"refresh_ratio": 1.0}, {"refresh_every": 1}):
            cached, sampler = _sample(proc, net, name=name, block_size=block_size, approx_cache=variant, **options)
            assert torch.equal(cached, exact) and sampler.network_calls == base.network_calls
            assert sampler.cache_state.cached_rows == 0
            assert sampler.positions_evaluated == base.positions_evaluated == base.network_evaluations * S
            assert sampler.cache_state.features is None              # released when sampling ends


def test_vverify_leaves_unchanged_inputs_stale_and_partial_updates_them():
    """Time-free network, one committed token, a budget of one position: dLLM-Cache's rule (vverify) refreshes only
    that position, so every other output is the previous one bit for bit (stale: its context changed); the library's
    rule (partial) lets every position attend over the new values, and lands closer to the network."""
    proc, net = _network(depth=2, time_conditioning=False)
    backbone = net.backbone
    x = torch.randint(0, proc.mask_index, (4, S))
    x[:, 4:] = proc.mask_index
    with torch.no_grad():
        before, features = full_pass(backbone, x, None)
        x2 = x.clone()
        x2[:, 4] = 1
        after = backbone(x2, torch.zeros(4))     # time-free: the noise level is ignored
        stale, _ = partial_pass(backbone, x2, None, features, 1, attend="selected")
        fresh, _ = partial_pass(backbone, x2, None, features, 1, attend="all")
    others = torch.arange(S) != 4
    assert torch.equal(stale[:, :, others], before[:, :, others])
    assert (fresh[:, :, others] - before[:, :, others]).abs().max() > 1e-3
    error = {name: float((out - after)[:, :, others].abs().max()) for name, out in (("vverify", stale),
                                                                                   ("partial", fresh))}
    assert error["partial"] < 0.5 * error["vverify"]


@pytest.mark.parametrize("variant", ["partial", "vverify"])
@pytest.mark.parametrize("block_size", [0, BLOCK])
def test_partial_calls_deviate_within_the_measured_bound_and_cost_less(variant, block_size):
    """Time-conditioned depth-2 random network, 16 sites, one site per call: partial calls are approximate
    (deviation > 0), bounded near the measured values, and the cost is the linear-layer work of the module
    docstring. Measured max |logit difference| / max site TV at rho 0.25 and 0.75: partial 1.06 / 0.20, 0.80 / 0.16
    (blocks of 4: 0.74 / 0.17, 0.57 / 0.09); vverify 1.20 / 0.23, 0.96 / 0.25 (blocks: 0.79 / 0.17, 0.66 / 0.11)."""
    proc, net = _network()
    _, base = _sample(proc, net, block_size=block_size)
    for ratio in (0.25, 0.75):
        sampler = build_sampler("threshold", tau=0.9, block_size=block_size, approx_cache=variant,
                                refresh_ratio=ratio)
        sampler.track_deviation = True
        out = sampler.sample(proc, net, SCHEDULE, (8, S), generator=_gen(1))
        cache = sampler.cache_state
        assert int((out == proc.mask_index).sum()) == 0
        assert len(cache.deviations) >= 10 and 1e-4 < max(cache.deviations) < 2.0
        assert 0 < max(cache.tv_deviations) < 0.5
        dim, hidden, depth, head = 32, 128, 2, 32 * K          # head: dim x C_out (K logits for masking)
        full, everywhere = 4 * dim * dim + 2 * dim * hidden, dim * dim * (2 if variant == "partial" else 1)
        count = math.ceil(ratio * S)
        partial = depth * (S * everywhere + count * (full - everywhere)) + S * head
        assert cache.partial_cost == pytest.approx(partial / (depth * full + head))
        assert cache.partial_cost == pytest.approx(S * relative_cost(net.backbone, count, cache.attend))
        assert sampler.positions_evaluated == pytest.approx(cache.refresh_rows * S + cache.cached_rows
                                                            * cache.partial_cost)
        assert sampler.positions_evaluated < base.positions_evaluated


@pytest.mark.parametrize("variant", ["partial", "vverify"])
@pytest.mark.parametrize("block_size", [0, BLOCK])
def test_determinism_and_batch_invariance(variant, block_size):
    proc, net = _network()
    options = {"approx_cache": variant, "refresh_ratio": 0.25, "refresh_every": 3, "block_size": block_size}
    a, _ = _sample(proc, net, batch=8, seed=3, **options)
    b, _ = _sample(proc, net, batch=8, seed=3, **options)
    c, _ = _sample(proc, net, batch=8, seed=4, **options)
    small, _ = _sample(proc, net, batch=3, seed=3, **options)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:3], small)


def test_refused_for_networks_it_cannot_run():
    proc = MaskingProcess(2)
    oracle = OracleDenoiser(proc, markov_chain_table(2, 3), 3)
    with pytest.raises(ValueError, match="approx_cache needs a network denoiser over a sequence transformer"):
        PartialRefreshCache(oracle, "partial", 0.5, 0, 0, 2)
    _, net = _network()
    with pytest.raises(ValueError, match="unknown partial cache 'v'; valid: partial, vverify"):
        PartialRefreshCache(net, "v", 0.5, 0, 0, 2)
    with pytest.raises(ValueError, match=r"refresh_ratio=0.97 recomputes all 16 positions .* at most 0.9375"):
        PartialRefreshCache(net, "partial", 0.97, 0, 0, 2)      # ceil(0.97 x 16) = 16: no effect
    assert PartialRefreshCache(net, "partial", 0.9375, 0, 0, 2).count == 15


def test_cli_full_ratio_is_uncached_and_the_cost_is_recorded(tmp_path):
    """``ddiff sample RUN --sampler threshold -o approx_cache=partial``: on a masking transformer run over 8x8 digits
    (any site shape: positions flattened), refresh_ratio=1 writes the uncached samples; the JSON records the cost."""
    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "runs_v0_1" / "masking_transformer", run)
    common = ["sample", str(run), "--sampler", "threshold", "--num", "4", "--seed", "2", "--device", "cpu",
              "--no-progress", "--out", str(tmp_path / "out")]
    assert main(common) == 0
    assert main(common + ["-o", "approx_cache=partial", "-o", "refresh_ratio=1"]) == 0
    assert main(common + ["-o", "approx_cache=partial"]) == 0
    out = tmp_path / "out"
    uncached = np.load(out / "threshold-tau0.9_seed2.npy")
    np.testing.assert_array_equal(np.load(out / "threshold-tau0.9-partialcache-r1_seed2.npy"), uncached)
    record = json.loads((out / "threshold-tau0.9-partialcache-r0.25_seed2.json").read_text())
    assert record["sampler"]["approx_cache"] == "partial" and record["sampler"]["refresh_ratio"] == 0.25
    assert 0 < record["positions_evaluated_last_batch"] < 0.5 * 64 * 4 * record["nfe_last_batch"]   # < uncached
