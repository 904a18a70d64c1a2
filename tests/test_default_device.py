"""Sampling and evaluation follow the denoiser's device when the caller names none (issue 10, item 6).

There is no GPU here, so the "meta" device stands in for CUDA: a module whose parameter lives on meta, or a
generator reporting meta, must make the entry points work on meta instead of silently on CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from discrete_diffusion.likelihood import evaluate_nll
from discrete_diffusion.processes import build_process
from discrete_diffusion.samplers import SAMPLERS, build_sampler
from discrete_diffusion.schedules import build_schedule

META = torch.device("meta")


class _Stop(Exception):
    """Raised by the fakes once they have seen the device."""


class _MetaModule(nn.Module):
    """A denoiser module whose weights live on the meta device; records the device of x_t, then stops."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device=META))
        self.seen: list[torch.device] = []

    def forward(self, xt: torch.Tensor, lam: torch.Tensor):
        self.seen.append(xt.device)
        raise _Stop


def _process_for(name: str):
    supported = SAMPLERS[name].supported_processes
    process_name = "masking" if supported is None or "masking" in supported else supported[0]
    return build_process(process_name, 3, **({"rates": "uniform"} if process_name == "matrix" else {}))


def _prior_device(monkeypatch, name: str, denoiser, generator, **kwargs) -> torch.device:
    """The device the sampler asks the prior for (the first thing every sampler draws)."""
    process = _process_for(name)
    seen = []

    def prior(shape, lam, generator=None, device="cpu"):
        seen.append(torch.device(device))
        raise _Stop

    monkeypatch.setattr(process, "sample_prior", prior)
    with pytest.raises(_Stop):
        build_sampler(name, num_steps=2).sample(process, denoiser, build_schedule("log-linear"), (2, 2),
                                                 generator, **kwargs)
    return seen[0]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_follows_the_network_denoisers_device(monkeypatch, name):
    assert _prior_device(monkeypatch, name, _MetaModule(), None) == META


@pytest.mark.parametrize("name", ["bridge", "exact", "exact-window"])
def test_sampler_follows_the_generator_then_cpu(monkeypatch, name):
    def plain(xt, lam):  # not a module: no device of its own
        raise AssertionError("not reached")

    assert _prior_device(monkeypatch, name, plain, SimpleNamespace(device=META)) == META
    assert _prior_device(monkeypatch, name, plain, None) == torch.device("cpu")
    assert _prior_device(monkeypatch, name, _MetaModule(), None, device="cpu") == torch.device("cpu")


def test_sampler_names_a_generator_on_the_wrong_device():
    process = build_process("masking", 3)
    with pytest.raises(ValueError, match="generator is on cpu but sampling runs on meta"):
        build_sampler("bridge", num_steps=2).sample(process, _MetaModule(), build_schedule("log-linear"), (2, 2),
                                                    torch.Generator())


def test_sampler_runs_a_meta_network_end_to_end_without_device():
    """Not only the prior: the denoiser itself receives x_t on its own device."""
    denoiser = _MetaModule()
    with pytest.raises(_Stop):
        build_sampler("bridge", num_steps=2).sample(build_process("masking", 3), denoiser,
                                                    build_schedule("log-linear"), (2, 2))
    assert denoiser.seen == [META]


def test_evaluate_nll_follows_the_network_denoisers_device():
    denoiser = _MetaModule()
    with pytest.raises(_Stop):
        evaluate_nll(build_process("masking", 3), denoiser, build_schedule("log-linear"),
                     torch.zeros(4, 2, dtype=torch.long), t_samples=1)
    assert denoiser.seen == [META]


def test_denoiser_device_order():
    from discrete_diffusion.denoiser import denoiser_device

    module = nn.Linear(2, 2)
    assert denoiser_device(module) == torch.device("cpu")
    assert denoiser_device(_MetaModule(), torch.Generator()) == META           # parameters win
    assert denoiser_device(nn.Identity(), SimpleNamespace(device=META)) == META  # no tensors: the generator
    assert denoiser_device(lambda xt, lam: None) == torch.device("cpu")
