"""Block diffusion (BD3-LM): the exactness tests of issue 20 item 4.

- the vectorised [x_t ; x_0] forward equals running every block separately on its clean context;
- block size 1: the bound of a time-free model is the AR NLL of the same conditionals (table and network);
- block size L: the block path is today's masked-diffusion bound (same weights, same draws);
- the exact oracle: the Monte-Carlo block bound matches the exact per-block quadrature, which is -log pi(x0),
  and semi-autoregressive samples reach the table at the Monte-Carlo floor;
- the KV cache: cached logits equal uncached ones to 1e-5 (float32), the same seed gives the same tokens with and
  without the cache (prompts, partial blocks, a sliding context);
- batch invariance, for every masking sampler used inside blocks.
"""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.blocks.denoiser import BlockNetworkDenoiser, block_size_of
from discrete_diffusion.blocks.loss import exact_block_bound, mask_pattern_weights
from discrete_diffusion.blocks.oracle import BlockOracle
from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.losses import LogitAlphaProposal, diffusion_terms, draw_noise, estimate_elbo
from discrete_diffusion.nn import SequenceTransformer
from discrete_diffusion.nn.block_mask import block_diffusion_mask
from discrete_diffusion.oracle import empirical_distribution, total_variation
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.samplers.semi_autoregressive import SemiAutoregressiveDecoder
from discrete_diffusion.schedules import build_schedule

#: Every masking sampler that runs on a denoiser alone (ddpd also needs a trained planner).
BLOCK_SAMPLERS = [name for name, cls in SAMPLERS.items() if cls.supports("masking") and name != "ddpd"]


def network(num_states: int, length: int, time_conditioning: bool, seed: int = 0) -> SequenceTransformer:
    """A small transformer with random (not zero) weights, so that every path carries signal."""
    torch.manual_seed(seed)
    net = SequenceTransformer(num_states + 1, num_states, length, dim=32, depth=2, heads=2, dropout=0.0,
                              time_conditioning=time_conditioning)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net.eval()


def test_block_diffusion_mask_structure():
    m = block_diffusion_mask(4, 2)
    noisy_noisy, noisy_clean, clean_noisy, clean_clean = m[:4, :4], m[:4, 4:], m[4:, :4], m[4:, 4:]
    assert noisy_noisy.tolist() == [[True, True, False, False]] * 2 + [[False, False, True, True]] * 2
    assert noisy_clean.tolist() == [[False] * 4] * 2 + [[True, True, False, False]] * 2
    assert not clean_noisy.any()
    assert clean_clean.tolist() == [[True, True, False, False]] * 2 + [[True] * 4] * 2


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_vectorised_forward_equals_each_block_on_its_context(time_conditioning):
    k, length, size = 5, 8, 2
    process = build_process("masking", k)
    model = BlockNetworkDenoiser(network(k, length, time_conditioning), process, "logits", size)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, k, (3, length), generator=g)
    xt = torch.where(torch.rand(3, length, generator=g) < 0.5, x0, torch.full_like(x0, k))
    lam = torch.randn(3, length // size, generator=g)
    with torch.no_grad():
        joint = process.x0_log_probs(model(xt, lam, clean=x0), xt)
        for b in range(length // size):
            sl = slice(b * size, (b + 1) * size)
            alone = process.x0_log_probs(model.context_denoiser(x0[:, :b * size])(xt[:, sl], lam[:, b]), xt[:, sl])
            finite = torch.isfinite(alone)
            assert torch.equal(finite, torch.isfinite(joint[:, sl]))
            assert (alone[finite] - joint[:, sl][finite]).abs().max() < 1e-5
    # a clean token of a later block changes nothing in earlier blocks (the mask is causal over blocks)
    other = x0.clone()
    other[:, -1] = (other[:, -1] + 1) % k
    with torch.no_grad():
        changed = process.x0_log_probs(model(xt, lam, clean=other), xt)
    assert torch.equal(changed[:, :-size].nan_to_num(), joint[:, :-size].nan_to_num())


def test_time_free_network_ignores_the_noise_level():
    net = network(4, 6, time_conditioning=False)
    assert net.noise_embedding is None
    x = torch.randint(0, 5, (2, 6))
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor([-0.9, 0.3])), net(x, torch.tensor([0.5, 0.99])))


def ar_nll(process, model, x0: torch.Tensor, size: int) -> torch.Tensor:
    """sum_b -log p(x^b | x^{<b}, x_t^b = MASK) from the model's block denoiser on each context (B,) float64: the
    AR NLL of the conditionals at block size 1."""
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for start in range(0, x0.shape[1], size):
        block = torch.full((x0.shape[0], size), process.mask_index)
        lp = process.x0_log_probs(model.context_denoiser(x0[:, :start])(block, torch.zeros(x0.shape[0])), block)
        total -= lp.double().gather(-1, x0[:, start:start + size, None])[..., 0].sum(1)
    return total


def test_block_size_one_bound_is_the_ar_nll_on_a_table_and_a_network():
    k, length = 3, 4
    process = build_process("masking", k)
    schedule = build_schedule("log-linear")
    a1 = schedule.alpha_min
    assert mask_pattern_weights(1, a1, 1.0) == pytest.approx([1.0 - a1], abs=1e-15)
    prior = a1 * length * math.log(k)
    # the table: the AR NLL of exact conditionals is -log pi(x0)
    probs = torch.rand(k ** length, generator=torch.Generator().manual_seed(0)) ** 3
    oracle = BlockOracle(process, probs, length, 1)
    x0 = oracle.configs[torch.randint(0, k ** length, (16,), generator=torch.Generator().manual_seed(1))]
    bound = exact_block_bound(process, oracle, x0, 1, schedule)
    assert torch.allclose(bound, (1 - a1) * oracle.nll(x0) + prior, rtol=0, atol=1e-10)
    assert torch.allclose(bound, (1 - a1) * ar_nll(process, oracle, x0, 1) + prior, rtol=0, atol=1e-10)
    # a time-free network: the quadrature of the vectorised forward = the AR NLL of its per-context predictions
    k, length = 5, 8
    process = build_process("masking", k)
    model = BlockNetworkDenoiser(network(k, length, time_conditioning=False), process, "logits", 1)
    x0 = torch.randint(0, k, (4, length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        bound = exact_block_bound(process, model, x0, 1, schedule)
        reference = (1 - a1) * ar_nll(process, model, x0, 1) + a1 * length * math.log(k)
    assert torch.allclose(bound, reference, rtol=1e-6, atol=1e-5)
    # and the Monte-Carlo block bound of ddiff evaluate is unbiased for it
    est = estimate_elbo(process, model, x0, schedule, LogitAlphaProposal(), torch.Generator().manual_seed(3),
                        num_samples=256)
    assert torch.allclose(est.total.mean(), bound.mean(), rtol=0.03)


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_block_size_L_is_the_masked_bound_with_the_same_weights_and_draws(time_conditioning):
    k, length = 5, 8
    process = build_process("masking", k)
    schedule = build_schedule("log-linear")
    net = network(k, length, time_conditioning)
    plain, block = NetworkDenoiser(net, process, "logits"), BlockNetworkDenoiser(net, process, "logits", length)
    assert block_size_of(block) == length and block_size_of(plain) is None
    x0 = torch.randint(0, k, (6, length), generator=torch.Generator().manual_seed(4))
    a = estimate_elbo(process, plain, x0, schedule, LogitAlphaProposal(), torch.Generator().manual_seed(5), 3)
    b = estimate_elbo(process, block, x0, schedule, LogitAlphaProposal(), torch.Generator().manual_seed(5), 3)
    assert torch.allclose(a.total, b.total, rtol=1e-5, atol=1e-5)
    # the training draws and terms: identical draws, terms equal to float rounding, gradients too
    n1 = draw_noise(process, x0, schedule, LogitAlphaProposal(), torch.Generator().manual_seed(6))
    n2 = draw_noise(process, x0, schedule, LogitAlphaProposal(), torch.Generator().manual_seed(6), block_size=length)
    assert torch.equal(n1.xt, n2.xt) and torch.equal(n1.lam, n2.lam[:, 0])
    t1 = diffusion_terms(process, plain, x0, n1)[0]
    t2 = diffusion_terms(process, block, x0, n2)[0]
    assert torch.allclose(t1, t2, rtol=1e-5, atol=1e-5)


def test_oracle_block_bound_matches_quadrature_and_the_data_nll():
    k, length, size = 3, 4, 2
    process = build_process("masking", k)
    probs = torch.rand(k ** length, generator=torch.Generator().manual_seed(7)) ** 3
    oracle = BlockOracle(process, probs, length, size)
    x0 = oracle.configs[torch.randint(0, k ** length, (64,), generator=torch.Generator().manual_seed(8))]
    # with alpha(1) -> 0 the per-block bound of the exact conditionals is -log p(x^b | x^{<b}) exactly
    tiny = build_schedule("log-linear", eps=1e-12)
    assert torch.allclose(exact_block_bound(process, oracle, x0, size, tiny), oracle.nll(x0), rtol=0, atol=1e-9)
    # the Monte-Carlo block bound (one lam per block, ddiff evaluate's estimator) converges to the quadrature
    schedule = build_schedule("log-linear")
    exact = exact_block_bound(process, oracle, x0, size, schedule)
    draws = torch.stack([estimate_elbo(process, oracle, x0, schedule, LogitAlphaProposal(),
                                       torch.Generator().manual_seed(100 + i), num_samples=16).total
                         for i in range(8)])                                 # (8, B)
    mean, stderr = draws.mean(), draws.mean(1).std() / math.sqrt(draws.shape[0])
    assert abs(float(mean - exact.mean())) < 4 * float(stderr) + 1e-9


@pytest.mark.parametrize("sampler", ["exact", "bridge"])
def test_block_samples_reach_the_table_at_the_monte_carlo_floor(sampler):
    k, length, size, n = 3, 4, 2, 5000
    process = build_process("masking", k)
    schedule = build_schedule("log-linear")
    probs = torch.rand(k ** length, generator=torch.Generator().manual_seed(9)) ** 3
    probs /= probs.sum()
    oracle = BlockOracle(process, probs, length, size)
    steps = 1 if sampler == "exact" else 64           # the bridge is exact as its steps grow
    decoder = SemiAutoregressiveDecoder(build_sampler(sampler, num_steps=steps))
    x = decoder.sample(process, oracle, schedule, n, generator=torch.Generator().manual_seed(10)).tokens
    tv = total_variation(empirical_distribution(x, k), probs)
    g = torch.Generator().manual_seed(11)
    floors = [total_variation(empirical_distribution(oracle.configs[torch.multinomial(probs, n, True, generator=g)],
                                                     k), probs) for _ in range(8)]
    assert tv < 1.25 * max(floors), (tv, floors)


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_cached_logits_equal_uncached(time_conditioning):
    k, length, size = 5, 16, 4
    process = build_process("masking", k)
    model = BlockNetworkDenoiser(network(k, length, time_conditioning), process, "logits", size)
    g = torch.Generator().manual_seed(12)
    x0 = torch.randint(0, k, (3, length), generator=g)
    block = torch.where(torch.rand(3, size, generator=g) < 0.5, x0[:, -size:], torch.full_like(x0[:, -size:], k))
    lam = torch.randn(3, generator=g)
    with torch.no_grad():
        context = x0[:, :-size]
        uncached = model.context_denoiser(context)(block, lam).logits
        whole = model.context_denoiser(context, model.encode(context))(block, lam).logits
        cache = None
        for start in range(0, context.shape[1], size):                 # block by block, as decoding fills it
            cache = model.encode(context[:, start:start + size], past=cache)
        incremental = model.context_denoiser(context, cache)(block, lam).logits
    assert uncached.dtype == torch.float32
    assert (whole - uncached).abs().max() < 1e-5 and (incremental - uncached).abs().max() < 1e-5


@pytest.mark.parametrize("sampler", BLOCK_SAMPLERS + ["bridge-cache"])
def test_same_seed_same_tokens_with_and_without_the_cache(sampler):
    k, length, size = 5, 16, 4
    process, schedule = build_process("masking", k), build_schedule("log-linear")
    model = BlockNetworkDenoiser(network(k, length, time_conditioning=True), process, "logits", size)
    name, options = ("bridge", {"cache": True}) if sampler == "bridge-cache" else (sampler, {})
    prompt = torch.tensor([1, 0, 3, 4, 1, 1])          # one whole block, then a partial one
    runs = []
    for use_cache in (True, False):       # 41 tokens > L = 16: the context slides four times
        decoder = SemiAutoregressiveDecoder(build_sampler(name, num_steps=3, **options), use_cache=use_cache,
                                            max_length=41)
        runs.append(decoder.sample(process, model, schedule, 3, prompt, torch.Generator().manual_seed(13)))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].tokens.shape == (3, 41) and torch.equal(runs[0].tokens[:, :6], prompt.expand(3, -1))
    assert runs[0].network_calls > 0 and runs[1].network_calls > 0


def test_eos_stops_a_row_and_pads_the_rest():
    k, length, size = 5, 16, 4
    process, schedule = build_process("masking", k), build_schedule("log-linear")
    model = BlockNetworkDenoiser(network(k, length, time_conditioning=False), process, "logits", size)
    decoder = SemiAutoregressiveDecoder(build_sampler("bridge", num_steps=4), max_length=40, eos=2, pad=4)
    out = decoder.sample(process, model, schedule, 6, torch.tensor([0, 1]), torch.Generator().manual_seed(14))
    for row in range(6):
        n = int(out.lengths[row])
        generated = out.tokens[row, 2:n]
        if out.stopped[row]:
            assert int(generated[-1]) == 2 and not bool((generated[:-1] == 2).any())
            assert bool((out.tokens[row, n:] == 4).all())
        else:
            assert n == out.tokens.shape[1] and not bool((generated == 2).any())
    assert bool(out.stopped.any())


def test_stopped_counts_only_the_returned_tokens():
    """max_length not a multiple of the block size: the last block runs past it, and an EOS beyond max_length is
    cut off with it, so it must not mark the row as stopped (an outside review found 8 of 240 rows wrong)."""
    k, length, size = 5, 16, 4
    process, schedule = build_process("masking", k), build_schedule("log-linear")
    model = BlockNetworkDenoiser(network(k, length, time_conditioning=False), process, "logits", size)
    decoder = SemiAutoregressiveDecoder(build_sampler("bridge", num_steps=2), max_length=18, eos=2, pad=4)
    for seed in range(12):
        out = decoder.sample(process, model, schedule, 8, torch.tensor([0, 1]), torch.Generator().manual_seed(seed))
        returned_eos = (out.tokens[:, 2:] == 2).any(1)
        assert torch.equal(out.stopped, returned_eos), seed


@pytest.mark.parametrize("sampler", BLOCK_SAMPLERS)
def test_batch_invariance(sampler):
    """A row's predictions do not depend on the other rows (float rounding), and in batch_invariant mode its tokens
    depend only on its prompt, the seed and its index: same tokens whatever the other rows' prompts."""
    k, length, size = 5, 16, 4
    process, schedule = build_process("masking", k), build_schedule("log-linear")
    model = BlockNetworkDenoiser(network(k, length, time_conditioning=True), process, "logits", size)
    mine = torch.tensor([[1, 0, 3, 4, 1]])
    batches = [torch.cat([mine, torch.tensor([[2, 2, 2, 2, 2], [0, 1, 0, 1, 0]])]),
               torch.cat([mine, torch.tensor([[4, 3, 2, 1, 0], [3, 3, 3, 3, 3]])])]
    with torch.no_grad():
        block = torch.full((3, size), k)
        alone = model.context_denoiser(mine[:, :4])(block[:1], torch.zeros(1)).logits
        for prompts in batches:
            together = model.context_denoiser(prompts[:, :4])(block, torch.zeros(3)).logits[:1]
            assert (together - alone).abs().max() < 1e-5
    tokens = []
    for prompts in batches:
        decoder = SemiAutoregressiveDecoder(build_sampler(sampler, num_steps=3), max_length=24, batch_invariant=True)
        tokens.append(decoder.sample(process, model, schedule, 3, prompts, seed=21).tokens[0])
    assert torch.equal(tokens[0], tokens[1])


def test_t_draws_switch_and_clipped_mask_rates():
    from discrete_diffusion.blocks.loss import clipped_lam_range

    lam, _ = LogitAlphaProposal(draws="antithetic").sample(6, -5.0, 5.0, torch.Generator().manual_seed(0))
    assert torch.allclose(lam[:3], -lam[3:], atol=1e-9)                 # u and 1 - u, symmetric proposal and range
    iid, _ = LogitAlphaProposal(draws="iid").sample(6, -5.0, 5.0, torch.Generator().manual_seed(0))
    strat, _ = LogitAlphaProposal().sample(6, -5.0, 5.0, torch.Generator().manual_seed(0))
    assert not torch.equal(iid, strat)
    with pytest.raises(ValueError, match="t draws"):
        LogitAlphaProposal(draws="sobol")
    # BD3-LM's clipped schedule: every draw's mask rate 1 - alpha lies in [0.3, 0.8]
    low, high = clipped_lam_range(-9.2, math.inf, (0.3, 0.8))
    assert math.isclose(1 - 1 / (1 + math.exp(-high)), 0.3) and math.isclose(1 - 1 / (1 + math.exp(-low)), 0.8)
    process, schedule = build_process("masking", 4), build_schedule("log-linear")
    x0 = torch.randint(0, 4, (64, 16), generator=torch.Generator().manual_seed(1))
    noise = draw_noise(process, x0, schedule, LogitAlphaProposal(), torch.Generator().manual_seed(2), block_size=4,
                       mask_rate_clip=(0.3, 0.8))
    rate = 1 - torch.sigmoid(noise.lam)
    assert noise.lam.shape == (64, 4) and bool(((rate >= 0.3 - 1e-6) & (rate <= 0.8 + 1e-6)).all())
    with pytest.raises(ValueError, match="mask_rate_clip"):
        clipped_lam_range(-1.0, 1.0, (0.9, 0.95))


def test_prediction_cache_is_exact_for_a_time_free_network():
    """model.time_conditioning=false makes the samplers' cache option exact: same seed, same samples (a plain masked
    run, no blocks); a time-conditioned network gives other samples with the cache (control)."""
    from discrete_diffusion.samplers import build_sampler as make

    k, length = 5, 12
    process, schedule = build_process("masking", k), build_schedule("log-linear")
    outcomes = {}
    for time_conditioning in (False, True):
        model = NetworkDenoiser(network(k, length, time_conditioning), process, "logits")
        runs = [make("bridge", num_steps=48, cache=cache).sample(process, model, schedule, (4, length),
                                                                 torch.Generator().manual_seed(3))
                for cache in (False, True)]
        outcomes[time_conditioning] = torch.equal(runs[0], runs[1])
    assert outcomes[False] and not outcomes[True]
