"""Test-set likelihood: the negative ELBO in bits per dimension, with its standard error.

Reference: the continuous-time ELBO of ``discrete_diffusion.losses`` (Campbell et al., NeurIPS 2022;
Lou et al., ICML 2024). bits/dim = (-ELBO in nats) / (D ln 2) with D the number of sites. The standard
error is over examples (each averaged over ``t_samples`` importance draws of lam), so it covers both the
spread of the data and the Monte-Carlo noise of the estimator.

For BPE-tokenised text a site is a token; :func:`bits_per_char` converts bits per token to bits per character
(bits/char = bits/token * T / C, T tokens decoding to C characters) so that tables compare with character models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .denoiser import Denoiser, denoiser_device
from .distributed import DistContext, pool_mean_stderr, rank_seed, shard_bounds
from .losses import LogitAlphaProposal, estimate_elbo
from .processes.base import ForwardProcess
from .schedules import Schedule


@dataclass
class LikelihoodResult:
    """An upper bound on the NLL: mean and standard error in bits per dimension, and its parts."""

    nll_bits_per_dim: float
    nll_bits_per_dim_stderr: float
    diffusion_bits_per_dim: float
    prior_bits_per_dim: float
    reconstruction_bits_per_dim: float
    num_examples: int
    t_samples: int
    prior: str
    #: H(q(x_{t=0} | x0)) in bits/dim, part of the total for a process that encodes the data randomly (jump:
    #: the bound is then on E[-log p(z_0)], z_0 ~ Poisson(lambda x0)); 0 for every finite process.
    encoding_bits_per_dim: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate_nll(process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, data: Tensor,
                 proposal: LogitAlphaProposal | None = None, t_samples: int = 16, batch_size: int = 256,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 progress: Callable[[int], None] | None = None) -> LikelihoodResult:
    """NLL upper bound of ``data`` (N, *sites) in bits per dimension. ``progress(n)`` gets each batch size.
    Batches are moved to ``device``; by default the denoiser's (``denoiser_device``: its parameters' device for a
    ``NetworkDenoiser``, else the generator's, else CPU)."""
    if data.shape[0] == 0:
        raise ValueError("cannot evaluate the likelihood of an empty split")
    device = denoiser_device(denoiser, generator) if device is None else torch.device(device)
    totals, parts = [], torch.zeros(4, dtype=torch.float64)
    for start in range(0, data.shape[0], batch_size):
        x0 = data[start:start + batch_size].to(device)
        est = estimate_elbo(process, denoiser, x0, schedule, proposal, generator, num_samples=t_samples)
        totals.append(est.total.cpu())
        encoding = est.encoding.sum() if est.encoding is not None else est.prior.new_zeros(())
        parts += torch.stack([est.diffusion.sum(), est.prior.sum(), est.reconstruction.sum(), encoding]).cpu()
        if progress is not None:
            progress(x0.shape[0])
    per_example = torch.cat(totals)
    n = per_example.numel()
    scale = 1.0 / (data[0].numel() * math.log(2.0))
    stderr = float(per_example.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    parts = parts / n * scale
    return LikelihoodResult(
        nll_bits_per_dim=float(per_example.mean()) * scale, nll_bits_per_dim_stderr=stderr * scale,
        diffusion_bits_per_dim=float(parts[0]), prior_bits_per_dim=float(parts[1]),
        reconstruction_bits_per_dim=float(parts[2]), num_examples=n, t_samples=t_samples,
        prior=getattr(process, "prior_description", "the process's prior at t = 1"),
        encoding_bits_per_dim=float(parts[3]))


def bits_per_char(bits_per_token: float, num_tokens: int, num_chars: int) -> float:
    """Bits per character of a text evaluated in tokens: ``bits_per_token * num_tokens / num_chars``.

    ``num_tokens`` tokens of the evaluated split hold ``bits_per_token * num_tokens`` bits in all, and they
    decode to ``num_chars`` characters. Raises ValueError unless both counts are positive.
    """
    if num_tokens < 1 or num_chars < 1:
        raise ValueError(f"bits per character needs positive token and character counts, got {num_tokens} tokens "
                         f"and {num_chars} characters")
    return bits_per_token * num_tokens / num_chars


# --------------------------------------------------------------------------- sharded over ranks


def evaluate_nll_sharded(ctx: DistContext, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                         data: torch.Tensor, proposal: LogitAlphaProposal | None, t_samples: int, batch_size: int,
                         seed: int, device: torch.device | str,
                         progress: Callable[[int], None] | None = None) -> LikelihoodResult:
    """:func:`~discrete_diffusion.likelihood.evaluate_nll` with the examples split over ranks.

    Each rank evaluates its contiguous shard with its own generator (:func:`rank_seed`); the per-rank
    count, sum and sum of squares of the per-example bound (and the sums of its parts) are all-reduced, so
    every rank returns the mean and standard error over the whole split, pooled exactly as one process
    would pool them. With one process this is ``evaluate_nll`` with a generator seeded by ``seed``.
    """
    def run(part: torch.Tensor, rank: int) -> LikelihoodResult:
        generator = torch.Generator(device=device).manual_seed(rank_seed(seed, rank))
        return evaluate_nll(process, denoiser, schedule, part, proposal, t_samples, batch_size, generator,
                            device, progress=progress)

    if not ctx.enabled:
        return run(data, 0)
    if data.shape[0] == 0:
        raise ValueError("cannot evaluate the likelihood of an empty split")
    start, stop = shard_bounds(data.shape[0], ctx.rank, ctx.world_size)
    local = run(data[start:stop], ctx.rank) if stop > start else None
    stats = ctx.all_reduce(likelihood_stats(local).to(ctx.collective_device(device))).cpu()
    prior = local.prior if local is not None else "the process's prior at t = 1"
    return pooled_likelihood(stats, t_samples, prior)


def likelihood_stats(result: LikelihoodResult | None) -> torch.Tensor:
    """Summable statistics of a LikelihoodResult (float64): count, sum and sum of squares of the
    per-example bound, sums of its four parts (the last the encoding entropy, jump). ``None`` (an empty shard)
    gives zeros."""
    if result is None:
        return torch.zeros(7, dtype=torch.float64)
    n, mean = result.num_examples, result.nll_bits_per_dim
    sq = mean * mean if n == 1 else (n - 1) * result.nll_bits_per_dim_stderr ** 2 * n + n * mean * mean
    return torch.tensor([n, n * mean, sq, n * result.diffusion_bits_per_dim, n * result.prior_bits_per_dim,
                         n * result.reconstruction_bits_per_dim, n * result.encoding_bits_per_dim],
                        dtype=torch.float64)


def pooled_likelihood(stats: torch.Tensor, t_samples: int, prior: str) -> LikelihoodResult:
    """The LikelihoodResult of the union of the shards whose :func:`likelihood_stats` summed to ``stats``."""
    n = float(stats[0])
    mean, stderr = pool_mean_stderr(n, float(stats[1]), float(stats[2]))
    return LikelihoodResult(nll_bits_per_dim=mean, nll_bits_per_dim_stderr=stderr,
                            diffusion_bits_per_dim=float(stats[3]) / n, prior_bits_per_dim=float(stats[4]) / n,
                            reconstruction_bits_per_dim=float(stats[5]) / n, num_examples=int(n),
                            t_samples=t_samples, prior=prior, encoding_bits_per_dim=float(stats[6]) / n)
