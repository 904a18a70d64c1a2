"""The approximate block-wise KV caches of threshold / factor block decoding (samplers/approx_cache.py): option
errors, the exact cases (refresh calls, refresh_every=1, a time-free depth-1 network up to rounding), determinism,
batch invariance, cost accounting and a measured-deviation bound on a random float32 transformer."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.nn.transformer import SequenceTransformer
from discrete_diffusion.oracle import OracleDenoiser, markov_chain_table
from discrete_diffusion.processes import MaskingProcess
from discrete_diffusion.samplers import build_sampler
from discrete_diffusion.samplers.approx_cache import ApproxBlockCache
from discrete_diffusion.schedules import build_schedule

S, K, BLOCK = 16, 5, 4
SCHEDULE = build_schedule("log-linear")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _network(depth: int = 2, time_conditioning: bool = True, seed: int = 0) -> tuple[MaskingProcess, NetworkDenoiser]:
    proc = MaskingProcess(K)
    torch.manual_seed(seed)
    net = SequenceTransformer(proc.feature_channels, proc.output_channels("logits"), seq_len=S, dim=32, depth=depth,
                              heads=2, dropout=0.0, time_conditioning=time_conditioning)
    with torch.no_grad():
        for param in net.parameters():     # random weights (adaLN-zero starts at zero), not too confident
            param.copy_(torch.randn(param.shape) * 0.15)
    return proc, NetworkDenoiser(net, proc, "logits").eval()


def _sample(proc, net, batch: int = 8, seed: int = 1, name: str = "threshold", **options):
    rule = {"tau": 0.9} if name == "threshold" else {"factor": 1.0}
    sampler = build_sampler(name, block_size=BLOCK, **rule, **options)
    return sampler.sample(proc, net, SCHEDULE, (batch, S), generator=_gen(seed)), sampler


def test_option_errors():
    with pytest.raises(ValueError, match="unknown approx_cache 'suffix'; valid: prefix, dual, partial"):
        build_sampler("threshold", block_size=4, approx_cache="suffix")
    with pytest.raises(ValueError, match="approx_cache=prefix needs block_size > 0"):
        build_sampler("factor", approx_cache="prefix")
    with pytest.raises(ValueError, match="refresh_every needs approx_cache"):
        build_sampler("threshold", block_size=4, refresh_every=2)
    with pytest.raises(ValueError, match=r"refresh_every must be an integer in 0\.\.1000000000"):
        build_sampler("threshold", block_size=4, approx_cache="dual", refresh_every=-1)
    proc = MaskingProcess(2)
    oracle = OracleDenoiser(proc, markov_chain_table(2, 3), 3)
    with pytest.raises(ValueError, match="approx_cache needs a network denoiser over a sequence transformer"):
        build_sampler("threshold", block_size=2, approx_cache="prefix").sample(proc, oracle, SCHEDULE, (2, 3))
    sampler = build_sampler("threshold", tau=0.8, block_size=4, approx_cache="dual", refresh_every=3)
    assert sampler.config() == {"name": "threshold", "confidence": "probability", "block_size": 4,
                                "approx_cache": "dual", "refresh_every": 3, "tau": 0.8}
    assert sampler.file_tag == "-tau0.8-block4-dualcache3"
    assert "approx_cache" not in build_sampler("threshold", block_size=4).config()     # default unchanged


def test_a_refresh_call_is_the_uncached_network_bit_for_bit():
    proc, net = _network()
    x = torch.randint(0, K, (3, S))
    x[:, 6:] = proc.mask_index
    lam = torch.tensor([-1.0, 0.0, 0.5])
    for variant in ("prefix", "dual"):
        cache = ApproxBlockCache(net, variant, BLOCK, 0, 3)
        assert torch.equal(cache(x, lam).x0_log_probs, net(x, lam).x0_log_probs)
        assert cache.refresh_rows == 3 and cache.cached_rows == 0


@pytest.mark.parametrize("name", ["threshold", "factor"])
@pytest.mark.parametrize("variant", ["prefix", "dual"])
def test_refresh_every_call_equals_uncached_decoding(name, variant):
    proc, net = _network()
    exact, base = _sample(proc, net, name=name)
    cached, sampler = _sample(proc, net, name=name, approx_cache=variant, refresh_every=1)
    assert torch.equal(cached, exact) and sampler.network_calls == base.network_calls
    assert sampler.cache_state is not None and sampler.cache_state.cached_rows == 0
    assert sampler.positions_evaluated == base.positions_evaluated == base.network_evaluations * S


@pytest.mark.parametrize("variant", ["prefix", "dual"])
def test_cached_calls_deviate_within_the_measured_bound(variant):
    """Time-conditioned depth-2 random network, 16 sites, blocks of 4, one site per call (3 cached calls per block):
    cached calls are approximate (deviation > 0), bounded near the measured value; the cost falls (dual < prefix <
    uncached positions: 896 < 1472 < 2048)."""
    proc, net = _network()
    exact, base = _sample(proc, net)
    sampler = build_sampler("threshold", tau=0.9, block_size=BLOCK, approx_cache=variant)
    sampler.track_deviation = True
    cached = sampler.sample(proc, net, SCHEDULE, (8, S), generator=_gen(1))
    deviations = sampler.cache_state.deviations
    # measured (max |logit difference| at the block's masked sites, max site TV): prefix 0.32, 0.081; dual 0.59, 0.13
    assert len(deviations) >= 10 and 1e-4 < max(deviations) < 0.8
    assert 0 < max(sampler.cache_state.tv_deviations) < 0.2
    assert int((cached == proc.mask_index).sum()) == 0
    assert sampler.positions_evaluated < base.positions_evaluated
    if variant == "dual":
        assert sampler.positions_evaluated < _sample(proc, net, approx_cache="prefix")[1].positions_evaluated


def test_time_free_depth_one_cache_is_exact_up_to_rounding():
    """Without time conditioning, a depth-1 network's kept keys/values are functions of each position's own
    (unchanged) token: the cached calls match the uncached network to float rounding (not bit for bit)."""
    proc, net = _network(depth=1, time_conditioning=False)
    for variant in ("prefix", "dual"):
        sampler = build_sampler("threshold", tau=0.9, block_size=BLOCK, approx_cache=variant)
        sampler.track_deviation = True
        sampler.sample(proc, net, SCHEDULE, (8, S), generator=_gen(1))
        deviations = sampler.cache_state.deviations
        assert len(deviations) >= 10 and max(deviations) < 1e-5
    # depth 2 without time conditioning is not exact: deeper keys/values see the changed block
    proc, net = _network(depth=2, time_conditioning=False)
    sampler = build_sampler("threshold", tau=0.9, block_size=BLOCK, approx_cache="prefix")
    sampler.track_deviation = True
    sampler.sample(proc, net, SCHEDULE, (8, S), generator=_gen(1))
    assert max(sampler.cache_state.deviations) > 1e-3


@pytest.mark.parametrize("variant", ["prefix", "dual"])
def test_determinism_and_batch_invariance(variant):
    proc, net = _network()
    a, _ = _sample(proc, net, batch=8, seed=3, approx_cache=variant, refresh_every=2)
    b, _ = _sample(proc, net, batch=8, seed=3, approx_cache=variant, refresh_every=2)
    c, _ = _sample(proc, net, batch=8, seed=4, approx_cache=variant, refresh_every=2)
    small, _ = _sample(proc, net, batch=3, seed=3, approx_cache=variant, refresh_every=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:3], small)
