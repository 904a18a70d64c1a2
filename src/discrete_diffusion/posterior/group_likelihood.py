"""Exact draws from per-site laws tilted by a function of group sums (forward filtering, backward sampling).

References: Carter & Kohn, "On Gibbs sampling for state space models", Biometrika 1994, and Frühwirth-Schnatter,
"Data augmentation and dynamic linear models", 1994 (forward filtering / backward sampling); Chu et al., "Split Gibbs
Discrete Diffusion Posterior Sampling", NeurIPS 2025 (the likelihood step z | x0 it makes exact here).

Target, for each row and each disjoint group g = (d_1, ..., d_W) of sites (``SumFactors``):

    p(z_g) ∝ prod_i q_i(z^{d_i}) * exp(f_g(s_g)),   s_g = z^{d_1} + ... + z^{d_W}   (or that sum mod m),

with q_i the per-site laws (split Gibbs: the forward kernel q_t(. | x0^d)) and f_g a function of the sum (block sums:
0 at y_g, -inf elsewhere; parity: log p(y_g | s)). The partial sums S_i = z^{d_1} + ... + z^{d_i} form a Markov
chain, so the law is sampled exactly in two passes:

- forward: a_0 = [S_0 = 0], a_i(s) = sum_v a_{i-1}(s - v) q_i(v)   (log space, s - v taken mod m for parity);
- backward: S_W ~ a_W(s) exp(f_g(s)); then for i = W..1, z^{d_i} = v with probability ∝ a_{i-1}(S_i - v) q_i(v),
  S_{i-1} = S_i - v.

Cost O(W K S) per group and row (S = W (K - 1) + 1 sums, or m), memory (W + 1) S per group and row. Sites outside
every group are drawn from q alone. A group whose every sum has weight 0 (y impossible under the q_i, e.g. a
Blackout x0 whose block sums to less than y, as z <= x0: only for an x0 outside the target's support) is drawn at
the reachable sums nearest to an allowed one (so the next prior step can move x0 into the support) and reported in
``stuck``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..processes.base import sample_categorical
from .measurement import SumFactors

__all__ = ["sample_given_group_sums"]


def _shift(prev: Tensor, v: int, modulus: int | None) -> Tensor:
    """prev(s - v) over the last axis (S): a cyclic roll for sums mod m, else -inf below v."""
    if modulus is not None:
        return torch.roll(prev, v % modulus, dims=-1)
    if v == 0:
        return prev
    pad = torch.full(prev.shape[:-1] + (min(v, prev.shape[-1]),), -torch.inf, dtype=prev.dtype, device=prev.device)
    return torch.cat([pad, prev[..., :max(prev.shape[-1] - v, 0)]], dim=-1)


def _nearest_reachable(reach: Tensor, log_factor: Tensor, modulus: int | None) -> Tensor:
    """For a group whose reachable sums (``reach`` (B, G, S) > -inf) all have factor -inf: the log-weights ``reach``
    kept only at the reachable sums nearest to a sum the factor allows (cyclic distance for sums mod m), so the draw
    comes as close to satisfying y as the per-site laws permit."""
    size = reach.shape[-1]
    values = torch.arange(size, device=reach.device)
    gap = (values[:, None] - values[None, :]).abs()                             # (S, S): |s - s'|
    if modulus is not None:
        gap = torch.minimum(gap, modulus - gap)
    allowed = ~torch.isneginf(log_factor)                                       # (B, G, S')
    big = torch.tensor(float(size + 1), dtype=torch.float64, device=reach.device)
    dist = torch.where(allowed[..., None, :], gap.double(), big).amin(-1)       # (B, G, S): to the nearest allowed
    dist = torch.where(torch.isneginf(reach), big, dist)
    nearest = dist == dist.amin(-1, keepdim=True)
    return torch.where(nearest, reach, torch.full_like(reach, -torch.inf))


def sample_given_group_sums(log_q: Tensor, factors: SumFactors,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Exact draws z (B, *sites) long from prod_d q_d(z^d) prod_g exp(f_g(s_g)) (module doc).

    log_q: (B, *sites, K) float64 per-site log-laws over the values 0..K-1 (the values add up in the sums);
    factors: the groups and f (``log_factor`` (B|1, G, S)). Returns (z, stuck (B, G) bool)."""
    batch, k = log_q.shape[0], log_q.shape[-1]
    flat = log_q.double().reshape(batch, -1, k)
    z = sample_categorical(flat, generator)                                     # sites outside the groups
    index, valid = factors.index.to(flat.device), factors.valid.to(flat.device)
    groups, width = index.shape
    log_factor = factors.log_factor.to(flat.device).double().expand(batch, groups, -1)
    size = log_factor.shape[-1]
    unit = torch.full((k,), -torch.inf, dtype=torch.float64, device=flat.device)
    unit[0] = 0.0                                                               # padding: the value 0 for sure
    members = torch.where(valid[None, :, :, None], flat[:, index], unit)        # (B, G, W, K)
    start = torch.full((batch, groups, size), -torch.inf, dtype=torch.float64, device=flat.device)
    start[..., 0] = 0.0
    forward = [start]
    for i in range(width):
        prev, new = forward[-1], torch.full_like(start, -torch.inf)
        for v in range(k):
            new = torch.logaddexp(new, _shift(prev, v, factors.modulus) + members[:, :, i, v, None])
        forward.append(new)
    final = forward[-1] + log_factor
    stuck = torch.isneginf(final).all(-1)                                       # (B, G)
    if bool(stuck.any()):
        final = torch.where(stuck[..., None], _nearest_reachable(forward[-1], log_factor, factors.modulus), final)
    total = sample_categorical(final, generator)                                # S_W (B, G)
    values = torch.zeros((batch, groups, width), dtype=torch.long, device=flat.device)
    choices = torch.arange(k, device=flat.device)
    for i in reversed(range(width)):
        source = total[..., None] - choices                                     # (B, G, K): S_{i-1} = S_i - v
        if factors.modulus is not None:
            source, ok = source % factors.modulus, torch.ones_like(source, dtype=torch.bool)
        else:
            ok = (source >= 0) & (source < size)
            source = source.clamp(0, size - 1)
        logits = torch.gather(forward[i], -1, source) + members[:, :, i]
        v = sample_categorical(torch.where(ok, logits, torch.full_like(logits, -torch.inf)), generator)
        values[..., i] = v
        total = total - v if factors.modulus is None else (total - v) % factors.modulus
    z[:, index[valid]] = values[:, valid]
    return z.reshape(log_q.shape[:-1]), stuck
