"""Approximate block-wise key/value caches for block-by-block parallel decoding of a plain masked transformer run
(``-o approx_cache=prefix|dual`` of the threshold / factor samplers with ``block_size``). APPROXIMATE: see below.

Reference: Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and Parallel
Decoding", 2025 (arXiv:2505.22618), section 3.2 (block-wise approximate KV cache, "prefix" and "DualCache").

The network is a bidirectional ``SequenceTransformer`` (``forward_positions``) over S positions, decoded in blocks
of L positions (a row works in its first block that still has a MASK). For each row:

- a **refresh call** runs the whole sequence once (``keep=True``) at the row's current tokens and noise level; its
  output is the exact network output, and the keys/values of every layer at every position are kept;
- a **cached call** (the next calls of the same block) runs only part of the sequence and lets it attend to the
  kept keys/values of the rest:
  ``prefix``: runs the block and everything after it, positions [s, S), over the kept keys/values of [0, s);
  ``dual``: runs only the block, [s, e), over the kept keys/values of [0, s) and [e, S) (the suffix outputs are
  those of the refresh call; they are never committed while the row is in this block).
- the cache is refreshed at the first call of every block and, with ``refresh_every`` = k > 0, on every k-th call
  within a block (k = 1: every call is a refresh call, the uncached computation exactly).

What is exact and what is not. Within a block only the block's tokens change (the prefix is final, the suffix is
still MASK), so the kept keys/values of a position are stale only through (a) the noise level, which enters every
layer through adaLN (a time-conditioned network), and (b) attention: from layer 2 on, a position's keys/values
depend on every other position's tokens, including the block's, which changed since the refresh. Hence:

- refresh calls (and ``refresh_every=1``) are exact: the uncached output bit for bit (tested);
- a time-free network (``model.time_conditioning=false``) of depth 1: the kept keys/values are those of the
  position's own (unchanged) token at its position, so the cache is exact up to float rounding (the attention
  sums run in another order / over other matrix shapes; tested to 1e-5, not bit for bit);
- everything else, including a time-free network of depth >= 2 and the finished blocks' prefix, is approximate:
  deeper layers' keys/values of the prefix move when later positions change. The deviation is measured per call
  (``track_deviation``: max |logit difference|, |log-probability difference| and per-site TV against the
  uncached network at the block's masked sites) in
  ``benchmarks/approx_cache.py`` and docs/samplers.md.

Cost: ``positions_evaluated`` counts the positions run through the network (the refresh calls' S per row plus
the cached calls' S - s or L per row): the token-linear part of the network's FLOPs (projections and MLP) is
proportional to it; attention costs (positions run) x (keys attended).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..denoiser import NetworkDenoiser, noise_level_input
from ..nn.kv_cache import KVCache
from ..nn.transformer import SequenceTransformer
from ..processes.base import Prediction

#: The variants of ``approx_cache``.
APPROX_CACHES = ("prefix", "dual")


def cacheable(denoiser: object, any_site_shape: bool = False) -> tuple[NetworkDenoiser, SequenceTransformer]:
    """The denoiser and its backbone when an approximate cache can run it (a network denoiser of a plain masked run
    over a ``SequenceTransformer`` on 1-D token sequences, or on any site shape, flattened in raster order, with
    ``any_site_shape``); otherwise a ValueError that says what is needed."""
    if getattr(denoiser, "block_size", None) is not None:
        raise ValueError("approx_cache is for plain masked runs; a block-diffusion run (model.block_size) "
                         "decodes with its own exact KV cache")
    backbone = getattr(denoiser, "backbone", None)
    if not isinstance(denoiser, NetworkDenoiser) or not isinstance(backbone, SequenceTransformer) \
            or (len(backbone.site_shape) != 1 and not any_site_shape):
        raise ValueError("approx_cache needs a network denoiser over a sequence transformer "
                         f"(model.backbone=transformer{'' if any_site_shape else ' on 1-D sequences'})")
    if denoiser.process.input_kind != "tokens":
        raise ValueError(f"approx_cache needs a token-input process, got {denoiser.process.name!r}")
    return denoiser, backbone


class ApproxCache:
    """What the approximate caches share: a denoiser (x_t, lam) -> Prediction whose rows are addressed by their index
    in the sampler's batch (``rows(index)``; a plain call is rows 0..n-1), so each row's state is its own (batch
    invariant); cost counters; and, with ``track_deviation``, per cached call (a batched call over the rows that take
    it) against the uncached network at the sites that matter (the masked sites the sampler may commit): the max
    |logit difference|, the max |log p(x0^d) difference|, and the max and the median over those sites of the TV
    between the cached and uncached site distributions (for measurements; the maxima grow with the batch)."""

    def __init__(self, track_deviation: bool) -> None:
        self.track_deviation = bool(track_deviation)
        self.deviations: list[float] = []
        self.log_prob_deviations: list[float] = []
        self.tv_deviations: list[float] = []
        self.median_tv_deviations: list[float] = []
        #: positions run through the network (see each cache), rows of refresh calls, rows of cached calls
        self.positions_evaluated: float = 0
        self.refresh_rows = 0
        self.cached_rows = 0

    def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
        return self.predict(xt, lam, torch.arange(xt.shape[0]))

    def rows(self, index: Tensor) -> Callable[[Tensor, Tensor], Prediction]:
        """The cache restricted to batch rows ``index`` (the sampler's unfinished rows)."""
        return lambda xt, lam: self.predict(xt, lam, index)

    def predict(self, xt: Tensor, lam: Tensor, rows: Tensor) -> Prediction:
        """x_t (n, *sites) long and lam (n,) of batch rows ``rows`` (n,) -> the Prediction."""
        raise NotImplementedError

    def release(self) -> None:
        """Free the kept tensors (sampling has ended); the counters and deviations stay."""

    def record_deviation(self, exact: Tensor, cached: Tensor, sites: Tensor) -> None:
        """Compare an uncached output ``exact`` (m, K, L) with a cached one (m, K, L) at ``sites`` (m, L) bool
        (nothing is recorded when there is none)."""
        if not bool(sites.any()):
            return
        expanded = sites[:, None, :].expand(-1, exact.shape[1], -1)                     # (m, K, L)
        a, b = exact.double(), cached.double()
        la, lb = a.log_softmax(1), b.log_softmax(1)
        self.deviations.append(float((a - b).abs()[expanded].max()))
        self.log_prob_deviations.append(float((la - lb).abs()[expanded].max()))
        tv = 0.5 * (la.exp() - lb.exp()).abs().sum(1)                                   # (m, L)
        self.tv_deviations.append(float(tv[sites].max()))
        self.median_tv_deviations.append(float(tv[sites].median()))


class ApproxBlockCache(ApproxCache):
    """A denoiser (x_t, lam) -> Prediction over a ``NetworkDenoiser`` whose backbone has ``forward_positions``,
    keeping per batch row the keys/values of its last refresh call (module docstring; rows: ``ApproxCache``)."""

    def __init__(self, denoiser: object, variant: str, block_size: int, refresh_every: int, batch: int,
                 track_deviation: bool = False) -> None:
        if variant not in APPROX_CACHES:
            raise ValueError(f"unknown approx_cache {variant!r}; valid: {', '.join(APPROX_CACHES)}")
        super().__init__(track_deviation)
        self.denoiser, self.backbone = cacheable(denoiser)
        self.process = self.denoiser.process
        self.variant, self.block_size, self.refresh_every = variant, int(block_size), int(refresh_every)
        self.sites = int(self.backbone.seq_len)
        self.mask = int(self.process.mask_index)
        self.block_of = torch.full((batch,), -1, dtype=torch.long)
        self.since = torch.zeros(batch, dtype=torch.long)
        self.keys: list[Tensor] | None = None       # per layer (batch, heads, S, head_dim)
        self.values: list[Tensor] | None = None
        self.last_output: Tensor | None = None     # (batch, C_out, S): each row's latest output

    def _store(self, rows: Tensor, cache: KVCache, output: Tensor) -> None:
        if self.keys is None or self.values is None or self.last_output is None:
            n = self.block_of.shape[0]
            self.keys = [k.new_zeros((n, *k.shape[1:])) for k in cache.keys]
            self.values = [v.new_zeros((n, *v.shape[1:])) for v in cache.values]
            self.last_output = output.new_zeros((n, *output.shape[1:]))
        for i in range(len(cache.keys)):
            self.keys[i][rows] = cache.keys[i]
            self.values[i][rows] = cache.values[i]
        self.last_output[rows] = output

    def release(self) -> None:
        self.keys = self.values = self.last_output = None

    @torch.no_grad()
    def predict(self, xt: Tensor, lam: Tensor, rows: Tensor) -> Prediction:
        """x_t (n, S) long and lam (n,) of batch rows ``rows`` (n,) -> the Prediction (refresh or cached call)."""
        rows = rows.cpu()
        tokens = xt.reshape(xt.shape[0], self.sites)
        noise = noise_level_input(lam).to(tokens.device)
        masked = tokens == self.mask
        first = torch.where(masked, torch.arange(self.sites, device=tokens.device), self.sites).min(1).values
        current = (first // self.block_size).cpu()          # a row without a MASK: block S // L (refreshes)
        refresh = current != self.block_of[rows]
        if self.refresh_every > 0:
            refresh |= self.since[rows] >= self.refresh_every
        output: Tensor | None = None
        everything = torch.arange(self.sites, device=tokens.device)
        fresh = refresh.nonzero()[:, 0]
        if fresh.numel():
            out, cache = self.backbone.forward_positions(tokens[fresh.to(tokens.device)],
                                                         noise[fresh.to(tokens.device)], everything, keep=True)
            assert cache is not None
            output = out.new_empty((tokens.shape[0], *out.shape[1:]))
            output[fresh.to(out.device)] = out
            self._store(rows[fresh], cache, out)
            self.block_of[rows[fresh]] = current[fresh]
            self.since[rows[fresh]] = 0
            self.positions_evaluated += int(fresh.numel()) * self.sites
            self.refresh_rows += int(fresh.numel())
        for block in sorted(set(current[~refresh].tolist())):
            group = ((current == block) & ~refresh).nonzero()[:, 0]
            out = self._cached_call(tokens[group.to(tokens.device)], noise[group.to(tokens.device)], rows[group],
                                    block)
            if output is None:
                output = out.new_empty((tokens.shape[0], *out.shape[1:]))
            output[group.to(out.device)] = out
        self.since[rows] += 1
        assert output is not None
        output = output.reshape(tokens.shape[0], output.shape[1], *xt.shape[1:])
        return self.process.prediction_from_output(output.float(), xt, lam, self.denoiser.parameterization)

    def _cached_call(self, tokens: Tensor, noise: Tensor, rows: Tensor, block: int) -> Tensor:
        """The output (m, C_out, S) of rows in block ``block`` from the kept keys/values (module docstring)."""
        assert self.keys is not None and self.values is not None and self.last_output is not None
        start, end = block * self.block_size, min(self.sites, (block + 1) * self.block_size)
        device = tokens.device
        run = torch.arange(start, self.sites if self.variant == "prefix" else end, device=device)
        kept = torch.cat([torch.arange(0, start, device=device),
                          torch.arange(end, self.sites, device=device)]) if self.variant == "dual" \
            else torch.arange(0, start, device=device)
        past = None
        if kept.numel():
            past = KVCache([k[rows][:, :, kept] for k in self.keys], [v[rows][:, :, kept] for v in self.values], kept)
        out, _ = self.backbone.forward_positions(tokens[:, run], noise, run, past=past)
        full = self.last_output[rows].clone()
        full[:, :, run] = out.to(full.dtype)
        self.last_output[rows] = full
        self.positions_evaluated += int(rows.numel()) * int(run.numel())
        self.cached_rows += int(rows.numel())
        if self.track_deviation:
            self._track(tokens, noise, full, start, end)
        return full

    def _track(self, tokens: Tensor, noise: Tensor, cached: Tensor, start: int, end: int) -> None:
        """Compare a cached output (m, K, S) with the uncached network at the block's masked sites."""
        exact, _ = self.backbone.forward_positions(tokens, noise, torch.arange(self.sites, device=tokens.device))
        self.record_deviation(exact[:, :, start:end], cached[:, :, start:end], tokens[:, start:end] == self.mask)
