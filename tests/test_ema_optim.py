"""EMA, optimizer grouping, LR schedule and gradient clipping tests."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from discrete_diffusion.train.ema import EMA
from discrete_diffusion.train.optim import (
    build_optimizer,
    clip_gradients,
    param_groups_for_weight_decay,
    warmup_cosine_schedule,
)


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("running", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def test_ema_warmup_math() -> None:
    model = Scalar()
    ema = EMA(model, decay=0.5, warmup=True)
    assert set(ema.shadow) == {"w", "running"}  # integer buffers are not averaged
    expected, values = 0.0, [1.0, 2.0, 4.0, 8.0, 16.0]
    decays = []
    for n, v in enumerate(values):
        d = min(0.5, (1 + n) / (10 + n))
        decays.append(ema.current_decay())
        with torch.no_grad():
            model.w.fill_(v)
            model.running.fill_(-v)
        ema.update(model)
        expected = d * expected + (1 - d) * v
        assert ema.shadow["w"].item() == pytest.approx(expected, rel=1e-12)
        assert ema.shadow["running"][0].item() == pytest.approx(-expected, rel=1e-12)
    assert decays == pytest.approx([0.1, 2 / 11, 3 / 12, 4 / 13, 5 / 14])
    assert ema.num_updates == 5

    plain = EMA(Scalar(), decay=0.9, warmup=False)
    assert plain.current_decay() == 0.9
    m = Scalar()
    with torch.no_grad():
        m.w.fill_(10.0)
    plain.update(m)
    assert plain.shadow["w"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        EMA(Scalar(), decay=1.5)


def test_ema_swap_into_restores_original_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in ema.shadow.values():
            p.add_(1.0)
    with ema.swap_into(model) as swapped:
        assert swapped is model
        for name, t in model.state_dict().items():
            want = ema.shadow[name] if name in ema.shadow else original[name]
            assert torch.equal(t, want.to(t.dtype)), name
    for name, t in model.state_dict().items():
        assert torch.equal(t, original[name]), name
    with pytest.raises(RuntimeError, match="inside"):
        with ema.swap_into(model):
            raise RuntimeError("inside")
    for name, t in model.state_dict().items():
        assert torch.equal(t, original[name]), name


def test_ema_state_dict_round_trip_and_mismatch() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.mul_(2)
    ema.update(model)
    state = ema.state_dict()
    assert isinstance(state["num_updates"], int) and all(isinstance(t, torch.Tensor) for t in state["shadow"].values())
    other = EMA(nn.Linear(3, 2), decay=0.5, warmup=False)
    other.load_state_dict({**state, "shadow": {k: v.clone() for k, v in state["shadow"].items()}})
    assert other.num_updates == 1 and other.decay == 0.99 and other.warmup
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow)
    with pytest.raises(ValueError, match="weight"):
        EMA(nn.Linear(4, 2)).load_state_dict(state)
    with pytest.raises(ValueError, match="bias"):
        EMA(nn.Linear(3, 2, bias=False)).update(model)


def test_ema_low_precision_model_keeps_float32_shadow() -> None:
    model = nn.Linear(2, 2).to(torch.bfloat16)
    ema = EMA(model, decay=0.999, warmup=False)
    assert all(t.dtype == torch.float32 for t in ema.shadow.values())
    ema.copy_to(model)
    assert model.weight.dtype == torch.bfloat16


def test_warmup_cosine_schedule_values() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine_schedule(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0 * 0.25)
    assert lrs[1] == pytest.approx(2.0 * 0.5)
    assert lrs[3] == pytest.approx(2.0)
    assert lrs[4] == pytest.approx(2.0)
    assert lrs[9] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))  # = 1.1
    assert lrs[14] == pytest.approx(0.2) and lrs[19] == pytest.approx(0.2)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))

    for total in (None, 0):
        opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        s2 = warmup_cosine_schedule(opt2, warmup_steps=2, total_steps=total)
        seen = []
        for _ in range(6):
            seen.append(opt2.param_groups[0]["lr"])
            opt2.step()
            s2.step()
        assert seen == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    opt3 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    warmup_cosine_schedule(opt3, warmup_steps=0, total_steps=10)
    assert opt3.param_groups[0]["lr"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        warmup_cosine_schedule(opt3, warmup_steps=10, total_steps=5)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.scale = nn.Parameter(torch.ones(()))
        self.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_no_weight_decay_grouping() -> None:
    net = Net()
    opt = build_optimizer(net, lr=1e-3, weight_decay=0.05, betas=(0.8, 0.9))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.8, 0.9)
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(net.proj.weight)}
    assert ids(no_decay) == {id(net.emb.weight), id(net.proj.bias), id(net.norm.weight), id(net.norm.bias),
                             id(net.scale)}
    assert id(net.frozen) not in ids(decay) | ids(no_decay)

    groups = param_groups_for_weight_decay(net, 0.05, decay_embeddings=True)
    assert {id(p) for p in groups[0]["params"]} == {id(net.proj.weight), id(net.emb.weight)}
    with pytest.raises(ValueError):
        build_optimizer(nn.Sequential(), lr=1e-3)


def test_clip_gradients_returns_pre_clip_norm() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    model = nn.Module()
    model.a, model.b = a, b
    assert clip_gradients(model, 1.0) == 0.0  # no grads yet
    a.grad = torch.tensor([3.0, 0.0])
    b.grad = torch.tensor([4.0])
    assert clip_gradients(model, None) == pytest.approx(5.0)
    assert torch.equal(a.grad, torch.tensor([3.0, 0.0]))  # measuring does not modify
    assert clip_gradients(model, 1.0) == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm().item()
    assert total == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(model, 10.0) == pytest.approx(1.0, rel=1e-5)
