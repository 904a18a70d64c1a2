"""SequenceTransformer (diffusion backbone) and ARTransformer (autoregressive baseline)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from discrete_diffusion.baselines import ARTransformer
from discrete_diffusion.nn import BACKBONES, SequenceTransformer
from discrete_diffusion.nn.transformer import RotaryEmbedding


def _features(batch: int, k: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, k, (batch, length), generator=g)
    return F.one_hot(x, k).movedim(-1, 1).float()


def _tiny(**kw) -> SequenceTransformer:
    opts = dict(in_channels=5, out_channels=4, seq_len=12, dim=32, depth=2, heads=2, dropout=0.0)
    opts.update(kw)
    return SequenceTransformer(**opts)


def test_registered_and_shapes() -> None:
    assert BACKBONES["transformer"] is SequenceTransformer
    torch.manual_seed(0)
    net = _tiny()
    out = net(_features(3, 5, 12), torch.tensor([-1.0, 0.0, 1.0]))
    assert out.shape == (3, 4, 12)
    # zero output at initialisation (zero-initialised head)
    assert torch.equal(out, torch.zeros_like(out))
    # site shapes with several axes are flattened into L (raster order)
    net2 = _tiny(seq_len=(3, 4))
    feats = _features(2, 5, 12).reshape(2, 5, 3, 4)
    assert net2(feats, torch.zeros(2)).shape == (2, 4, 3, 4)
    with pytest.raises(ValueError, match="features must have shape"):
        net(_features(2, 5, 10), torch.zeros(2))
    with pytest.raises(ValueError, match="even head dimension"):
        _tiny(dim=30, heads=10)


def _one_step(net: SequenceTransformer, feats: torch.Tensor, lam: torch.Tensor) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    target = torch.randn(feats.shape[0], net.out_channels, feats.shape[-1], generator=torch.Generator().manual_seed(1))
    loss = ((net(feats, lam) - target) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_output_depends_on_noise_level_after_one_step() -> None:
    torch.manual_seed(0)
    net = _tiny()
    feats = _features(4, 5, 12)
    _one_step(net, feats, torch.linspace(-1, 1, 4))
    with torch.no_grad():
        a = net(feats[:1], torch.tensor([-0.8]))
        b = net(feats[:1], torch.tensor([0.8]))
    assert a.abs().max() > 0
    assert (a - b).abs().max() > 1e-4


def test_positions_matter_rotary() -> None:
    """A bidirectional transformer without positions is permutation-equivariant; rotary breaks that."""
    torch.manual_seed(0)
    net = _tiny()
    with torch.no_grad():                                   # make the output non-trivial
        for p in net.parameters():
            if p.dim() > 1 and p.abs().max() == 0:
                p.normal_(0, 0.1)
    net.eval()
    feats = _features(2, 5, 12)
    lam = torch.zeros(2)
    with torch.no_grad():
        out = net(feats, lam)
        shifted = net(torch.roll(feats, 3, dims=-1), lam)
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
        permuted = net(feats[..., perm], lam)
    assert (torch.roll(out, 3, dims=-1) - shifted).abs().max() > 1e-3
    assert (out[..., perm] - permuted).abs().max() > 1e-3


def test_rotary_relative() -> None:
    """q.k after rotary depends only on the offset between positions."""
    rope = RotaryEmbedding(8, 16)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
    qs = rope(q.expand(1, 1, 16, 8))[0, 0]
    ks = rope(k.expand(1, 1, 16, 8))[0, 0]
    assert torch.allclose(qs[5] @ ks[2], qs[10] @ ks[7], atol=1e-5)
    assert not torch.allclose(qs[5] @ ks[2], qs[5] @ ks[3], atol=1e-3)


# ---------------------------------------------------------------------------------- AR baseline


def _ar(**kw) -> ARTransformer:
    opts = dict(num_states=5, seq_len=10, dim=32, depth=2, heads=2, dropout=0.0)
    opts.update(kw)
    return ARTransformer(**opts)


def test_ar_no_information_leak() -> None:
    torch.manual_seed(0)
    net = _ar().eval()
    x = torch.randint(0, 5, (1, 10), generator=torch.Generator().manual_seed(0))
    base = net(x)
    assert base.shape == (1, 10, 5)
    for i in range(10):
        y = x.clone()
        y[0, i] = (y[0, i] + 1) % 5
        changed = (net(y) - base).abs().amax(dim=-1)[0]          # (L,)
        assert changed[: i + 1].max() == 0, f"token {i} leaks into logits at positions <= {i}"
        if i < 9:
            assert changed[i + 1 :].max() > 0                     # and the future does see it


def test_ar_nll_is_sum_of_cross_entropies() -> None:
    torch.manual_seed(0)
    net = _ar().eval()
    x = torch.randint(0, 5, (3, 10), generator=torch.Generator().manual_seed(1))
    logits = net(x)
    manual = torch.stack([
        sum(-torch.log_softmax(logits[b, i], -1)[x[b, i]] for i in range(10)) for b in range(3)
    ])
    assert torch.allclose(net.nll(x), manual, atol=1e-5)
    assert torch.allclose(net.bits_per_dim(x), manual / (10 * math.log(2)), atol=1e-6)
    # images in raster order
    img = x.reshape(3, 2, 5)
    assert torch.allclose(net.nll(img), manual, atol=1e-5)
    with pytest.raises(ValueError, match="token values"):
        net.nll(torch.full((1, 10), 5))
    # probabilities over all sequences of a tiny model sum to one
    tiny = ARTransformer(num_states=2, seq_len=3, dim=8, depth=1, heads=2, dropout=0.0).eval()
    allx = torch.tensor([[(n >> j) & 1 for j in range(3)] for n in range(8)])
    assert torch.allclose(torch.exp(-tiny.nll(allx)).sum(), torch.tensor(1.0), atol=1e-5)


def test_ar_sample_shapes_and_reproducible() -> None:
    torch.manual_seed(0)
    net = _ar()
    s1 = net.sample(4, generator=torch.Generator().manual_seed(3))
    s2 = net.sample(4, generator=torch.Generator().manual_seed(3))
    assert s1.shape == (4, 10) and s1.dtype == torch.long and torch.equal(s1, s2)
    assert int(s1.min()) >= 0 and int(s1.max()) < 5
    assert net.training                                             # mode restored


def test_ar_learns_repeating_pattern() -> None:
    """A tiny model learns a period-3 pattern with a random phase: NLL -> log(3) (only x_0 is uncertain)."""
    torch.manual_seed(0)
    net = ARTransformer(num_states=3, seq_len=12, dim=32, depth=2, heads=2, dropout=0.0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    base = torch.arange(12) % 3
    for _ in range(400):
        phase = torch.randint(0, 3, (32, 1), generator=g)
        x = (base[None] + phase) % 3
        loss = net.nll(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = (base[None] + torch.arange(3)[:, None]) % 3
    net.eval()
    with torch.no_grad():
        nll = net.nll(x)
    assert (nll < math.log(3) + 0.15).all(), nll
    s = net.sample(8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, (base[None] + s[:, :1]) % 3)
