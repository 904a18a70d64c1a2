"""The reference benchmark's bare MDLM loop (benchmarks/reference_loop.py) computes what the library computes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from discrete_diffusion.denoiser import NetworkDenoiser
from discrete_diffusion.processes import build_process
from discrete_diffusion.processes.base import Prediction

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


def test_masking_prediction_under_autograd_saves_no_copy_of_the_logits() -> None:
    """SUBS and the ELBO integrand under autograd keep, for the backward, no tensor of the logits' size but the
    prediction itself (log_softmax saved its (B, L, K) output and the integrand's gather the SUBS copy: 28.6
    against 20.9 GiB at K = 50,257 on an H200); values and gradients stay those of log_softmax with SUBS."""
    k, batch, length = 37, 3, 10
    process = build_process("masking", k)
    gen = torch.Generator().manual_seed(2)
    output = torch.randn(batch, k, length, generator=gen, requires_grad=True)
    xt = torch.randint(0, k + 1, (batch, length), generator=gen)
    xt[0, :3] = k
    xt[1, :3] = 0
    x0 = torch.where(xt == k, torch.randint(0, k, xt.shape, generator=gen), xt)
    big = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.numel() >= batch * length * k:
            big.add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        log_probs = process.prediction_from_output(output, xt, torch.zeros(batch), "logits").x0_log_probs
        loss = process.elbo_integrand(x0, xt, torch.zeros(batch), Prediction(log_probs)).sum() * 2   # alpha = 1/2
    assert big <= {log_probs.untyped_storage().data_ptr()}       # at most the prediction itself
    (grad,) = torch.autograd.grad(loss, output)
    expected = torch.log_softmax(output.detach().double().movedim(1, -1), dim=-1)
    unmasked = xt != k
    expected[unmasked] = -torch.inf
    expected[unmasked.nonzero(as_tuple=True) + (xt[unmasked],)] = 0.0
    torch.testing.assert_close(log_probs.detach().double(), expected, rtol=0, atol=1e-5)
    probs = expected.exp().masked_fill(unmasked[..., None], 0.0)
    manual = (probs - torch.nn.functional.one_hot(x0, k) * (xt == k)[..., None]).movedim(-1, 1)
    torch.testing.assert_close(grad.double(), manual, rtol=0, atol=1e-5)
    with torch.no_grad():                                     # the sampling path: same values
        again = process.prediction_from_output(output.detach(), xt, torch.zeros(batch), "logits").x0_log_probs
    torch.testing.assert_close(again.double(), expected, rtol=0, atol=1e-5)


class _SoftmaxWork(torch.overrides.TorchFunctionMode):
    """Counts the values that pass through log_softmax (function or method)."""

    def __init__(self) -> None:
        super().__init__()
        self.values = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("log_softmax", "_log_softmax"):
            self.values += args[0].numel()
        return func(*args, **(kwargs or {}))


def test_masking_bridge_step_reads_only_the_sites_that_unmask() -> None:
    """Sampling: the SUBS log-softmax is computed at the sites that unmask only (the reference's work; before, over
    every (B, L, K) value each step), and the draws are those from the full SUBS log-probs."""
    k, batch, length = 29, 4, 50
    process = build_process("masking", k)
    gen = torch.Generator().manual_seed(4)
    output = torch.randn(batch, k, length, generator=gen)
    xt = torch.where(torch.rand(batch, length, generator=gen) < 0.7, k, torch.randint(0, k, (batch, length),
                                                                                       generator=gen))
    lam_t, lam_s = torch.full((batch,), -1.0), torch.full((batch,), -0.5)
    with torch.no_grad(), _SoftmaxWork() as work:
        prediction = process.prediction_from_output(output, xt, lam_t, "logits")
        fast = process.bridge_step(xt, prediction, lam_t, lam_s, torch.Generator().manual_seed(9))
    unmasked_now = int(((xt == k) & (fast != k)).sum())
    assert 0 < unmasked_now < int((xt == k).sum())
    assert work.values == unmasked_now * k
    full = Prediction(x0_log_probs=process.prediction_from_output(output, xt, lam_t, "logits").x0_log_probs.clone())
    slow = process.bridge_step(xt, full, lam_t, lam_s, torch.Generator().manual_seed(9))
    assert torch.equal(fast, slow)
