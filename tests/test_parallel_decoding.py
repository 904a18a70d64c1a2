"""The confidence-rule parallel decoding samplers "threshold" and "factor" (issue 21, Fast-dLLM's rules).

Oracle (DESIGN.md section 6b): on a peaked K = 3, D = 4 Markov-chain table, the exact settings (threshold tau = 1,
a small factor: one uncertain site per call) match the table to Monte-Carlo error, and the parallel settings are
measured against the table and against the bridge (exact-ancestral grid) at about the same number of calls.
Then the rules themselves on hand-made confidences, the blocks, the cost record, determinism, batch invariance
(float32 CPU transformer), infilling, the option errors, the CLI, and the rules inside the blocks of a block-diffusion
model (block oracle; a block run through the CLI, cached = uncached).
"""

from __future__ import annotations

import math

import pytest
import torch

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.guidance.infill import infill_sample
from discrete_diffusion.nn.transformer import SequenceTransformer
from discrete_diffusion.oracle import (
    OracleDenoiser,
    SharedLevelOracle,
    all_configurations,
    empirical_distribution,
    markov_chain_table,
    total_variation,
)
from discrete_diffusion.processes import MaskingProcess, UniformProcess
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.samplers.factor import factor_counts
from discrete_diffusion.samplers.parallel_base import ParallelDecodingSampler, eligible_sites, site_confidence
from discrete_diffusion.schedules import build_schedule

K, D, N = 3, 4, 8000
PARALLEL = sorted(name for name, cls in SAMPLERS.items() if issubclass(cls, ParallelDecodingSampler))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oracle():
    probs = markov_chain_table(K, D)
    proc = MaskingProcess(K)
    orc = OracleDenoiser(proc, probs, D)
    floor = sum(total_variation(empirical_distribution(orc.sample(N, _gen(100 + i)), K), probs) for i in range(4)) / 4
    return proc, orc, probs, floor


def _tv(oracle, name: str, seed: int = 1, **options) -> tuple[float, float]:
    proc, orc, probs, _ = oracle
    sampler = build_sampler(name, **options)
    denoiser = orc if not sampler.uses_steps else SharedLevelOracle(orc, D)
    x = sampler.sample(proc, denoiser, build_schedule("log-linear"), (N, D), generator=_gen(seed))
    assert x.shape == (N, D) and int(x.min()) >= 0 and int(x.max()) < K
    return total_variation(empirical_distribution(x, K), probs), sampler.nfe


@pytest.mark.parametrize("name,options", [("threshold", {"tau": 1.0}),
                                          ("threshold", {"tau": 1.0, "confidence": "margin"}),
                                          ("factor", {"factor": 0.05, "confidence": "entropy"}),
                                          ("threshold", {"tau": 1.0, "block_size": 2})])
def test_one_uncertain_site_per_call_is_exact(oracle, name, options):
    """tau = 1 (or a small factor) commits, beside the most confident site, only certain ones: ancestral sampling
    in a confidence order, exact with the exact denoiser. Measured TV 0.013-0.014 against a floor of 0.012."""
    *_, floor = oracle
    tv, nfe = _tv(oracle, name, **options)
    assert tv < floor + 0.008, (tv, floor)
    assert nfe == pytest.approx(D, abs=0.01)      # the table has no certain site: one call per site


@pytest.mark.parametrize("name,options,calls,tv_range", [
    ("threshold", {"tau": 0.9}, (2.1, 2.3), (0.09, 0.15)),
    ("threshold", {"tau": 0.8, "confidence": "margin"}, (2.1, 2.3), (0.09, 0.15)),
    ("factor", {"factor": 0.5, "confidence": "margin"}, (3.0, 3.2), (0.035, 0.075)),
    ("threshold", {"tau": 0.5}, (1.0, 1.01), (0.31, 0.37)),
])
def test_parallel_settings_measured_against_the_table_and_the_bridge(oracle, name, options, calls, tv_range):
    """Committing several sites per call draws them from the product of their marginals: approximate. The measured
    deviations (docs/samplers.md): tau = 0.9 saves 45% of the calls for TV 0.12; tau = 0.5 commits everything in
    one call (TV 0.34, the product of the marginals). At the same number of calls the bridge is no better
    (bridge at 2 calls: TV 0.16; at 1 call 0.35)."""
    tv, nfe = _tv(oracle, name, **options)
    assert calls[0] <= nfe <= calls[1], nfe
    assert tv_range[0] <= tv <= tv_range[1], tv
    bridge_tv, _ = _tv(oracle, "bridge", num_steps=math.floor(nfe))
    assert tv <= bridge_tv + 0.02, (tv, bridge_tv)


def test_threshold_rule_commits_the_top_site_and_every_site_above_tau():
    sampler = build_sampler("threshold", tau=0.9)
    inf = -math.inf
    conf = torch.tensor([[0.95, 0.5, 0.91, inf], [0.2, 0.6, 0.4, 0.6], [inf, inf, inf, 0.1]], dtype=torch.float64)
    eligible = torch.isfinite(conf)
    chosen = sampler.choose(conf, eligible)
    assert chosen.tolist() == [[True, False, True, False], [False, True, False, False], [False, False, False, True]]


def test_factor_rule_counts():
    """(n + 1)(1 - c_(n)) < f: for c = (0.99, 0.9, 0.6) and f = 1: n = 1 gives 0.02, n = 2 gives 0.3, n = 3 gives
    1.6, so 2 sites; f = 0.01 still commits the top site; sites of confidence 1 always pass."""
    inf = -math.inf
    conf = torch.tensor([[0.6, 0.99, inf, 0.9], [0.6, 0.99, inf, 0.9], [1.0, 1.0, 0.3, inf]], dtype=torch.float64)
    eligible = torch.isfinite(conf)
    counts = factor_counts(conf, eligible, 1.0)
    assert counts.tolist() == [2, 2, 2]
    assert factor_counts(conf, eligible, 0.01).tolist() == [1, 1, 2]
    chosen = build_sampler("factor", factor=1.0).choose(conf, eligible)
    assert chosen[0].tolist() == [False, True, False, True]


def test_site_confidences():
    p = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    lp = torch.log(p)
    assert torch.allclose(site_confidence(lp, "probability"), torch.tensor([0.7, 1.0, 1 / 3], dtype=torch.float64))
    assert torch.allclose(site_confidence(lp, "margin"), torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64))
    h = -(p[0] * p[0].log()).sum()
    assert torch.allclose(site_confidence(lp, "entropy"),
                          torch.tensor([float(torch.exp(-h)), 1.0, 1 / 3], dtype=torch.float64))


def test_blocks_commit_only_in_the_first_unfinished_block(oracle):
    proc, orc, *_ = oracle
    masked = torch.tensor([[True, True, True, True], [False, False, True, True], [False, True, False, True]])
    blocks = torch.tensor([0, 0, 1, 1])
    assert eligible_sites(masked, blocks).tolist() == [[True, True, False, False], [False, False, True, True],
                                                       [False, True, False, False]]
    seen = []
    sampler = build_sampler("threshold", tau=0.01, block_size=2)      # commits a whole block per call
    x = sampler.sample(proc, orc, build_schedule("log-linear"), (64, D), generator=_gen(3),
                       callback=lambda k, n, x: seen.append((x == proc.mask_index).clone()))
    assert len(seen) == 2 and bool((x < K).all())
    assert not bool(seen[0][:, :2].any()) and bool(seen[0][:, 2:].all()) and not bool(seen[1].any())


def test_cost_record_counts_calls_per_row(oracle):
    proc, orc, *_ = oracle
    sampler = build_sampler("threshold", tau=0.9)
    start = torch.full((50, D), proc.mask_index)
    start[:25] = torch.tensor([0, 1, 2, 0])                   # finished rows: no call
    start[25:30, 1:] = torch.tensor([1, 2, 0])                # one masked site: one call
    sampler.sample(proc, orc, build_schedule("log-linear"), (50, D), generator=_gen(0), start=(start, 0.5))
    calls = sampler.calls_per_row
    assert calls[:25].eq(0).all() and calls[25:30].eq(1).all() and bool((calls[30:] >= 1).all())
    assert sampler.nfe == pytest.approx(float(calls.sum()) / 50)
    assert sampler.network_calls == int(calls.max())


@pytest.mark.parametrize("name", PARALLEL)
def test_same_seed_same_samples(oracle, name):
    proc, orc, *_ = oracle
    sampler = build_sampler(name)
    draw = lambda seed: sampler.sample(proc, orc, build_schedule("log-linear"), (200, D), generator=_gen(seed))  # noqa
    a, b, c = draw(5), draw(5), draw(6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def _network(seed: int = 0, seq_len: int = 12, k: int = 5) -> tuple[MaskingProcess, NetworkDenoiser]:
    proc = MaskingProcess(k)
    torch.manual_seed(seed)
    net = SequenceTransformer(proc.feature_channels, proc.output_channels("logits"), seq_len=seq_len, dim=32, depth=2,
                              heads=2, dropout=0.0)
    with torch.no_grad():
        for param in net.parameters():            # adaLN-zero starts at zero: random weights make it confident
            param.copy_(torch.randn(param.shape) * 0.3)
    return proc, NetworkDenoiser(net, proc, "logits").eval()


@pytest.mark.parametrize("name,options", [(name, {}) for name in PARALLEL] + [("threshold", {"block_size": 4}),
                                                                             ("factor", {"confidence": "entropy"})])
def test_batch_invariance_with_a_float32_network(name, options):
    """A row's tokens do not depend on the batch size or its batch-mates (float32 transformer on CPU)."""
    proc, net = _network()
    schedule = build_schedule("log-linear")
    sampler = build_sampler(name, **options)
    big = sampler.sample(proc, net, schedule, (8, 12), generator=_gen(11))
    assert sampler.nfe > 1.0 and int((big == proc.mask_index).sum()) == 0
    small = sampler.sample(proc, net, schedule, (3, 12), generator=_gen(11))
    assert torch.equal(big[:3], small)
    # other batch-mates: rows 0-2 start from the same x_t, rows 3-7 from other states
    start = torch.full((8, 12), proc.mask_index)
    start[:, 0] = 1
    other = start.clone()
    other[3:, :6] = torch.randint(0, 5, (5, 6), generator=_gen(2))
    a = sampler.sample(proc, net, schedule, (8, 12), generator=_gen(4), start=(start, 0.9))
    b = sampler.sample(proc, net, schedule, (8, 12), generator=_gen(4), start=(other, 0.9))
    assert torch.equal(a[:3], b[:3]) and not torch.equal(a[3:], b[3:])


def test_infilling_conditions_on_the_known_sites(oracle):
    """Infilling goes through the prior (no grid): the known site is revealed before decoding, so the samples follow
    the table conditioned on it (tau = 1: exact)."""
    proc, orc, probs, _ = oracle
    configs = all_configurations(K, D)
    known = torch.zeros(N, D, dtype=torch.bool)
    known[:, 2] = True
    values = torch.full((N, D), 0)
    values[:, 2] = 1
    x = infill_sample(build_sampler("threshold", tau=1.0), proc, orc, build_schedule("log-linear"), known, values,
                      generator=_gen(9))
    assert bool((x[:, 2] == 1).all())
    conditional = torch.where(configs[:, 2] == 1, probs, torch.zeros_like(probs))
    conditional = conditional / conditional.sum()
    assert total_variation(empirical_distribution(x, K), conditional) < 0.035


def test_options_that_would_have_no_effect_are_errors():
    for key, value in (("cache", True), ("grid", "cosine"), ("final_denoise", False), ("theta", 0.5)):
        with pytest.raises(ValueError, match=f"has no option '{key}'"):
            build_sampler("threshold", **{key: value})
    with pytest.raises(ValueError, match=r"tau must be a number in \(0, 1\]"):
        build_sampler("threshold", tau=1.5)
    with pytest.raises(ValueError, match="factor must be a finite number > 0"):
        build_sampler("factor", factor=0)
    with pytest.raises(ValueError, match="unknown confidence 'logit'; valid: probability, margin, entropy"):
        build_sampler("factor", confidence="logit")
    with pytest.raises(ValueError, match=r"block_size must be an integer in 0\.\.1000000000"):
        build_sampler("threshold", block_size=-1)
    with pytest.raises(ValueError, match="needs the masking process"):
        build_sampler("threshold").sample(UniformProcess(3), lambda x, lam: None, build_schedule("log-linear"), (2, 2))
    assert build_sampler("threshold", tau=0.7, confidence="margin", block_size=8).config() == {
        "name": "threshold", "confidence": "margin", "block_size": 8, "tau": 0.7}


def test_cli_sample_with_threshold_and_factor(tmp_path, ddiff):
    """`ddiff sample RUN --sampler threshold -o tau=...`: files named by the rule, nfe in the record; a step count,
    the cache or an option of another sampler is an error (they would have no effect)."""
    import json

    from discrete_diffusion.cli import main
    text = tmp_path / "t.txt"
    text.write_text("abcab cabba cab " * 200)
    run = tmp_path / "text"
    assert main(["train", "--out", str(run), "--no-progress", "data.name=text", f"data.path={text}", "data.seq_len=8",
                 "process.name=masking", "model.backbone=transformer", "model.dim=16", "model.depth=1",
                 "model.heads=2", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
                 "train.sample_every=100", "train.batch_size=8", "train.device=cpu", "train.eval_t_samples=1",
                 "evaluate.t_samples=1"]) == 0
    out = tmp_path / "s"
    res = ddiff("sample", run, "--sampler", "threshold", "-o", "tau=0.8", "--num", 5, "--out", out, "--no-progress")
    assert res.rc == 0, res.err
    record = json.loads((out / "threshold-tau0.8_seed0.json").read_text())
    assert record["sampler"] == {"name": "threshold", "confidence": "probability", "tau": 0.8}
    assert 1 <= record["nfe_last_batch"] <= 8 and 1 <= record["network_calls_last_batch"] <= 8
    assert record["nfe_last_batch"] <= record["network_calls_last_batch"]     # the mean row <= the longest row
    assert len((out / "threshold-tau0.8_seed0.txt").read_text().splitlines()) == 5
    res = ddiff("sample", run, "--sampler", "factor", "-o", "factor=2", "-o", "confidence=margin", "-o", "block_size=4",
                "--num", 3, "--out", out, "--no-progress")
    assert res.rc == 0, res.err
    assert (out / "factor-f2-margin-block4_seed0.json").is_file()
    for extra, message in ((["--steps", "8"], "has no time grid: a step count would have no effect"),
                           (["--cache"], "has no option 'cache'"), (["-o", "eta=0.1"], "has no option 'eta'"),
                           (["-o", "tau=2"], r"tau must be a number in (0, 1]")):
        res = ddiff("sample", run, "--sampler", "threshold", *extra, "--num", 2, "--out", out, "--no-progress")
        assert res.rc != 0 and message in res.err and len(res.err.strip().splitlines()) == 1, res.err


def test_inside_the_blocks_of_a_block_diffusion_model():
    """On a block-diffusion model the semi-autoregressive decoder runs the rule inside each block (with the exact KV
    cache): tau = 1 reaches the table at the Monte-Carlo floor (BlockOracle: exact p(x0 | x_t, context)); a
    parallel setting commits a whole 2-site block per call (fewer calls) and moves away from the table."""
    from discrete_diffusion.blocks.oracle import BlockOracle
    from discrete_diffusion.samplers.semi_autoregressive import SemiAutoregressiveDecoder

    k, length, size, n = 3, 4, 2, 5000
    probs = markov_chain_table(k, length)
    oracle = BlockOracle(MaskingProcess(k), probs, length, size)
    g = _gen(11)
    floors = [total_variation(empirical_distribution(oracle.configs[torch.multinomial(probs, n, True, generator=g)],
                                                     k), probs) for _ in range(4)]
    tvs, calls = [], []
    for tau in (1.0, 0.01):
        decoder = SemiAutoregressiveDecoder(build_sampler("threshold", tau=tau))
        out = decoder.sample(MaskingProcess(k), oracle, build_schedule("log-linear"), n, generator=_gen(10))
        tvs.append(total_variation(empirical_distribution(out.tokens, k), probs))
        calls.append(out.network_calls)
    assert tvs[0] < 1.25 * max(floors), (tvs, floors)
    assert calls[1] < calls[0] and tvs[1] > max(floors) + 0.05, (calls, tvs)


def test_cli_threshold_on_a_block_diffusion_run(tmp_path, ddiff):
    """`ddiff sample BLOCK_RUN --sampler threshold -o tau=0.5`: decoded block by block, same text with and without
    the KV cache."""
    from discrete_diffusion.cli import main
    text = tmp_path / "t.txt"
    text.write_text("abcab cabba cab " * 200)
    run = tmp_path / "block"
    assert main(["train", "--out", str(run), "--no-progress", "data.name=text", f"data.path={text}", "data.seq_len=8",
                 "process.name=masking", "model.backbone=transformer", "model.block_size=4", "model.dim=16",
                 "model.depth=1", "model.heads=2", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
                 "train.sample_every=100", "train.batch_size=8", "train.device=cpu", "train.eval_t_samples=1",
                 "evaluate.t_samples=1"]) == 0
    texts = []
    for out, extra in ((tmp_path / "a", []), (tmp_path / "b", ["--no-cache"])):
        res = ddiff("sample", run, "--sampler", "threshold", "-o", "tau=0.5", "--num", 4, "--out", out, "--no-progress",
                    *extra)
        assert res.rc == 0, res.err
        texts.append([p.read_text() for p in sorted(out.glob("*.txt"))])
    assert texts[0] == texts[1] and len(texts[0]) == 1 and len(texts[0][0].splitlines()) == 4
