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


def markov_chain_table(num_states: int, num_sites: int, sharpness: float = 2.5, seed: int = 0) -> Tensor:
    """A peaked table over all_configurations(K, D): p(x_1) prod_d p(x_d | x_{d-1}) with initial logits N(0, 1) and
    transition logits sharpness * N(0, 1) (confident neighbours, as in text), drawn from ``seed``: (K^D,) float64.
    Parallel decoding is tested on it: its sites are strongly dependent, so drawing several at once from their
    marginals shows."""
    g = torch.Generator().manual_seed(seed)
    init = torch.log_softmax(torch.randn(num_states, generator=g, dtype=torch.float64), 0)
    trans = torch.log_softmax(sharpness * torch.randn(num_states, num_states, generator=g, dtype=torch.float64), 1)
    configs = all_configurations(num_states, num_sites)
    log_p = init[configs[:, 0]]
    for d in range(1, num_sites):
        log_p = log_p + trans[configs[:, d - 1], configs[:, d]]
    return torch.softmax(log_p, 0)


class OracleDenoiser:
    """Exact p(x0^d | x_t) for data drawn from ``probs`` over all_configurations(K, D)."""

    def __init__(self, process: ForwardProcess, probs: Tensor, num_sites: int,
                 dtype: torch.dtype = torch.float32) -> None:
        expected = process.num_states ** num_sites
        if probs.numel() != expected:
            raise ValueError(f"oracle: probs must have K^D = {expected} entries, got {probs.numel()}")
        self.process = process
        self.configs = all_configurations(process.num_states, num_sites)       # (J, D)
        self.log_probs = torch.log(probs.double().reshape(-1) / probs.sum())    # (J,)
        self.dtype = dtype                      # of the Prediction (float64 for checks to 1e-10)

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
        return Prediction(x0_log_probs=log_marg.to(self.dtype), mean_missing=mean_missing.to(self.dtype))

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
        assert pred.x0_log_probs is not None and pred.mean_missing is not None   # the oracle gives both
        return Prediction(pred.x0_log_probs[index], pred.mean_missing[index])


def empirical_distribution(samples: Tensor, num_states: int) -> Tensor:
    """Histogram of samples (N, D) over all_configurations order, normalised: (K^D,) float64."""
    counts = torch.bincount(configuration_index(samples, num_states), minlength=num_states ** samples.shape[1])
    return counts.double() / samples.shape[0]


def total_variation(p: Tensor, q: Tensor) -> float:
    """0.5 * sum |p - q| for two distributions over the same support."""
    return 0.5 * float((p.double() - q.double()).abs().sum())


class ConditionalOracle:
    """The exact class-conditional model of a joint table pi(x, c) (DESIGN.md section 3, "the oracle extends").

    ``joint``: (K^D, C) non-negative weights over all_configurations(K, D) x classes. Called as
    ``(x_t, lam, labels) -> Prediction`` like a conditional network: label c in 0..C-1 gives the exact
    p(x0^d | x_t, c) (the oracle of pi(x | c)), label C (the null class) the exact p(x0^d | x_t) of the marginal
    pi(x) = sum_c pi(x, c). Also exact: p(c | x0) (``class_log_probs``) and p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0)
    (``noisy_classifier``), for guidance checks.
    """

    def __init__(self, process: ForwardProcess, joint: Tensor, num_sites: int,
                 dtype: torch.dtype = torch.float64) -> None:
        joint = joint.double()
        if joint.dim() != 2 or joint.shape[0] != process.num_states ** num_sites or bool((joint < 0).any()):
            raise ValueError(f"oracle: joint must be a non-negative ({process.num_states ** num_sites}, C) table, got "
                             f"{tuple(joint.shape)}")
        self.process, self.num_sites = process, num_sites
        self.joint = joint / joint.sum()
        self.num_classes = joint.shape[1]
        self.oracles = [OracleDenoiser(process, self.joint[:, c], num_sites, dtype) for c in range(self.num_classes)]
        self.oracles.append(OracleDenoiser(process, self.joint.sum(1), num_sites, dtype))   # the null class: pi(x)
        self.configs = self.oracles[0].configs

    def denoiser(self, label: int) -> OracleDenoiser:
        """The exact plain denoiser of class ``label`` (num_classes: the unconditional one)."""
        return self.oracles[label]

    def table(self, label: int | None = None) -> Tensor:
        """pi(x | c) over all_configurations (the marginal pi(x) for None or the null class): (K^D,) float64."""
        if label is None or label == self.num_classes:
            return self.joint.sum(1)
        return self.joint[:, label] / self.joint[:, label].sum()

    def class_log_probs(self, x0: Tensor) -> Tensor:
        """log p(c | x0) for x0 (B, D): (B, C) float64 (-inf where pi(x0) = 0)."""
        rows = self.joint[configuration_index(x0, self.process.num_states)]
        return torch.log(rows / rows.sum(1, keepdim=True))

    def __call__(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None) -> Prediction:
        if labels is None:
            labels = torch.full((xt.shape[0],), self.num_classes, dtype=torch.long)
        x0_log_probs: Tensor | None = None
        mean_missing: Tensor | None = None
        for c in torch.unique(labels).tolist():
            rows = labels == c
            pred = self.oracles[c](xt[rows], lam[rows])
            assert pred.x0_log_probs is not None and pred.mean_missing is not None   # the oracle gives both
            if x0_log_probs is None or mean_missing is None:
                x0_log_probs = pred.x0_log_probs.new_empty(xt.shape + pred.x0_log_probs.shape[-1:])
                mean_missing = pred.mean_missing.new_empty(xt.shape)
            x0_log_probs[rows], mean_missing[rows] = pred.x0_log_probs, pred.mean_missing
        return Prediction(x0_log_probs=x0_log_probs, mean_missing=mean_missing)

    def noisy_classifier(self) -> "ExactNoisyClassifier":
        """The exact noise-conditioned classifier p_t(c | x_t) of this table (for classifier guidance)."""
        return ExactNoisyClassifier(self)


class ExactNoisyClassifier:
    """The exact p_t(c | x_t) = sum_x0 p(x0 | x_t) p(c | x0)
    = sum_x0 pi(x0, c) q_t(x_t | x0) / sum_x0 pi(x0) q_t(x_t | x0)
    of a ``ConditionalOracle``'s joint table: ``(x_t (B, D), lam (B,)) -> (B, C)`` float64 log-probabilities.

    ``onehot_log_probs`` takes one_hot(x_t) (B, D, M) float and is differentiable in it (q_t(x_t^d | x0^d) =
    sum_v onehot[d, v] q_t(v | x0^d)), for the Taylor form. ``noise_level_free`` is True for masking (a mask carries
    no information whatever alpha is), so exact simulation can bound the guided rates."""

    def __init__(self, oracle: ConditionalOracle) -> None:
        self.oracle = oracle
        self.num_classes = oracle.num_classes
        self.noise_level_free = not oracle.process.posterior_depends_on_noise_level

    def onehot_log_probs(self, onehot: Tensor, lam: Tensor) -> Tensor:
        """onehot (B, D, M) float, lam (B,) -> log p_t(c | x_t) (B, C) float64 (-inf for a class with no mass)."""
        q = self.oracle.process.log_marginal_matrix(lam.double()).exp()                    # (B, K, M)
        configs = self.oracle.configs                                                       # (J, D)
        rows = q[:, configs, :]                                                             # (B, J, D, M)
        like = (rows * onehot.double()[:, None]).sum(-1).prod(-1)                           # (B, J) q_t(x_t | x0)
        weighted = like @ self.oracle.joint                                                 # (B, C)
        return torch.log(weighted) - torch.log(weighted.sum(1, keepdim=True))

    def __call__(self, xt: Tensor, lam: Tensor) -> Tensor:
        onehot = torch.nn.functional.one_hot(xt, self.oracle.process.num_values).double()
        return self.onehot_log_probs(onehot, lam)

