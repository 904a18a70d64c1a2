"""Tests for the neural-network backbones in ``discrete_diffusion.nn``."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion.nn import BACKBONES, MLP, NoiseLevelEmbedding, SinusoidalEmbedding, UNet


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _small_unet(**kw) -> UNet:
    args = dict(in_channels=2, out_channels=5, image_size=(8, 8), base_channels=16, dropout=0.0)
    args.update(kw)
    return UNet(**args)


def _make(kind: str) -> torch.nn.Module:
    if kind == "unet":
        return _small_unet()
    return MLP(in_channels=2, out_channels=5, site_shape=(3,), hidden=32, depth=2)


def _inputs(model: torch.nn.Module, batch: int = 4) -> torch.Tensor:
    shape = model.image_size if isinstance(model, UNet) else model.site_shape
    return torch.randn(batch, model.in_channels, *shape)


# --------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_shape_and_resolution():
    emb = SinusoidalEmbedding(64)
    x = torch.tensor([-1.0, -0.5, 0.0, 0.01, 0.5, 0.99, 1.0])
    out = emb(x)
    assert out.shape == (7, 64)
    assert out.dtype == torch.float32
    assert torch.all(out.abs() <= 1.0)
    # Neighbouring inputs 0.01 apart get clearly different embeddings.
    grid = torch.linspace(-1.0, 1.0, 201)
    e = emb(grid)
    gaps = (e[1:] - e[:-1]).norm(dim=1)
    assert gaps.min() > 0.5
    # Distinct far-apart inputs are not aliased either.
    d = torch.cdist(e, e) + torch.eye(201) * 100
    assert d.min() > 0.5


def test_sinusoidal_embedding_rejects_odd_dim():
    with pytest.raises(ValueError):
        SinusoidalEmbedding(7)


def test_noise_level_embedding_shape():
    emb = NoiseLevelEmbedding(48)
    out = emb(torch.rand(5) * 2 - 1)
    assert out.shape == (5, 48)


# --------------------------------------------------------------------------- shapes


def test_unet_shapes_8x8_default():
    model = UNet(in_channels=2, out_channels=17, image_size=(8, 8))
    x = torch.randn(3, 2, 8, 8)
    y = model(x, torch.rand(3) * 2 - 1)
    assert y.shape == (3, 17, 8, 8)
    assert model.in_channels == 2 and model.out_channels == 17


def test_unet_shapes_28x28_with_attention():
    model = UNet(
        in_channels=1,
        out_channels=3,
        image_size=(28, 28),
        base_channels=16,
        channel_mults=(1, 2, 2),
        attention_resolutions=(14,),
    )
    assert any(type(m).__name__ == "SelfAttention2d" for m in model.up_stages.modules())
    y = model(torch.randn(2, 1, 28, 28), torch.tensor([-0.3, 0.7]))
    assert y.shape == (2, 3, 28, 28)


def test_unet_non_square():
    model = _small_unet(image_size=(8, 12))
    assert model(torch.randn(2, 2, 8, 12), torch.zeros(2)).shape == (2, 5, 8, 12)


@pytest.mark.parametrize("site_shape", [(), (1,), (3,), (2, 2)])
def test_mlp_shapes(site_shape):
    model = MLP(in_channels=4, out_channels=6, site_shape=site_shape, hidden=32, depth=2)
    y = model(torch.randn(5, 4, *site_shape), torch.rand(5) * 2 - 1)
    assert y.shape == (5, 6, *site_shape)


def test_registry():
    assert BACKBONES["unet"] is UNet
    assert BACKBONES["mlp"] is MLP


# --------------------------------------------------------------------------- init and training


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_output_exactly_zero_at_init(kind):
    torch.manual_seed(0)
    model = _make(kind)
    x = _inputs(model)
    y = model(x, torch.rand(x.shape[0]) * 2 - 1)
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_after_one_step_output_depends_on_noise_level_and_input(kind):
    torch.manual_seed(0)
    model = _make(kind)
    model.train()
    x = _inputs(model, batch=8)
    t = torch.rand(8) * 2 - 1
    target = torch.randn(8, model.out_channels, *x.shape[2:])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = (model(x, t) - target).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad()

    model.eval()
    with torch.no_grad():
        y_a = model(x, torch.full((8,), -0.5))
        y_b = model(x, torch.full((8,), 0.5))
        y_c = model(torch.randn_like(x), torch.full((8,), -0.5))
    assert (y_a - y_b).abs().max() > 1e-5
    assert (y_a - y_c).abs().max() > 1e-5

    # Second step: now that the head is non-zero, gradients reach the first layer.
    model.train()
    loss = (model(x, t) - target).square().mean()
    loss.backward()
    first = model.conv_in.weight if isinstance(model, UNet) else model.input_proj.weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    emb_first = model.noise_embedding.linear1.weight
    assert emb_first.grad is not None and emb_first.grad.abs().sum() > 0


def test_unet_trains_on_small_regression():
    torch.manual_seed(0)
    model = _small_unet(image_size=(4, 4))
    x = torch.randn(16, 2, 4, 4)
    t = torch.rand(16) * 2 - 1
    target = torch.sin(3 * t)[:, None, None, None] + x[:, :1]  # depends on t and x
    target = target.expand(16, 5, 4, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (model(x, t) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_eval_mode_is_deterministic(kind):
    torch.manual_seed(0)
    model = UNet(2, 5, (8, 8), base_channels=16, dropout=0.5) if kind == "unet" else MLP(
        2, 5, (3,), hidden=32, depth=2, dropout=0.5
    )
    # Make the head non-zero so dropout would matter.
    head = model.conv_out if kind == "unet" else model.output_proj
    torch.nn.init.normal_(head.weight)
    for name, param in model.named_parameters():  # and the MLP's adaLN-zero gates (zero at init: blocks = identity)
        if "modulation" in name:
            torch.nn.init.normal_(param, std=0.5)
    x = _inputs(model)
    t = torch.rand(x.shape[0]) * 2 - 1
    model.train()
    assert not torch.equal(model(x, t), model(x, t))  # dropout active
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))


# --------------------------------------------------------------------------- size and validation


def test_default_8x8_parameter_count_in_documented_range():
    model = UNet(in_channels=2, out_channels=17, image_size=(8, 8))
    n = _num_params(model)
    assert 1_000_000 <= n <= 1_500_000, n


@pytest.mark.parametrize(
    "image_size, channel_mults",
    [((28, 28), (1, 2, 2, 2)), ((7, 7), (1, 2)), ((8, 12), (1, 2, 2, 2)), ((0, 8), (1,))],
)
def test_bad_image_size_raises(image_size, channel_mults):
    with pytest.raises(ValueError, match="image_size"):
        UNet(1, 1, image_size, base_channels=16, channel_mults=channel_mults)


def test_bad_group_divisibility_raises():
    with pytest.raises(ValueError, match="groups"):
        UNet(1, 1, (8, 8), base_channels=12, groups=8)


def test_wrong_input_shapes_raise():
    model = _small_unet()
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 8, 8), torch.zeros(2))  # wrong C_in
    with pytest.raises(ValueError):
        model(torch.randn(2, 2, 8, 8), torch.zeros(3))  # wrong batch for noise_level
    with pytest.raises(ValueError):
        model(torch.randn(2, 2, 4, 4), torch.zeros(2))  # wrong spatial size
    mlp = MLP(2, 2, (3,), hidden=16, depth=1)
    with pytest.raises(ValueError):
        mlp(torch.randn(2, 2, 4), torch.zeros(2))


def test_scalar_noise_level_broadcasts():
    torch.manual_seed(0)
    model = _small_unet()
    torch.nn.init.normal_(model.conv_out.weight)
    model.eval()
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x, torch.tensor(0.25)), model(x, torch.full((3,), 0.25)))


def test_state_dict_roundtrip_excludes_frequency_buffer():
    model = _small_unet()
    sd = model.state_dict()
    assert not any("frequencies" in k for k in sd)
    clone = _small_unet()
    clone.load_state_dict(sd)
