"""Large vocabularies (issue 15): token-index network input instead of the (B, K + 1, L) one-hot, categorical
draws and sampling transforms without a (B, L, K) float64 tensor, top-k, and the CUDA-visible test suite (CUDA
simulated by monkeypatching: these machines have no GPU)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils._python_dispatch import TorchDispatchMode

from discrete_diffusion import builders
from discrete_diffusion.denoiser import NetworkDenoiser, backbone_input
from discrete_diffusion.losses import LogitAlphaProposal, training_loss
from discrete_diffusion.nn import MLP, SequenceTransformer
from discrete_diffusion.processes import base as process_base
from discrete_diffusion.processes import build_process
from discrete_diffusion.processes.base import INPUT_KINDS, sample_categorical
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.samplers import base as sampler_base
from discrete_diffusion.samplers.base import transform_x0_log_probs
from discrete_diffusion.schedules import build_schedule
from discrete_diffusion.train import distributed, rng
from discrete_diffusion.train.checkpoint import save_checkpoint
from discrete_diffusion.train.trainer import AutocastDenoiser


def _processes(k: int) -> dict:
    return {"masking": build_process("masking", k), "uniform": build_process("uniform", k),
            "matrix": build_process("matrix", k, rates="banded")}


def _randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialised output and gates would hide any difference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


def _backbone(kind: str, process, sites: tuple[int, ...]) -> torch.nn.Module:
    c_in, c_out = process.feature_channels, process.output_channels("logits")
    if kind == "transformer":
        net = SequenceTransformer(c_in, c_out, seq_len=sites, dim=32, depth=2, heads=2, dropout=0.0)
    else:
        net = MLP(c_in, c_out, site_shape=sites, hidden=32, depth=2)
    return _randomise(net)


def _one_hot_view(backbone: torch.nn.Module) -> None:
    """Make this backbone instance read the one-hot features, as every backbone did before the token path."""
    backbone.accepts_tokens = False


# ----- 1. token-index input ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["masking", "uniform", "matrix"])
def test_token_processes_features_are_the_one_hot_of_xt(name):
    """The contract that lets a backbone read x_t instead of the features: they are one_hot(x_t)."""
    process = _processes(5)[name]
    assert process.input_kind == "tokens" and process.input_kind in INPUT_KINDS
    xt = torch.randint(0, process.num_values, (3, 4))
    features = process.network_features(xt, torch.zeros(3))
    assert torch.equal(features, F.one_hot(xt, process.feature_channels).movedim(-1, 1).float())
    assert build_process("blackout", 5).input_kind == "features"


@pytest.mark.parametrize("kind", ["transformer", "mlp"])
@pytest.mark.parametrize("name", ["masking", "uniform", "matrix"])
def test_embedding_path_equals_one_hot_path(kind, name):
    """Same weights, token input vs one-hot input: the same prediction and the same gradients."""
    process = _processes(7)[name]
    sites = (3, 4) if kind == "transformer" else (5,)
    tokens_net = _backbone(kind, process, sites)
    one_hot_net = _backbone(kind, process, sites)
    _one_hot_view(one_hot_net)
    x0 = torch.randint(0, 7, (4, *sites))
    lam = torch.linspace(-3.0, 3.0, 4)
    xt = process.sample_marginal(x0, lam, torch.Generator().manual_seed(1))
    assert backbone_input(process, tokens_net, xt, lam).dtype == torch.long
    assert backbone_input(process, one_hot_net, xt, lam).shape == (4, process.feature_channels, *sites)
    outs = []
    for net in (tokens_net, one_hot_net):
        denoiser = NetworkDenoiser(net, process, "logits")
        log_probs = denoiser(xt, lam).x0_log_probs
        finite = torch.isfinite(log_probs)
        (log_probs[finite] * torch.linspace(0.0, 1.0, int(finite.sum()))).sum().backward()
        outs.append((log_probs.detach(), net.input_proj.weight.grad.clone(), net.input_proj.bias.grad.clone()))
    for a, b in zip(*outs):  # float32 rounding of sums taken in another order: 1e-6 of the largest entry
        scale = max(1.0, float(b[torch.isfinite(b)].abs().max()))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


def test_checkpoint_of_the_one_hot_model_loads_into_the_token_model(tmp_path):
    """A state_dict saved by the one-hot model (main's code path: same parameter names and shapes) loads into
    the token model unchanged (strict) and gives the same outputs to 1e-6."""
    process = build_process("masking", 11)
    old = NetworkDenoiser(_backbone("transformer", process, (6,)), process, "logits")
    _one_hot_view(old.backbone)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(path))
    state = load_file(str(path))
    assert state["backbone.input_proj.weight"].shape == (32, 12) and state["backbone.input_proj.bias"].shape == (32,)
    new = NetworkDenoiser(SequenceTransformer(12, 11, seq_len=6, dim=32, depth=2, heads=2, dropout=0.0),
                          process, "logits")
    new.load_state_dict(state, strict=True)
    xt = process.sample_marginal(torch.randint(0, 11, (5, 6)), torch.zeros(5), torch.Generator().manual_seed(2))
    lam = torch.full((5,), 0.3)
    with torch.no_grad():
        torch.testing.assert_close(new(xt, lam).x0_log_probs, old(xt, lam).x0_log_probs, rtol=0, atol=1e-6)


def test_bf16_autocast_token_path_matches_one_hot_path():
    """Under autocast the token path hands the blocks the autocast dtype, as the input Linear did."""
    process = build_process("masking", 9)
    nets = [_backbone("transformer", process, (8,)) for _ in range(2)]
    _one_hot_view(nets[1])
    xt = process.sample_marginal(torch.randint(0, 9, (3, 8)), torch.zeros(3), torch.Generator().manual_seed(3))
    outs = [AutocastDenoiser(NetworkDenoiser(n, process, "logits"), "cpu")(xt, torch.zeros(3)).x0_log_probs
            for n in nets]
    finite = torch.isfinite(outs[0])
    assert torch.equal(finite, torch.isfinite(outs[1]))
    torch.testing.assert_close(outs[0][finite], outs[1][finite], rtol=0.05, atol=0.05)


class _LargestTensors(TorchDispatchMode):
    """Records every op's output: the largest numel per dtype, and whether a one-hot-shaped tensor appeared."""

    def __init__(self, forbidden_numel: int) -> None:
        super().__init__()
        self.forbidden_numel, self.largest, self.forbidden = forbidden_numel, {}, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest[t.dtype] = max(self.largest.get(t.dtype, 0), t.numel())
                if t.numel() == self.forbidden_numel:
                    self.forbidden.append((str(func), tuple(t.shape), t.dtype))
        return out


def _masking_model(k: int, length: int) -> tuple:
    process = build_process("masking", k)
    net = SequenceTransformer(k + 1, k, seq_len=length, dim=16, depth=1, heads=2, dropout=0.0)
    return process, NetworkDenoiser(_randomise(net), process, "logits")


def test_training_step_builds_no_one_hot_and_no_float64_bxlxk():
    """A training step (forward + backward) on masking with a transformer: no (B, K + 1, L) tensor of any
    dtype, and no float64 tensor as large as (B, L, K)."""
    k, length, batch = 1000, 12, 4
    process, denoiser = _masking_model(k, length)
    x0 = torch.randint(0, k, (batch, length))
    schedule = build_schedule("log-linear")
    mode = _LargestTensors(forbidden_numel=batch * (k + 1) * length)
    with mode:
        loss = training_loss(process, denoiser, x0, schedule, LogitAlphaProposal(), generator=torch.Generator())
        loss.loss.backward()
    assert not mode.forbidden, mode.forbidden
    assert mode.largest.get(torch.float64, 0) < batch * length * k, mode.largest


@pytest.mark.parametrize("name,options", [("bridge", {"temperature": 0.8, "top_p": 0.9, "top_k": 50}),
                                          ("tau-leaping", {"top_k": 20}), ("maskgit", {"top_p": 0.8}),
                                          ("remdm", {"temperature": 0.9}), ("bridge", {})])
def test_sampling_builds_no_one_hot_and_no_full_float64(monkeypatch, name, options):
    """Masking samplers at K = 1000: no one-hot input, and float64 work only in bounded blocks of rows."""
    k, length, batch = 1000, 12, 4
    monkeypatch.setattr(process_base, "CATEGORICAL_CHUNK", 4 * k)
    monkeypatch.setattr(sampler_base, "TRANSFORM_CHUNK", 4 * k)
    process, denoiser = _masking_model(k, length)
    sampler = build_sampler(name, num_steps=4, **options)
    mode = _LargestTensors(forbidden_numel=batch * (k + 1) * length)
    with mode:
        x = sampler.sample(process, denoiser, build_schedule("log-linear"), (batch, length), torch.Generator())
    assert x.shape == (batch, length) and bool((x < k).all())
    assert not mode.forbidden, mode.forbidden
    assert mode.largest.get(torch.float64, 0) <= 4 * k, mode.largest


# ----- 2. large-K sampling ------------------------------------------------------------------------------
def test_blocked_categorical_draws_equal_the_one_block_draws(monkeypatch):
    """The float64 inverse CDF done a few rows at a time draws exactly what it drew on all rows at once (the
    uniforms come from one call): the law of every draw is unchanged, only the memory is bounded."""
    log_probs = torch.log_softmax(torch.randn(6, 7, 300, generator=torch.Generator().manual_seed(0)) * 3, -1)
    whole = sample_categorical(log_probs, torch.Generator().manual_seed(5))
    monkeypatch.setattr(process_base, "CATEGORICAL_CHUNK", 700)   # two rows per block
    blocked = sample_categorical(log_probs, torch.Generator().manual_seed(5))
    assert torch.equal(whole, blocked) and whole.shape == (6, 7)
    # reference: the one-block float64 inverse CDF, written out
    cdf = log_probs.double().exp().cumsum(-1)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(whole, torch.searchsorted(cdf, u * cdf[..., -1:], right=True)[..., 0].clamp_max(299))


def test_float32_draw_at_k_50000_matches_its_law_by_chi_square():
    """Draws from float32 log-probs over K = 50,000 (Zipf: p_v proportional to 1 / (v + 1)) fall into the 17
    rank bins [0, 1), [1, 2), [2, 4), ..., [32768, 50000) as the law says (each holds about 6% of the mass):
    chi-square below the 0.999 quantile of df 16 (39.25). The far bins are where truncated (float32) sampling
    loses mass."""
    k, n = 50_000, 1_500
    probs = 1.0 / torch.arange(1, k + 1, dtype=torch.float64)
    probs /= probs.sum()
    log_probs = probs.log().float()[None].expand(n, k)           # a float32 prediction, no copies
    draws = sample_categorical(log_probs, torch.Generator().manual_seed(11))
    edges = torch.tensor([2 ** j for j in range(16)])            # 1, 2, 4, ..., 32768
    mass = torch.zeros(17, dtype=torch.float64).index_add_(0, torch.bucketize(torch.arange(k), edges, right=True),
                                                            probs)
    counts = torch.bincount(torch.bucketize(draws, edges, right=True), minlength=17).double()
    chi2 = float(((counts - n * mass) ** 2 / (n * mass)).sum())
    assert chi2 < 39.25, (chi2, counts.tolist(), (n * mass).tolist())
    assert int((draws >= 16384).sum()) > 0.05 * n        # the far tail is drawn (expected ~9.2%)


def test_top_k_keeps_the_k_most_probable_values():
    log_probs = torch.log_softmax(torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0, 4.0]]), -1)
    out = transform_x0_log_probs(log_probs, top_k=2)
    assert out.dtype == torch.float32
    kept = torch.isfinite(out)
    assert kept.tolist() == [[False, True, False, True, False], [True, False, False, False, True]]
    p = log_probs.exp()
    torch.testing.assert_close(out.exp()[kept].reshape(2, 2),
                               p[kept].reshape(2, 2) / p[kept].reshape(2, 2).sum(1, keepdim=True))
    assert torch.equal(transform_x0_log_probs(log_probs, top_k=5), log_probs)   # k >= K: nothing changes
    # top-k then top-p: of the two kept, the nucleus at 0.5 keeps the mode only
    both = transform_x0_log_probs(log_probs, top_p=0.5, top_k=2).exp()
    assert both[:, [1, 0]].diagonal().tolist() == [1.0, 1.0]


def test_blocked_transform_equals_the_float64_transform(monkeypatch):
    """Temperature, top-k and top-p done in float64 blocks of rows, returned in float32, equal the whole-tensor
    float64 computation (to float32 rounding), with the same kept sets."""
    log_probs = torch.log_softmax(torch.randn(5, 6, 400, generator=torch.Generator().manual_seed(4)) * 2, -1)
    log_probs[1, :3] = torch.full((400,), -torch.inf).index_fill(0, torch.tensor([7]), 0.0)   # point masses (SUBS)
    reference = sampler_base._transform_rows(log_probs.reshape(-1, 400).double(), 0.7, 0.9, 60).reshape(5, 6, 400)
    monkeypatch.setattr(sampler_base, "TRANSFORM_CHUNK", 1200)
    out = transform_x0_log_probs(log_probs, temperature=0.7, top_p=0.9, top_k=60)
    assert out.dtype == torch.float32 and out.shape == log_probs.shape
    assert torch.equal(torch.isfinite(out), torch.isfinite(reference))
    finite = torch.isfinite(out)
    torch.testing.assert_close(out[finite].double(), reference[finite], rtol=0, atol=1e-5)
    assert torch.equal(out[1, :3], log_probs[1, :3])
    assert transform_x0_log_probs(log_probs.double(), top_p=0.9).dtype == torch.float64   # oracle tables keep float64


def test_top_k_option_on_every_sampler_and_in_its_config():
    assert len(SAMPLERS) >= 12
    for name in SAMPLERS:         # those whose constructor lists top_k and those that get it from build_sampler
        sampler = build_sampler(name, num_steps=3, top_k=7)
        assert sampler.top_k == 7 and sampler.config()["top_k"] == 7, name
        assert "top_k" not in build_sampler(name, num_steps=3).config()
    for bad in (-1, 1.5, "x", True):
        with pytest.raises(ValueError, match="top_k"):
            build_sampler("bridge", top_k=bad)
    with pytest.raises(ValueError, match="top_k"):
        build_sampler("theta-rk2", top_k=-2)


def test_cli_top_k_is_recorded_in_the_sample_json(ddiff, trained_run, tmp_path):
    res = ddiff("sample", trained_run, "--sampler", "bridge", "--steps", 3, "--num", 2, "--seed", 1,
                "--top-k", 4, "--device", "cpu", "--out", tmp_path, "--no-progress")
    assert res.rc == 0, res
    record = json.loads((tmp_path / "bridge_3steps_seed1.json").read_text())
    assert record["sampler"]["top_k"] == 4


# ----- 4. a test suite that passes with CUDA visible -------------------------------------------------------
def _fake_cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)] * count)


def test_cpu_run_records_no_cuda_rng_state_when_cuda_is_visible(monkeypatch, tmp_path):
    """A CPU run's checkpoint has the same keys with or without a (visible, initialised) GPU."""
    _fake_cuda(monkeypatch, 1)
    assert rng.capture_rng_state()["torch_cuda"] == []
    assert len(rng.capture_rng_state(cuda=True)["torch_cuda"]) == 1
    manifest = save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2))
    meta = json.loads(manifest.read_text())
    tensors = load_file(str(manifest.parent / meta["tensors_file"]))
    assert "rng.torch_cpu" in tensors and not [k for k in tensors if "torch_cuda" in k]


def test_device_choice_with_fewer_gpus_than_ranks(monkeypatch):
    _fake_cuda(monkeypatch, 1)
    rank1 = distributed.DistContext(rank=1, world_size=2, local_rank=1)
    for name in ("auto", "cuda"):
        with pytest.raises(ValueError, match=r"only 1 CUDA device.*--device cpu"):
            distributed.resolve_local_device(name, rank1)
    assert distributed.resolve_local_device("cpu", rank1) == torch.device("cpu")
    assert distributed.resolve_local_device("auto", distributed.DistContext(0, 2, 0)) == torch.device("cuda", 0)
    assert builders.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        builders.resolve_device("cuda:1")
