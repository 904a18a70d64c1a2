"""A bound on a matrix process's total reverse rate over a window of lam, valid for every prediction.

References: Lewis & Shedler, "Simulation of nonhomogeneous Poisson processes by thinning", 1979 (thinning
needs a rate bound); Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022
(the reverse rates); Grassmann, "Transient solutions in Markovian queueing systems", 1977 (uniformization).

Math (DESIGN.md section 3). With P_s = expm(s Q), q_x = -Q[x, x], Q_off = Q without its diagonal and
1 - alpha = sigmoid(-lam), the reverse rate per unit of lam of one site at value x under a prediction p(x0 | x_t) is

    (1 - alpha) sum_k p_k R_s[k, x],    R_s[k, x] = sum_{z != x} P_s[k, z] Q[z, x] / P_s[k, x]

over data values k that reach x (the rate goes INTO x: Q[z, x], as in ``MatrixProcess._rates_into``). For every
prediction it is at most (1 - alpha) max_k R_s[k, x], which a prediction sure of the maximising k attains.

A cell [lam_lo, lam_hi] covers sigma in [a, b] = [sigma(lam_hi), sigma(lam_lo)]; h = b - a, A = P_a, B = P_b.
For every sigma in the cell (E_d = expm(d Q) is stochastic with E_d[x, x] >= exp(-q_x d), and E_d commutes
with A), entry by entry:

    P_sigma[k, x] >= exp(-q_x h) A[k, x]                                    (P_sigma = A E_d: no jump out of x)
    P_sigma[k, x] >= w_k A[k, x] + (1 - w_k) min_z A[z, x],   w_k = exp(-q_k h)     (P_sigma = E_d A: a row mix)
    P_sigma[k, z] <= exp(q_z h) B[k, z]                                     (B = P_sigma E_{b - sigma})
    P_sigma[k, z] <= w_k A[k, z] + (1 - w_k) max_z' A[z', z]

so R_sigma[k, x] <= (U Q_off)[k, x] / L[k, x] with U the smaller upper and L the larger lower bound, and the cell's
bound per state is (1 - alpha(lam_lo)) max_k of that. The first pair is tight when q h is small, the second once
P has mixed (columns of A nearly constant), where the first loses a factor exp(q h). Nothing is truncated, so
no term can underflow the bound to 0. A window is bisected in lam until each cell's bound is within
``SLACK`` of the exact worst-case rate at the cell's two ends (a lower bound on the worst case inside it), at
most 2^MAX_DEPTH cells. A and B come from uniformization (all terms >= 0: relative accuracy ~1e-13 even for tiny
entries); the bound carries a relative ``MARGIN`` for rounding. A pair (k, x) that Q connects but whose A[k, x]
underflows to 0 (a far state at lam ~ 25) admits no finite bound: that state's bound is +inf, and
``bound_from_table`` raises when a site is there.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class UniformizedGenerator(Protocol):
    """What the bounds read from a :class:`~discrete_diffusion.processes.matrix.MatrixProcess` (structural type,
    so this module does not import the process that imports it)."""

    rate_matrix: Tensor          # (M, M) generator Q
    num_states: int              # K data values
    num_values: int              # M states (K, plus a mask index where there is one)
    _reachable: Tensor           # (M, M) bool: x reachable from z
    _uniform_rate: float         # uniformization rate

    def _uniformized(self, sigmas: Tensor) -> Tensor: ...

SLACK = 2.0          # a cell is split until its bound is within this factor of the worst case at its ends
MAX_DEPTH = 12       # at most 2^12 cells per window
MARGIN = 1e-6        # relative margin for rounding in P (uniformization: ~1e-16 per squaring)
_CHUNK = 1024        # cells evaluated at once (memory ~ 10 * chunk * M^2 doubles)


def reachability(q: Tensor) -> Tensor:
    """reach[k, x]: the chain with generator Q (M, M) can get from k to x (k = x included): (M, M) bool."""
    m = q.shape[0]
    step = ((q > 0) | torch.eye(m, dtype=torch.bool)).double()
    reach = step
    for _ in range(max(1, math.ceil(math.log2(m))) + 1):
        reach = ((reach @ reach) > 0).double()
    return reach.bool()


def _worst_rates(p: Tensor, q_off: Tensor, reach: Tensor) -> Tensor:
    """max_k R[k, x] for rows p = P[:, :K, :] (n, K, M): (n, M); k with P[k, x] = 0 are ignored (as in
    ``MatrixProcess.ratio_estimates``)."""
    usable = reach & (p > 0)
    ratio = (p @ q_off) / torch.where(usable, p, torch.ones_like(p))
    return torch.where(usable, ratio, torch.zeros_like(ratio)).amax(1)


def cell_bounds(process: UniformizedGenerator, lam_lo: Tensor, lam_hi: Tensor) -> tuple[Tensor, Tensor]:
    """For cells [lam_lo, lam_hi] (n,) float64: (bound, worst_at_ends), each (n, M) float64. ``bound[i, x]`` is
    >= the reverse rate per unit lam of one site at x for every prediction and every lam in cell i (+inf where
    it cannot be bounded); ``worst_at_ends[i, x]`` is the exact worst case over predictions at the cell's ends."""
    q = process.rate_matrix.to(lam_lo.device)
    k = process.num_states
    out = -q.diagonal()                                                                  # q_x (M,)
    q_off = q + torch.diag(out)
    reach = process._reachable[:k].to(lam_lo.device)                                     # (K, M)
    n = lam_lo.shape[0]
    sigma_b, sigma_a = F.softplus(-lam_lo), F.softplus(-lam_hi)
    mats = process._uniformized(process._uniform_rate * torch.cat([sigma_a, sigma_b]).cpu()).to(lam_lo.device)
    a_full, b_full = mats[:n].clamp_min(0.0), mats[n:].clamp_min(0.0)                    # (n, M, M)
    a, b = a_full[:, :k], b_full[:, :k]                                                  # (n, K, M)
    h = (sigma_b - sigma_a).clamp_min(0.0)[:, None]                                      # (n, 1)
    w = torch.exp(-out[None, :k] * h)[:, :, None]                                        # (n, K, 1)
    lower = torch.maximum(torch.exp(-out[None, :] * h)[:, None, :] * a,
                          w * a + (1.0 - w) * a_full.amin(1)[:, None, :])
    upper = torch.minimum(torch.exp((out[None, :] * h).clamp_max(700.0))[:, None, :] * b,
                          w * a + (1.0 - w) * a_full.amax(1)[:, None, :])
    numer = upper @ q_off                                                                # (n, K, M)
    usable = reach & (lower > 0)
    ratio = torch.where(usable, numer / torch.where(usable, lower, torch.ones_like(lower)), torch.zeros_like(numer))
    ratio = torch.where(reach & (lower <= 0) & (numer > 0), torch.full_like(ratio, math.inf), ratio)
    bound = torch.sigmoid(-lam_lo)[:, None] * ratio.amax(1) * (1.0 + MARGIN)
    ends = torch.maximum(torch.sigmoid(-lam_hi)[:, None] * _worst_rates(a, q_off, reach),
                         torch.sigmoid(-lam_lo)[:, None] * _worst_rates(b, q_off, reach))
    return bound, ends


def window_table(process: UniformizedGenerator, lam_from: Tensor, lam_to: Tensor) -> Tensor:
    """Per-state bounds (B, M) float64 on the reverse rate per unit lam of one site, valid for every lam in
    [lam_from, lam_to] (B,) and every prediction, by bisecting each window (module docstring)."""
    lam_lo = lam_from.double()
    lam_hi = torch.maximum(lam_to.double(), lam_lo)
    owner = torch.arange(lam_lo.shape[0], device=lam_lo.device)
    table = torch.zeros(lam_lo.shape[0], process.num_values, dtype=torch.float64, device=lam_lo.device)
    for depth in range(MAX_DEPTH + 1):
        parts = [cell_bounds(process, lam_lo[i:i + _CHUNK], lam_hi[i:i + _CHUNK])
                 for i in range(0, lam_lo.shape[0], _CHUNK)]
        bound = torch.cat([p[0] for p in parts])
        ends = torch.cat([p[1] for p in parts])
        tight = ((bound <= SLACK * ends) | (bound == 0) | torch.isinf(bound)).all(1)
        narrow = (lam_hi - lam_lo) <= 1e-9 * (1.0 + lam_lo.abs())
        done = tight | narrow | (depth == MAX_DEPTH)
        table.scatter_reduce_(0, owner[done, None].expand(-1, table.shape[1]), bound[done], "amax")
        split = ~done
        if not bool(split.any()):
            break
        mid = 0.5 * (lam_lo[split] + lam_hi[split])
        lam_lo, lam_hi = torch.cat([lam_lo[split], mid]), torch.cat([mid, lam_hi[split]])
        owner = torch.cat([owner[split], owner[split]])
    return table


def bound_from_table(xt: Tensor, table: Tensor) -> Tensor:
    """Sum over the sites of x_t (B, *sites) of the per-state bounds ``table`` (B, M): (B,) float64. Raises
    ValueError when a site sits at a state without a finite bound (its P_t entries underflow)."""
    per_site = torch.gather(table, 1, xt.reshape(xt.shape[0], -1))
    if not bool(torch.isfinite(per_site).all()):
        state = int(xt.reshape(xt.shape[0], -1)[~torch.isfinite(per_site)][0])
        raise ValueError(f"exact-window: no finite reverse-rate bound at state {state}: P_t[x0, {state}] underflows "
                         f"to 0 for a reachable x0 at this noise level; use a lower lam_stop")
    return per_site.sum(1)
