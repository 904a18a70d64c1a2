"""The partial-refresh caches of threshold / factor decoding on a plain masked transformer run
(``-o approx_cache=partial|vverify -o refresh_ratio=rho``): each call recomputes, in every layer, the linear maps of
only the rho S positions whose input moved most and reuses the kept features of the rest. APPROXIMATE: see below.

Reference: Liu et al., "dLLM-Cache: Accelerating Diffusion Large Language Models with Adaptive Caching", 2025
(arXiv:2506.06295), section 3 (adaptive partial update with V-verify). The network-level algorithm is in
nn/partial_refresh.py: ``vverify`` is dLLM-Cache's rule (only the selected positions attend; the others keep their
attention output), ``partial`` this library's variant (every position attends over the new values, so a masked site
sees a neighbour committed since; queries, keys and the MLP only at the selected positions).

For each row of the sampler's batch (its own state, so rows do not depend on their batch-mates):

- a **refresh call** runs the whole network (``full_pass``): its output is the uncached network's bit for bit, and it
  keeps every layer's features. A row's call is a refresh call when the row has no features yet (its first call),
  when ``refresh_every`` = k > 0 calls have passed since its last refresh, and, with ``block_size``, at the first
  call of each block (Fast-dLLM's per-block refresh);
- any other call is a **partial call** (``partial_pass``): r = ceil(rho S) positions per layer are recomputed, the
  rest reuse their kept features.

Exact: refresh calls (bit for bit), hence ``refresh_ratio=1`` (every call is a refresh call) and ``refresh_every=1``
are uncached decoding bit for bit (tested). Everything else is approximate: a position that is not refreshed in a
layer keeps features computed from older inputs (tokens committed since, another noise level). The deviation is
measured per call (``track_deviation``, ``ApproxCache``) in benchmarks/approx_cache.py and docs/samplers.md.

Cost: ``positions_evaluated`` counts positions in units of one position through the whole network, weighted by
the multiply-accumulates of the linear maps (blocks and output head): S per refresh call, S x ``relative_cost`` per
partial call (nn/partial_refresh.py; at MLP ratio 4 and a small head, rho = 0.25 costs about 0.31 (vverify) or 0.38
(partial) of a full call, whatever the width). So it is comparable with the other caches' positions; attention scores
are not counted (S x S per layer for ``partial``, r x S for ``vverify``).

Memory: per row and layer the kept features of the rule (``KEPT_FIELDS``): five (partial) or four (vverify)
S x dim tensors, against two for the block caches' keys and values; released when sampling ends.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from ..denoiser import noise_level_input
from ..nn.partial_refresh import KEPT_FIELDS, LayerFeatures, full_pass, partial_pass, relative_cost
from ..processes.base import Prediction
from .approx_cache import ApproxCache, cacheable

#: ``approx_cache`` name -> the attention rule of nn/partial_refresh.py
PARTIAL_CACHES = {"partial": "all", "vverify": "selected"}
_ALL_FIELDS = tuple(field.name for field in dataclasses.fields(LayerFeatures))


def check_refresh_ratio(refresh_ratio: object, who: str) -> float:
    """``refresh_ratio`` as a float in (0, 1]; a one-line ValueError naming ``who`` otherwise."""
    if isinstance(refresh_ratio, bool) or not isinstance(refresh_ratio, (int, float)) or not 0 < refresh_ratio <= 1:
        raise ValueError(f"{who}refresh_ratio must be a number in (0, 1], got {refresh_ratio!r}")
    return float(refresh_ratio)


class PartialRefreshCache(ApproxCache):
    """A denoiser (x_t, lam) -> Prediction over a masked run's ``NetworkDenoiser`` with a ``SequenceTransformer``
    backbone, keeping per batch row the features of its last calls (module docstring). ``variant``: "partial" or
    "vverify"; ``refresh_ratio`` rho in (0, 1] (1: every call is a refresh call; below 1 it must leave at least
    one position out); ``refresh_every`` k >= 0 (0: refresh only at a row's first call and, with ``block_size`` > 0,
    at each new block); ``batch``: the sampler's batch size (rows are addressed by their index in it:
    ``ApproxCache``)."""

    def __init__(self, denoiser: object, variant: str, refresh_ratio: float, refresh_every: int, block_size: int,
                 batch: int, track_deviation: bool = False) -> None:
        if variant not in PARTIAL_CACHES:
            raise ValueError(f"unknown partial cache {variant!r}; valid: {', '.join(PARTIAL_CACHES)}")
        refresh_ratio = check_refresh_ratio(refresh_ratio, "")
        super().__init__(track_deviation)
        self.denoiser, self.backbone = cacheable(denoiser, any_site_shape=True)
        self.process = self.denoiser.process
        self.sites = int(self.backbone.seq_len)
        self.count = min(self.sites, math.ceil(round(refresh_ratio * self.sites, 9)))
        if refresh_ratio < 1 and self.count >= self.sites:
            raise ValueError(f"refresh_ratio={refresh_ratio} recomputes all {self.sites} positions "
                             f"(ceil({refresh_ratio} x {self.sites}) = {self.count}), so it would have no effect; "
                             f"use refresh_ratio=1 (uncached) or at most {(self.sites - 1) / self.sites:.4g}")
        self.refresh_every, self.block_size = int(refresh_every), int(block_size)
        self.mask = int(self.process.mask_index)
        self.attend = PARTIAL_CACHES[variant]
        self.fields = KEPT_FIELDS[self.attend]
        #: one partial call of one row, in whole-network positions (module docstring)
        self.partial_cost = self.sites * relative_cost(self.backbone, self.count, self.attend)
        self.has_features = torch.zeros(batch, dtype=torch.bool)
        self.block_of = torch.full((batch,), -1, dtype=torch.long)
        self.since = torch.zeros(batch, dtype=torch.long)
        self.features: list[LayerFeatures] | None = None      # per layer, (batch, ...) storage

    def release(self) -> None:
        self.features = None

    def _whole_batch(self, rows: Tensor) -> bool:
        return rows.numel() == self.has_features.numel() and bool((rows == torch.arange(rows.numel())).all())

    def _layer(self, get: dict[str, Tensor]) -> LayerFeatures:
        return LayerFeatures(**{name: get.get(name) for name in _ALL_FIELDS})

    def _store(self, rows: Tensor, features: list[LayerFeatures]) -> None:
        """Keep the rule's fields of ``features`` (of batch rows ``rows``)."""
        kept = [self._layer({name: getattr(f, name) for name in self.fields}) for f in features]
        if self._whole_batch(rows):      # every row, in order: keep the new tensors themselves (no copy)
            self.features = kept
            return
        if self.features is None:
            n = self.has_features.shape[0]
            self.features = [self._layer({name: getattr(f, name).new_zeros((n, *getattr(f, name).shape[1:]))
                                          for name in self.fields}) for f in kept]
        for storage, fresh in zip(self.features, kept):
            for name in self.fields:
                getattr(storage, name)[rows] = getattr(fresh, name)

    def _kept(self, rows: Tensor) -> list[LayerFeatures]:
        assert self.features is not None
        if self._whole_batch(rows):      # partial_pass does not modify its inputs
            return self.features
        return [self._layer({name: getattr(f, name)[rows] for name in self.fields}) for f in self.features]

    @torch.no_grad()
    def predict(self, xt: Tensor, lam: Tensor, rows: Tensor) -> Prediction:
        """x_t (n, *sites) long and lam (n,) of batch rows ``rows`` (n,) -> the Prediction (refresh or partial
        calls)."""
        rows = rows.cpu()
        tokens = xt.reshape(xt.shape[0], self.sites)
        noise = noise_level_input(lam).to(tokens.device)
        masked = tokens == self.mask
        every_call = self.count >= self.sites                 # refresh_ratio = 1: the uncached network, no state
        refresh = torch.ones(len(rows), dtype=torch.bool) if every_call else ~self.has_features[rows]
        if self.refresh_every > 0:
            refresh |= self.since[rows] >= self.refresh_every
        current = torch.zeros(len(rows), dtype=torch.long)
        if self.block_size > 0:
            first = torch.where(masked, torch.arange(self.sites, device=tokens.device), self.sites).min(1).values
            current = (first // self.block_size).cpu()
            refresh |= current != self.block_of[rows]
        output: Tensor | None = None
        for is_refresh in (True, False):
            group = (refresh == is_refresh).nonzero()[:, 0]
            if group.numel() == 0:
                continue
            at = group.to(tokens.device)
            if is_refresh:
                out, features = full_pass(self.backbone, tokens[at], noise[at])
                self.positions_evaluated += int(group.numel()) * self.sites
                self.refresh_rows += int(group.numel())
                self.since[rows[group]] = 0
                self.has_features[rows[group]] = True
            else:
                out, features = partial_pass(self.backbone, tokens[at], noise[at], self._kept(rows[group]), self.count,
                                             self.attend)
                self.positions_evaluated += int(group.numel()) * self.partial_cost
                self.cached_rows += int(group.numel())
                if self.track_deviation:
                    self._track(tokens[at], noise[at], out, current[group])
            if not every_call:
                self._store(rows[group], features)
            if output is None:
                output = out.new_empty((tokens.shape[0], *out.shape[1:]))
            output[at] = out
        self.block_of[rows] = current
        self.since[rows] += 1
        assert output is not None
        output = output.reshape(tokens.shape[0], output.shape[1], *xt.shape[1:])
        return self.process.prediction_from_output(output.float(), xt, lam, self.denoiser.parameterization)

    def _track(self, tokens: Tensor, noise: Tensor, cached: Tensor, blocks: Tensor) -> None:
        """Compare partial-call outputs (m, K, S) with the uncached network at the masked sites the sampler may
        commit (those of each row's current block when ``block_size`` is set)."""
        exact, _ = full_pass(self.backbone, tokens, noise)
        sites = tokens == self.mask
        if self.block_size > 0:
            block = torch.arange(self.sites, device=tokens.device) // self.block_size
            sites &= block[None, :] == blocks.to(tokens.device)[:, None]
        self.record_deviation(exact, cached, sites)
