"""The reference benchmark's bare MDLM loop (benchmarks/reference_loop.py) computes what the library computes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.processes import build_process

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_loop.py"
_spec = importlib.util.spec_from_file_location("reference_loop", _PATH)
ref = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("reference_loop", ref)          # the module's dataclass looks itself up there
_spec.loader.exec_module(ref)

CONFIG = ref.Config("tiny", 11, 8, 16, 1, 2, 6, 5)


def _perturbed(config: ref.Config) -> tuple:
    """The seeded trunk with random output and block-modulation weights (at initialisation it outputs 0)."""
    net = ref.build_network(config, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        net.output_proj.weight.normal_(0.0, 0.5, generator=gen)
        for block in net.blocks:
            block.modulation.weight.normal_(0.0, 0.1, generator=gen)
    return net, NetworkDenoiser(net, build_process("masking", config.k), "logits")


def test_reference_loss_equals_library_loss_and_gradient_at_fixed_t_and_mask() -> None:
    net, denoiser = _perturbed(CONFIG)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, CONFIG.k, (CONFIG.batch, CONFIG.length), generator=gen)
    t, v = ref.reference_draw(x0, gen)
    assert bool(((t >= ref.T_MIN) & (t <= 1.0)).all())
    masked = v >= ref.reference_alpha(t)[:, None]
    assert 0 < int(masked.sum()) < masked.numel()            # some sites masked, some not
    losses, grads = [], []
    for compute in (lambda: ref.reference_loss(net, x0, t, v), lambda: ref.library_loss_at(denoiser, x0, t, v)):
        net.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.grad is not None]))
    assert losses[0] > 0
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0.0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)
    # the hand-written weight (1 - eps) / (1 - alpha) * CE at masked sites, from the network's log-softmax
    with torch.no_grad():
        alpha = ref.reference_alpha(t)
        xt = torch.where(masked, torch.full_like(x0, CONFIG.k), x0)
        log_p = torch.log_softmax(net(xt, ref.reference_noise_level(alpha)).double(), dim=1)
        nll = -log_p.gather(1, x0[:, None])[:, 0]
        manual = ((1 - ref.EPS) / (1 - alpha))[:, None] * nll * masked
    torch.testing.assert_close(losses[0].double(), manual.mean(), rtol=1e-5, atol=0.0)


def test_reference_sampler_unmasks_every_site_and_follows_the_prediction() -> None:
    """Every site ends unmasked; with a one-step sampler every site is drawn from softmax(logits) at all-MASK."""
    net, _ = _perturbed(CONFIG)
    gen = torch.Generator().manual_seed(1)
    x = ref.reference_sample(net, 4, 5, gen, torch.device("cpu"))
    assert x.shape == (4, CONFIG.length) and bool(((x >= 0) & (x < CONFIG.k)).all())
    batch = 4000
    x = ref.reference_sample(net, batch, 1, gen, torch.device("cpu"))          # one step: t = 1 -> 0
    with torch.no_grad():
        alpha = ref.reference_alpha(torch.ones(1, dtype=torch.float64))
        all_mask = torch.full((1, CONFIG.length), CONFIG.k)
        probs = torch.softmax(net(all_mask, ref.reference_noise_level(alpha)).double(), dim=1)[0, :, 0]
    freq = torch.bincount(x[:, 0], minlength=CONFIG.k).double() / batch
    assert float((freq - probs).abs().sum()) / 2 < 0.04                       # TV at site 0; MC noise ~0.02
