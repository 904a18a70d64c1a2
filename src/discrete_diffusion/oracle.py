"""The exact denoiser of a small explicit distribution, for exactness tests (DESIGN.md section 6).

Given a probability table over every configuration of a tiny state space (K^D entries), the exact
conditional p(x0^d | x_t) follows by enumeration:

    p(x0 = j | x_t) ∝ pi_j * prod_d q_t(x_t^d | j^d),   p(x0^d = k | x_t) = sum_{j: j^d = k} p(x0 = j | x_t).

Wrapped as a denoiser it makes every reverse process exact, so ELBOs must equal the table's entropy (up
to the prior and Monte-Carlo error) and samplers must converge to the table.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from .processes.base import ForwardProcess, Prediction


def all_configurations(num_states: int, num_sites: int) -> Tensor:
    """Every x in {0..K-1}^D in lexicographic order: (K^D, D) long."""
    return torch.tensor(list(itertools.product(range(num_states), repeat=num_sites)), dtype=torch.long)


def configuration_index(x: Tensor, num_states: int) -> Tensor:
    """Lexicographic index of each row of x (B, D) in all_configurations: (B,) long."""
    weights = num_states ** torch.arange(x.shape[1] - 1, -1, -1, device=x.device)
    return (x * weights).sum(1)


class OracleDenoiser:
    """Exact p(x0^d | x_t) for data drawn from ``probs`` over all_configurations(K, D)."""

    def __init__(self, process: ForwardProcess, probs: Tensor, num_sites: int) -> None:
        expected = process.num_states ** num_sites
        if probs.numel() != expected:
            raise ValueError(f"oracle: probs must have K^D = {expected} entries, got {probs.numel()}")
        self.process = process
        self.configs = all_configurations(process.num_states, num_sites)       # (J, D)
        self.log_probs = torch.log(probs.double().reshape(-1) / probs.sum())    # (J,)

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        log_q = self.process.log_marginal_matrix(lam.double())                 # (B, K, M): [b, x0, y]
        batch, num_sites = xt.shape
        # log q(x_t^d | x0 = configs[j, d]) for every b, j, d
        per_site = log_q[torch.arange(batch)[:, None, None], self.configs[None, :, :], xt[:, None, :]]
        log_post = self.log_probs[None, :] + per_site.sum(-1)                  # (B, J)
        post = torch.softmax(log_post, dim=-1)
        onehot = torch.nn.functional.one_hot(self.configs, self.process.num_states).double()  # (J, D, K)
        marginals = torch.einsum("bj,jdk->bdk", post, onehot)                  # (B, D, K)
        log_marg = torch.log(marginals.clamp_min(1e-300))
        values = torch.arange(self.process.num_states, dtype=torch.float64)
        mean_missing = (marginals * (values - xt[..., None].double())).sum(-1).clamp_min(0)
        return Prediction(x0_log_probs=log_marg.float(), mean_missing=mean_missing.float())

    def entropy(self) -> float:
        """H(p) in nats."""
        p = self.log_probs.exp()
        return float(-(p * torch.where(p > 0, self.log_probs, torch.zeros_like(p))).sum())

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples from the table: (num, D) long."""
        index = torch.multinomial(self.log_probs.exp(), num, replacement=True, generator=generator)
        return self.configs[index]


class SharedLevelOracle:
    """The oracle evaluated once per distinct x_t (all num_values^D of them) when the whole batch shares
    one noise level, as in every grid sampler, then gathered: the same numbers, far fewer enumerations."""

    def __init__(self, oracle: OracleDenoiser, num_sites: int) -> None:
        self.oracle = oracle
        self.num_values = oracle.process.num_values
        self.configs = all_configurations(self.num_values, num_sites)

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        if not bool((lam == lam[0]).all()):
            return self.oracle(xt, lam)
        pred = self.oracle(self.configs, lam[:1].expand(self.configs.shape[0]))
        index = configuration_index(xt, self.num_values)
        return Prediction(pred.x0_log_probs[index], pred.mean_missing[index])


def empirical_distribution(samples: Tensor, num_states: int) -> Tensor:
    """Histogram of samples (N, D) over all_configurations order, normalised: (K^D,) float64."""
    counts = torch.bincount(configuration_index(samples, num_states), minlength=num_states ** samples.shape[1])
    return counts.double() / samples.shape[0]


def total_variation(p: Tensor, q: Tensor) -> float:
    """0.5 * sum |p - q| for two distributions over the same support."""
    return 0.5 * float((p.double() - q.double()).abs().sum())
