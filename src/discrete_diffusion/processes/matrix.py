"""Diffusion with any CTMC rate matrix Q ("generator") on a finite state space.

References: Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022
(generic reverse rates and ELBO); Austin et al., "Structured Denoising Diffusion Models in Discrete
State-Spaces" (D3PM), NeurIPS 2021 (bridge / posterior, Gaussian and banded kernels); Lou, Meng, Ermon,
"Discrete Diffusion Modeling by Estimating the Ratios of the Data Distribution", ICML 2024 (Bregman form).

Q is (M, M) in sigma-time (sigma = -log alpha = softplus(-lam)); data values are 0..K-1 with K <= M (extra
states, such as a mask, are never data). P_t = expm(sigma Q) in float64:
- "eigen": for symmetric Q, or irreducible Q reversible with respect to its stationary pi whose
  eigenbasis is well conditioned (sqrt(max pi / min pi) <= 1e4): S = D^1/2 Q D^-1/2 is symmetric, so
  P_t = D^-1/2 U exp(sigma Lambda) U^T D^1/2 with one eigh at construction. Its entries carry absolute
  errors ~1e-16 sqrt(max pi / min pi), so it is used only for sigma c > 1/2 and only where every entry of the
  result is above 1e-8 times that factor; otherwise (t -> 0, where tiny entries such as P[x0, y] ~ sigma Q[x0, y]
  matter, or a sparse Q not yet mixed) P_t takes the all-positive Poisson sum below.
- "uniformization" otherwise: with c = max_x -Q[x, x] and the stochastic S = I + Q/c,
  P_t = sum_k Poisson(k; sigma c) S^k, evaluated by scaling and squaring with only non-negative terms (for
  M > 19 at least 2^s >= (M - 1) / 2 squarings at any sigma, so that no path between two states is cut off).
  Unlike a general-purpose matrix_exp (whose alternating Taylor terms leave absolute errors ~1e-16) every
  entry is accurate to a relative ~1e-14, structural zeros stay exactly zero and rows sum to one.

Math (DESIGN.md section 3), per site with x = x_t, all in float64:
    r_y = P_t[x0, y] / P_t[x0, x],   s_y = sum_k p(x0 = k | x_t) P_t[k, y] / P_t[k, x]
    elbo_integrand = (1 - alpha) sum_d sum_{y != x} Q[y, x] [s_y - r_y log s_y + r_y log r_y - r_y]
    reverse rate per lam, x -> y:  (1 - alpha) Q[y, x] s_y
    bridge: q(x_s | x_t, x0) ∝ P_{s->t}[x_s, x_t] P_s[x0, x_s],  P_{s->t} = expm((sigma_t - sigma_s) Q).
The total reverse rate per lam does not vanish as alpha -> 0 for a general Q, so there is no bound
c(x) sigmoid(lam) and ``reverse_rate_bound`` raises; ``reverse_rate_window_bound`` bounds it over a window of
lam instead, for the "exact-window" simulator (processes/matrix_window.py).

Parameterisation "logits": p(x0 | x_t) = softmax(net + log P_t[x0, x_t]), the Bayes posterior under a flat
prior when net = 0, which concentrates on x_t as t -> 0 and puts no mass on x0 that cannot reach x_t. For
the uniform, absorbing and pure-death generators this is exactly the UniformProcess, MaskingProcess (SUBS)
and BlackoutProcess ("logits") parameterisations.

Prior: the stationary distribution of Q when Q is irreducible, or a given ``prior`` row (required when Q is
not irreducible, e.g. absorbing or pure death). prior_kl = sum_d KL(P_1[x0^d, .] || prior), which is
infinite when the prior misses states that P_1 reaches (e.g. a delta on the mask with alpha(1) > 0).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ForwardProcess, Prediction, expand_to_sites, sample_categorical
from .generators import GENERATORS, _unreachable_pair, spectral_gap, stationary_distribution, validate_rate_matrix
from .matrix_window import bound_from_table, reachability, window_table

RatesLike = str | os.PathLike | Tensor | np.ndarray | Sequence[Sequence[float]]
EXPM_METHODS = ("auto", "eigen", "uniformization")
_SIGMA_MAX = 1e4          # sigma is clamped here (alpha = e^-10000): P_t is the limit long before
_TAYLOR_DEGREE = 18       # Poisson(0.5) tail beyond 18 jumps: ~2e-23
_MAX_CONDITION = 1e4      # sqrt(max pi / min pi) above which the eigenbasis is not trusted
_EIGEN_FLOOR = 1e-8       # the eigenbasis serves a sigma only if every entry is >= this * its condition


def _load_rates(rates: RatesLike, num_states: int | None, options: dict) -> Tensor:
    if isinstance(rates, (str, os.PathLike)):
        if isinstance(rates, str) and rates in GENERATORS:
            if num_states is None:
                raise ValueError(f"matrix process: the named generator {rates!r} needs num_states")
            return GENERATORS[rates](num_states, **options)
        path = os.fspath(rates)
        if not (path.endswith(".npy") and os.path.isfile(path)):
            raise ValueError(f"matrix process: rates={path!r} is neither a generator name "
                             f"({', '.join(GENERATORS)}) nor an existing .npy file")
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float64))
    if options:
        raise ValueError("matrix process: rates_options only apply to a named generator")
    return torch.as_tensor(np.asarray(rates, dtype=np.float64) if not isinstance(rates, Tensor) else rates)


class MatrixProcess(ForwardProcess):
    """CTMC diffusion with rate matrix Q (M x M, sigma-time) over data values 0..K-1 (K <= M).

    Args:
        num_states: K; default M (required with a named generator, which then decides M).
        rates: Q as a tensor / array / nested list, a path to a .npy file, or a name in GENERATORS.
        rates_options: keyword arguments of the named generator (e.g. {"bandwidth": 2}).
        prior: probability vector over the M states; default the stationary distribution (Q irreducible).
        normalize: divide Q by its spectral gap so that P_t approaches its limit like alpha.
        expm_method: "auto", "eigen" or "uniformization" (see the module docstring).
    """

    name = "matrix"
    parameterizations = ("logits",)

    def __init__(self, num_states: int | None = None, rates: RatesLike | None = None,
                 rates_options: dict[str, Any] | None = None, prior: Sequence[float] | Tensor | None = None,
                 normalize: bool = False, expm_method: str = "auto") -> None:
        if rates is None:
            raise ValueError("matrix process needs rates=: a rate matrix, a .npy path or one of "
                             f"{', '.join(GENERATORS)}")
        if expm_method not in EXPM_METHODS:
            raise ValueError(f"matrix process: expm_method must be one of {list(EXPM_METHODS)}, got {expm_method!r}")
        options = dict(rates_options or {})
        q = validate_rate_matrix(_load_rates(rates, num_states, options))
        size = q.shape[0]
        k = size if num_states is None else int(num_states)
        if not 2 <= k <= size:
            raise ValueError(f"matrix process: num_states must lie in 2..{size} (the rate matrix size), got {k}")
        super().__init__(k)
        self.num_values = size
        self._spec = {"rates": rates if isinstance(rates, str) and rates in GENERATORS else q.tolist(),
                      "rates_options": options, "normalize": bool(normalize), "expm_method": expm_method}
        if normalize:
            q = q / spectral_gap(q)
        self.rate_matrix = q
        self._reachable = reachability(q)                                  # (M, M) bool: k can reach x
        unreachable = _unreachable_pair(q)
        self.stationary = stationary_distribution(q) if unreachable is None else None
        self.prior = self._resolve_prior(prior, unreachable)
        self._spec["prior"] = None if prior is None else self.prior.tolist()
        self.expm_method = self._choose_method(expm_method)

    # ----- construction helpers -----------------------------------------------------------------
    def _resolve_prior(self, prior: Sequence[float] | Tensor | None, unreachable: tuple[int, int] | None) -> Tensor:
        if prior is None:
            if self.stationary is None:
                i, j = unreachable
                raise ValueError(f"matrix process: the rate matrix is not irreducible (state {j} cannot be reached "
                                 f"from state {i}), so it has no unique stationary distribution; pass prior= (a "
                                 f"probability vector over the {self.num_values} states)")
            return self.stationary
        p = torch.as_tensor(np.asarray(prior, dtype=np.float64) if not isinstance(prior, Tensor) else prior)
        p = p.detach().to("cpu", torch.float64).reshape(-1)
        if p.numel() != self.num_values or not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
            raise ValueError(f"matrix process: prior must be {self.num_values} non-negative finite numbers, "
                             f"got {p.tolist()}")
        if abs(float(p.sum()) - 1.0) > 1e-6:
            raise ValueError(f"matrix process: prior must sum to 1, got {float(p.sum())}")
        return p / p.sum()

    def _choose_method(self, requested: str) -> str:
        q = self.rate_matrix
        symmetric = bool(torch.allclose(q, q.T, rtol=0.0, atol=1e-14 * float(q.abs().max())))
        reversible = False
        if symmetric:
            sym, pi_sqrt = q, torch.ones(q.shape[0], dtype=torch.float64)
        elif self.stationary is not None and float(self.stationary.min()) > 0:
            pi = self.stationary
            flux = pi[:, None] * q
            reversible = (bool((flux - flux.T).abs().max() <= 1e-10 * flux.abs().max())
                          and math.sqrt(float(pi.max() / pi.min())) <= _MAX_CONDITION)
            pi_sqrt = pi.sqrt()
            sym = pi_sqrt[:, None] * q / pi_sqrt[None, :]
        if requested == "eigen" and not (symmetric or reversible):
            raise ValueError("matrix process: expm_method='eigen' needs a symmetric Q or an irreducible Q that is "
                             "reversible with a well-conditioned stationary distribution")
        self._uniform_rate = float((-q.diagonal()).max())
        step = torch.eye(q.shape[0], dtype=torch.float64) + q / self._uniform_rate
        powers = [torch.eye(q.shape[0], dtype=torch.float64)]
        for _ in range(_TAYLOR_DEGREE):
            powers.append(powers[-1] @ step)
        self._powers = torch.stack(powers).clamp_min(0.0)                               # (m + 1, M, M)
        if requested != "uniformization" and (symmetric or reversible):
            evals, vecs = torch.linalg.eigh(0.5 * (sym + sym.T))
            self._eigenvalues = evals.clamp_max(0.0)
            self._left = vecs / pi_sqrt[:, None]
            self._right = vecs.T * pi_sqrt[None, :]
            # its absolute errors are ~1e-16 * sqrt(pi_x / pi_k): entries above this floor are good to ~1e-8
            self._eigen_floor = _EIGEN_FLOOR * float((pi_sqrt.max() / pi_sqrt.min()))
            return "eigen"
        return "uniformization"

    # ----- transition matrices -------------------------------------------------------------------
    def transition_matrix(self, sigma: Tensor) -> Tensor:
        """P = expm(sigma Q) for sigma (B,) >= 0: (B, M, M) float64 (identity exactly where sigma = 0)."""
        sigma = sigma.double().clamp(0.0, _SIGMA_MAX)
        unique, inverse = torch.unique(sigma.cpu(), return_inverse=True)
        y = unique * self._uniform_rate
        p = torch.empty(unique.shape[0], self.num_values, self.num_values, dtype=torch.float64)
        # The eigenbasis leaves absolute errors ~1e-16, so it serves only sigma c > 1/2 and only where no entry
        # is tiny (a chain not yet mixed, e.g. banded K = 32 at sigma c ~ 1-100); elsewhere the all-positive
        # Poisson sum keeps tiny entries accurate to a relative ~1e-15 per squaring.
        large = (y > 0.5) if self.expm_method == "eigen" else torch.zeros_like(y, dtype=torch.bool)
        if bool(large.any()):
            decay = torch.exp(unique[large, None] * self._eigenvalues[None, :])          # (U', M)
            p[large] = torch.einsum("ij,uj,jk->uik", self._left, decay, self._right)
            tiny = (p[large] < self._eigen_floor).flatten(1).any(1)
            large[large.clone()] = ~tiny
        small = ~large
        if bool(small.any()):
            p[small] = self._uniformized(y[small])
        p = p.clamp(0.0, 1.0)
        p = p / p.sum(-1, keepdim=True)                                   # rows stochastic to rounding
        p = torch.where((unique == 0)[:, None, None], torch.eye(self.num_values, dtype=torch.float64), p)
        return p[inverse].to(sigma.device)

    def _uniformized(self, y: Tensor) -> Tensor:
        """expm(sigma Q) for y = c sigma (U,) float64 >= 0 by uniformization with only non-negative terms:
        (U, M, M), every entry accurate to a relative ~1e-16 per squaring (structural zeros stay zero)."""
        # the fewest squarings s with z = y / 2^s <= 1/2 (relative errors double per squaring); when a path
        # between two states can be longer than the degree (M - 1 > 18), also 2^s >= (M - 1) / 2, so that a path
        # of up to M - 1 jumps spreads over the 2^s factors with at most 18 in each but for a fraction < 1e-10
        # (with fewer, far entries come out 0 or too small: P[0, 31] of banded K = 32 was 0 at sigma c < 1/2)
        longest = self.num_values - 1
        fewest = math.ceil(math.log2(longest / 2)) if longest > _TAYLOR_DEGREE else 0
        squarings = torch.ceil(torch.log2(y.clamp_min(1e-300) / 0.5)).clamp_min(fewest).long()
        z = y / torch.pow(2.0, squarings.double())
        k = torch.arange(_TAYLOR_DEGREE + 1, dtype=torch.float64)
        log_weights = k[None, :] * torch.log(z[:, None]) - z[:, None] - torch.lgamma(k + 1)[None, :]
        weights = torch.where(z[:, None] > 0, log_weights.exp(), (k == 0).double()[None, :])
        block = torch.einsum("uk,kij->uij", weights, self._powers)          # Poisson(z)-weighted powers of S
        for step in range(int(squarings.max()) if squarings.numel() else 0):
            todo = squarings > step
            block[todo] = block[todo] @ block[todo]
        return block

    def _marginals(self, lam: Tensor) -> Tensor:
        """P_t rows for the data values: (B, K, M) float64."""
        return self.transition_matrix(F.softplus(-lam.double()))[:, : self.num_states, :]

    # ----- forward marginals -------------------------------------------------------------------
    def sample_marginal(self, x0: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        rows = self._rows(self._marginals(lam), x0)
        return sample_categorical(torch.log(rows), generator)

    def log_marginal_matrix(self, lam: Tensor) -> Tensor:
        return torch.log(self._marginals(lam))

    @staticmethod
    def _rows(p: Tensor, x0: Tensor) -> Tensor:
        """p[b, x0^d, :] for p (B, K, M), x0 (B, *sites): (B, *sites, M)."""
        flat = x0.reshape(x0.shape[0], -1)
        rows = torch.gather(p, 1, flat[:, :, None].expand(-1, -1, p.shape[-1]))
        return rows.reshape(x0.shape + (p.shape[-1],))

    @staticmethod
    def _columns(p: Tensor, xt: Tensor) -> Tensor:
        """p[b, :, x_t^d] for p (B, R, M), xt (B, *sites): (B, *sites, R)."""
        flat = xt.reshape(xt.shape[0], -1)
        cols = torch.gather(p, 2, flat[:, None, :].expand(-1, p.shape[1], -1)).transpose(1, 2)
        return cols.reshape(xt.shape + (p.shape[1],))

    # ----- prior ---------------------------------------------------------------------------------
    def prior_log_probs(self, lam: Tensor) -> Tensor:
        """log prior over the M states (independent of lam): (B, M) float64."""
        return torch.log(self.prior).to(lam.device)[None, :].expand(lam.shape[0], -1)

    def sample_prior(self, shape: tuple[int, ...], lam: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        log_prior = torch.log(self.prior).to(device).expand(tuple(shape) + (self.num_values,))
        return sample_categorical(log_prior, generator)

    def prior_kl(self, x0: Tensor, lam: Tensor) -> Tensor:
        p1 = self._marginals(lam)                                                       # (B, K, M)
        log_prior = torch.log(self.prior).to(p1.device)
        kl_rows = torch.where(p1 > 0, p1 * (torch.log(p1) - log_prior), torch.zeros_like(p1)).sum(-1)
        kl_rows = kl_rows.clamp_min(0.0)                                   # (B, K); >= 0 up to rounding
        kl = torch.gather(kl_rows, 1, x0.reshape(x0.shape[0], -1)).sum(1)
        return kl.to(torch.get_default_dtype())

    # ----- denoiser output -----------------------------------------------------------------------
    #: network_features is one_hot(x_t): an embedding backbone reads the indices (ForwardProcess.input_kind)
    input_kind = "tokens"

    @property
    def feature_channels(self) -> int:
        return self.num_values

    def network_features(self, xt: Tensor, lam: Tensor) -> Tensor:
        """One-hot of the M states as channels: (B, M, *sites) float."""
        return F.one_hot(xt, self.num_values).movedim(-1, 1).to(torch.get_default_dtype())

    def prediction_from_output(self, output: Tensor, xt: Tensor, lam: Tensor, parameterization: str) -> Prediction:
        """p(x0 | x_t) = softmax(net + log P_t[x0, x_t]): output (B, K, *sites) -> (B, *sites, K)."""
        self.check_parameterization(parameterization)
        log_lik = torch.log(self._columns(self._marginals(lam), xt)).to(output.dtype)   # (B, *sites, K)
        return Prediction(x0_log_probs=torch.log_softmax(output.movedim(1, -1) + log_lik, dim=-1))

    # ----- training and likelihood ---------------------------------------------------------------
    def ratio_estimates(self, xt: Tensor, prediction: Prediction, lam: Tensor, p: Tensor | None = None) -> Tensor:
        """s_y = sum_k p(x0 = k | x_t) P_t[k, y] / P_t[k, x_t] for all y: (B, *sites, M) float64. Mass that the
        prediction puts on x0 with P_t[x0, x_t] = 0 (impossible given x_t) is ignored."""
        p = self._marginals(lam) if p is None else p                                     # (B, K, M)
        probs = self.x0_log_probs(prediction, xt).double().exp()                       # (B, *sites, K)
        col = self._columns(p, xt)                                                      # P_t[k, x_t]
        weights = torch.where(col > 0, probs / torch.where(col > 0, col, torch.ones_like(col)),
                              torch.zeros_like(col))
        flat = weights.reshape(weights.shape[0], -1, weights.shape[-1])                  # (B, S, K)
        return torch.bmm(flat, p).reshape(xt.shape + (self.num_values,))

    def _rates_into(self, xt: Tensor) -> Tensor:
        """Q[y, x_t^d] for every y, zero at y = x_t: (B, *sites, M) float64."""
        q_in = self.rate_matrix.T.to(xt.device)[xt]
        return torch.where(F.one_hot(xt, self.num_values).bool(), torch.zeros_like(q_in), q_in)

    def elbo_integrand(self, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction) -> Tensor:
        p = self._marginals(lam)
        s = self.ratio_estimates(xt, prediction, lam, p)
        rows = self._rows(p, x0)                                                        # P_t[x0, y]
        r = rows / rows.gather(-1, xt[..., None])                                       # / P_t[x0, x_t]
        bracket = s - torch.xlogy(r, s.clamp_min(1e-300)) + torch.xlogy(r, r) - r
        q_in = self._rates_into(xt)
        terms = torch.where(q_in > 0, q_in * bracket, torch.zeros_like(bracket))
        total = torch.sigmoid(-lam.double()) * terms.reshape(terms.shape[0], -1).sum(1)
        return total.to(self.x0_log_probs(prediction, xt).dtype)

    def reconstruction_nll(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        nll = -torch.gather(self.x0_log_probs(prediction, xt), -1, x0[..., None])[..., 0]
        return nll.reshape(nll.shape[0], -1).sum(1)

    # ----- generation ------------------------------------------------------------------------------
    def bridge_probs(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor) -> Tensor:
        """q(x_s | x_t, x0) for every x_s: (B, *sites, M) float64, normalised. A pair (x0, x_t) that the
        forward process cannot produce (all weights zero) keeps x_s = x_t."""
        sigma_t, sigma_s = F.softplus(-lam_t.double()), F.softplus(-lam_s.double())
        forward = self._columns(self.transition_matrix((sigma_t - sigma_s).clamp_min(0.0)), xt)  # P_{s->t}[x_s, x_t]
        weights = forward * self._rows(self.transition_matrix(sigma_s), x0)              # * P_s[x0, x_s]
        total = weights.sum(-1, keepdim=True)
        stay = F.one_hot(xt, self.num_values).double()
        return torch.where(total > 0, weights / torch.where(total > 0, total, torch.ones_like(total)), stay)

    def bridge_from_x0(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        return sample_categorical(torch.log(self.bridge_probs(xt, x0, lam_t, lam_s)), generator)

    def reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """x -> y at (1 - alpha) Q[y, x] s_y per unit of lam, zero at y = x_t: (B, *sites, M) float64."""
        s = self.ratio_estimates(xt, prediction, lam)
        weight = expand_to_sites(torch.sigmoid(-lam.double()), xt)[..., None]
        return weight * self._rates_into(xt) * s

    def reverse_rate_window_table(self, lam_from: Tensor, lam_to: Tensor) -> Tensor:
        """Per-state upper bounds (B, M) float64 on the reverse rate per unit of lam of one site at each value x,
        valid for every lam in [lam_from, lam_to] (B,) and every prediction: >= (1 - alpha) max_k R[k, x] with
        R[k, x] = sum_{z != x} P_t[k, z] Q[z, x] / P_t[k, x]; +inf where P_t underflows (see
        ``processes/matrix_window.py`` for the math). It does not depend on x_t, so it stays valid after a jump."""
        return window_table(self, lam_from, lam_to)

    @staticmethod
    def window_bound_from_table(xt: Tensor, table: Tensor) -> Tensor:
        """The total bound (B,) float64 for x_t (B, *sites) from a ``reverse_rate_window_table`` (B, M). Raises
        ValueError when a site sits at a state whose bound is not finite."""
        return bound_from_table(xt, table)

    def reverse_rate_window_bound(self, xt: Tensor, lam_from: Tensor, lam_to: Tensor) -> Tensor:
        """An upper bound (B,) float64 on the total reverse rate per unit of lam at x_t (B, *sites), valid for
        every lam in [lam_from, lam_to] and every prediction (for the "exact-window" sampler): the sum over the
        sites of ``reverse_rate_window_table``. Raises ValueError where no finite bound exists."""
        return bound_from_table(xt, window_table(self, lam_from.double(), lam_to.double()))

    def reverse_rate_bound(self, xt: Tensor) -> Tensor:
        raise ValueError("process 'matrix' has no reverse_rate_bound: for a general Q the reverse rate per unit "
                         "of lam does not vanish as alpha -> 0, so no bound c(x) * sigmoid(lam) exists (use the "
                         "bridge sampler)")

    def config(self) -> dict:
        return {"name": self.name, "num_states": self.num_states, **self._spec}
