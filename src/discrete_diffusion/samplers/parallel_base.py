"""Confidence-driven parallel decoding for the masking process: the loop shared by the "threshold" and "factor"
samplers (the rule that picks which masked sites to commit in a call is theirs).

Reference: Wu, Zhang, Xie, Zhao, Han, Kong, Luo, Han, Li, Xie, "Fast-dLLM: Training-free Acceleration of Diffusion
LLM by Enabling KV Cache and Parallel Decoding", 2025 (arXiv:2505.22618), section 3.3 (confidence-aware parallel
decoding); the semi-autoregressive blocks are LLaDA's (Nie et al., "Large Language Diffusion Models", 2025).

The loop has no time grid. Each network call, for every row that still has masked sites:

1. p(x0^d | x_t) at every masked site d from one call of the denoiser, conditioned on the row's noise level
   lam = logit(fraction of the row's sites unmasked), at least logit(alpha(1)) of the run's schedule (for masking
   the exact p(x0 | x_t) does not depend on it; a trained network is told a level that matches x_t);
2. a confidence c_d in [0, 1] per masked site from that distribution alone (``CONFIDENCES``): the top probability
   max_k p_k, the margin p_(1) - p_(2) between the two most probable values, or exp(-H(p)) (a monotone map of the
   negative entropy onto (1/K, 1], so the same tau / factor scale applies). The confidence never looks at the draw,
   so committing a site depends only on x_t;
3. the rule (the subclass) picks the sites to commit among the eligible ones (masked, and in the row's current
   block when ``block_size`` is set), always at least the most confident one (ties: the first site);
4. each committed site gets an independent draw from its own p(x0^d | x_t) (inverse CDF in float64).

Exactness: committing one site per call is ancestral sampling in an order chosen from x_t alone, which, with an
exact denoiser, samples the data distribution exactly (any order of the chain rule is exact). Committing n > 1
sites in a call draws them from the product of their marginals instead of their joint: that is the approximation,
measured against the exact table in tests/test_parallel_decoding.py and benchmarks/parallel_decoding.py.
A rule that commits beside the most confident site only sites of confidence 1 (a point mass: threshold tau = 1)
is exact and costs one call per uncertain site.

Blocks (``block_size`` = L > 0): the flattened sites are cut into consecutive blocks of L; a row commits only in
its first block that still has masked sites (LLaDA's semi-autoregressive decoding; later blocks stay masked and
the network sees them as MASK). The decode of one block is the same loop on a sub-range of the sites: a block
diffusion network with a KV cache plugs in at step 1.

Approximate caches (opt-in; default: none). ``approx_cache`` = "prefix" | "dual" (with ``block_size``;
``refresh_every`` = k): a plain masked transformer run is evaluated through ``ApproxBlockCache``
(samplers/approx_cache.py, Fast-dLLM's block-wise prefix / dual KV cache), which runs part of the sequence over
keys/values kept from the block's last full call. ``approx_cache`` = "partial" | "vverify" (``refresh_ratio`` = rho,
default 0.25; ``refresh_every`` = k; ``block_size`` optional): ``PartialRefreshCache`` (samplers/partial_cache.py,
after dLLM-Cache's adaptive partial update) recomputes in each layer the linear maps of only the rho S positions
whose input moved most. All APPROXIMATE; refresh_every=1 (and refresh_ratio=1) is the uncached computation exactly.

Batch invariance: every row draws its prior and its values from its own generator, seeded from the caller's
generator (the first B integers it yields, the same for row b whatever the batch size), and each row's calls, lam
and choices depend on that row alone; rows that finish leave the batch. With a network whose output for a row does
not depend on its batch-mates (float32 CPU), a row's tokens do not depend on the batch.

Cost: ``network_calls`` counts batched calls (the most calls any row needed), ``nfe`` the mean number of calls per
row (rows evaluated / batch size) and ``calls_per_row`` (B,) the calls of each row.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..processes.base import CATEGORICAL_CHUNK, ForwardProcess, Prediction
from ..schedules import Schedule
from .approx_cache import APPROX_CACHES, ApproxBlockCache, ApproxCache
from .base import MAX_OPTION_SIZE, ProgressCallback, Sampler, check_size, check_start, transform_x0_log_probs
from .partial_cache import PARTIAL_CACHES, PartialRefreshCache, check_refresh_ratio

#: Confidence of a masked site from its predicted distribution p over the K values.
CONFIDENCES = ("probability", "margin", "entropy")
#: The ``approx_cache`` values: the block-wise caches and the partial-refresh caches.
CACHES = (*APPROX_CACHES, *PARTIAL_CACHES)
#: ``refresh_ratio`` of the partial-refresh cache when none is given (dLLM-Cache's default, 25 %).
DEFAULT_REFRESH_RATIO = 0.25
#: Upper bound of the seeds drawn for the per-row generators.
_SEED_RANGE = 2**62


def site_confidence(log_probs: Tensor, kind: str) -> Tensor:
    """Confidence (n,) float64 in [0, 1] of n predicted distributions log p (n, K): ``probability`` max_k p_k,
    ``margin`` p_(1) - p_(2), ``entropy`` exp(-H(p)) (H in nats; in (1/K, 1], 1 for a point mass)."""
    logp = log_probs.double()
    if kind == "probability":
        return logp.max(-1).values.exp()
    if kind == "margin":
        if logp.shape[-1] < 2:
            return torch.ones(logp.shape[0], dtype=torch.float64, device=logp.device)
        top = logp.topk(2, dim=-1).values.exp()
        return top[:, 0] - top[:, 1]
    if kind == "entropy":
        p = logp.exp()
        entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
        return torch.exp(-entropy.clamp_min(0.0))
    raise ValueError(f"unknown confidence {kind!r}; valid: {', '.join(CONFIDENCES)}")


def inverse_cdf(log_probs: Tensor, u: Tensor) -> Tensor:
    """Draw one index per row of log-probabilities (n, K) given uniforms u (n,) float64: the first index whose float64
    CDF exceeds u times the total (never a zero-probability value), a bounded block of rows at a time."""
    k = log_probs.shape[-1]
    out = torch.empty(log_probs.shape[0], dtype=torch.long, device=log_probs.device)
    step = max(1, CATEGORICAL_CHUNK // k)
    for start in range(0, log_probs.shape[0], step):
        cdf = log_probs[start:start + step].double().exp().cumsum(-1)
        found = torch.searchsorted(cdf, (u[start:start + step, None] * cdf[:, -1:]).contiguous(), right=True)[:, 0]
        out[start:start + step] = found.clamp_max_(k - 1)
    return out


def block_ids(num_sites: int, block_size: int, device: torch.device) -> Tensor:
    """The block of each flattened site: (num_sites,) long, all 0 when block_size = 0."""
    positions = torch.arange(num_sites, device=device)
    return positions // block_size if block_size > 0 else torch.zeros_like(positions)


def eligible_sites(masked: Tensor, blocks: Tensor) -> Tensor:
    """(b, S) bool: the masked sites of each row's first block that still has a masked site."""
    big = int(blocks.max()) + 1 if blocks.numel() else 1
    current = torch.where(masked, blocks[None, :], torch.full_like(masked, big, dtype=torch.long)).min(1).values
    return masked & (blocks[None, :] == current[:, None])


class ParallelDecodingSampler(Sampler):
    """Base of the confidence-rule samplers (masking only): see the module docstring. Subclasses set ``name``
    and implement ``choose``."""

    supported_processes = ("masking",)
    uses_steps = False     # no time grid: the number of calls follows from the rule
    #: a step count given by the user is an error (``builders.build_sampler_from``), not silently ignored
    rejects_steps = True

    def __init__(self, num_steps: int = 1, confidence: str = "probability", block_size: int = 0,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, approx_cache: str | None = None,
                 refresh_every: int = 0, refresh_ratio: float | None = None) -> None:
        super().__init__(num_steps, True, temperature, top_p, False, None, top_k)
        if confidence not in CONFIDENCES:
            raise ValueError(f"{self.name}: unknown confidence {confidence!r}; valid: {', '.join(CONFIDENCES)}")
        block_size = check_size(block_size, "block_size", self.name, 0, MAX_OPTION_SIZE, " (0 = the whole sequence)")
        if approx_cache is not None and approx_cache not in CACHES:
            raise ValueError(f"{self.name}: unknown approx_cache {approx_cache!r}; valid: {', '.join(CACHES)}")
        if approx_cache in APPROX_CACHES and not block_size:
            raise ValueError(f"{self.name}: approx_cache={approx_cache} needs block_size > 0 (the cache is kept "
                             "per block)")
        refresh_every = check_size(refresh_every, "refresh_every", self.name, 0, MAX_OPTION_SIZE,
                                   " (0 = at each block only)")
        if refresh_every and approx_cache is None:
            raise ValueError(f"{self.name}: refresh_every needs approx_cache={'|'.join(CACHES)} (it would have no "
                             "effect)")
        if refresh_ratio is not None and approx_cache not in PARTIAL_CACHES:
            raise ValueError(f"{self.name}: refresh_ratio needs approx_cache={'|'.join(PARTIAL_CACHES)} (it would "
                             "have no effect)")
        if refresh_ratio is not None:
            refresh_ratio = check_refresh_ratio(refresh_ratio, f"{self.name}: ")
        if refresh_ratio == 1 and refresh_every:
            raise ValueError(f"{self.name}: refresh_every has no effect with refresh_ratio=1 (every call refreshes)")
        if refresh_ratio is not None and refresh_every == 1:
            raise ValueError(f"{self.name}: refresh_ratio has no effect with refresh_every=1 (every call refreshes)")
        self.confidence = confidence
        self.block_size = int(block_size)
        self.approx_cache = approx_cache
        self.refresh_every = int(refresh_every)
        self.refresh_ratio = None if approx_cache not in PARTIAL_CACHES else \
            (DEFAULT_REFRESH_RATIO if refresh_ratio is None else refresh_ratio)
        #: with approx_cache: record each cached call's max |logit difference| against the uncached network
        #: (costs a full network call each; for measurements)
        self.track_deviation = False
        self.cache_state: ApproxCache | None = None
        #: positions run through the network (rows evaluated x S without a cache; the caches' own count, a float
        #: weighted by linear-layer work for the partial-refresh cache)
        self.positions_evaluated: float = 0
        self.calls_per_row = torch.zeros(0, dtype=torch.long)

    @abstractmethod
    def choose(self, confidence: Tensor, eligible: Tensor) -> Tensor:
        """The sites to commit: (b, S) bool, a subset of ``eligible`` (b, S) bool that holds the row's most
        confident eligible site whenever the row has one. ``confidence`` (b, S) float64 in [0, 1], -inf where not
        eligible."""

    @staticmethod
    def most_confident(confidence: Tensor, eligible: Tensor) -> Tensor:
        """(b, S) bool: the first site of highest confidence of each row that has an eligible site."""
        first = torch.zeros_like(eligible)
        first.scatter_(1, confidence.argmax(1, keepdim=True), True)   # argmax returns the first maximum
        return first & eligible

    def row_generators(self, batch: int, generator: torch.Generator | None,
                       device: torch.device) -> list[torch.Generator]:
        """One generator per row, seeded with the first ``batch`` integers of ``generator`` (a fresh random seed
        when it is None): row b's seed does not depend on the batch size."""
        seeds = torch.randint(0, _SEED_RANGE, (batch,), generator=generator,
                              device=generator.device if generator is not None else "cpu").tolist()
        try:
            torch.Generator(device=device)
        except RuntimeError:         # a device without generators of its own (meta): draw on CPU
            device = torch.device("cpu")
        return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    @torch.no_grad()
    def sample(self, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               callback: ProgressCallback | None = None,
               constrain: Callable[[Tensor, float], Tensor] | None = None, *,
               start: tuple[Tensor, float] | None = None) -> Tensor:
        """Samples (B, *sites) long from the prior at t = 1, or from ``start=(x_t, t)`` (the masked sites of x_t
        are decoded; see ``Sampler.sample``). ``constrain`` is not supported (no grid): infilling goes through the
        prior (guidance.infill_sample)."""
        mask = getattr(process, "mask_index", None)
        if mask is None or not self.supports(process):
            raise ValueError(f"sampler {self.name!r} needs the masking process, got {process.name!r}")
        if constrain is not None:
            raise ValueError(f"sampler {self.name!r} has no time grid to constrain; infill through the prior "
                             "(guidance.infill_sample does)")
        device = self.sampling_device(denoiser, generator, device)
        shape = tuple(int(s) for s in shape)
        batch, sites = shape[0], math.prod(shape[1:])
        lam_floor = float(torch.logit(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)).clamp(0.0, 1.0)))
        gens = self.row_generators(batch, generator, device)
        if start is None:
            x = torch.empty(shape, dtype=torch.long, device=device)
            for b in range(batch):       # each row's prior from its own generator
                drawn = process.sample_prior((1, *shape[1:]), lam_floor, gens[b], device=device)
                # a prior with revealed sites per row (infill's) broadcasts to the batch: take row b
                x[b] = drawn[0] if drawn.shape[0] == 1 else drawn[b]
        else:
            x, _ = check_start(process, shape, start, device)
            x = x.clone()
        self.cache_state = None
        if self.refresh_ratio is not None:       # APPROXIMATE (samplers/partial_cache.py)
            assert self.approx_cache is not None
            self.cache_state = PartialRefreshCache(denoiser, self.approx_cache, self.refresh_ratio, self.refresh_every,
                                                   self.block_size, batch, self.track_deviation)
            denoiser = self.cache_state
        elif self.approx_cache is not None:      # APPROXIMATE (samplers/approx_cache.py)
            self.cache_state = ApproxBlockCache(denoiser, self.approx_cache, self.block_size, self.refresh_every,
                                                batch, self.track_deviation)
            denoiser = self.cache_state
        self.wrap_denoiser(process, denoiser, batch)         # counts the calls (self._counter)
        flat = x.reshape(batch, sites)
        blocks = block_ids(sites, self.block_size, device)
        self.calls_per_row = torch.zeros(batch, dtype=torch.long)
        calls = 0
        while True:
            rows = (flat == mask).any(1).nonzero()[:, 0]
            if rows.numel() == 0:
                break
            xs = flat[rows]
            masked = xs == mask
            unmasked_fraction = 1.0 - masked.double().mean(1)
            lam = torch.logit(unmasked_fraction).clamp_min(lam_floor)
            log_probs = self.predict_masked(process, xs.reshape(-1, *shape[1:]), lam, rows, batch,
                                            masked.reshape(-1, *shape[1:]))                # (n, K), row-major
            confidence = torch.full(masked.shape, -torch.inf, dtype=torch.float64, device=device)
            confidence[masked] = site_confidence(log_probs, self.confidence)
            eligible = eligible_sites(masked, blocks)
            confidence = torch.where(eligible, confidence, torch.full_like(confidence, -torch.inf))
            chosen = self.choose(confidence, eligible)
            assert bool((chosen <= eligible).all()) and bool(chosen.any(1).all()), "a rule must commit >= 1 site"
            counts = chosen.sum(1).tolist()
            # each row draws its uniforms from its own generator, in site order
            u = torch.cat([torch.rand(c, generator=gens[int(r)], dtype=torch.float64, device=gens[int(r)].device)
                           for r, c in zip(rows.tolist(), counts)]).to(device)
            values = inverse_cdf(log_probs[chosen[masked]], u)        # log_probs: masked sites, row-major
            xs = xs.clone()
            xs[chosen] = values
            flat[rows] = xs
            self.calls_per_row[rows.cpu()] += 1
            calls += 1
            self._record_cost()
            if callback is not None:
                callback(calls, 0, flat.reshape(shape))
        self._record_cost()
        self.positions_evaluated = self.network_evaluations * sites if self.cache_state is None \
            else self.cache_state.positions_evaluated
        if self.cache_state is not None:
            self.cache_state.release()
        return flat.reshape(shape)

    def predict_masked(self, process: ForwardProcess, xt: Tensor, lam: Tensor, rows: Tensor, batch: int,
                       masked: Tensor) -> Tensor:
        """log p(x0 | x_t) (n, K) at the masked sites of batch rows ``rows`` (x_t, lam: those rows), after the
        temperature / top-k / top-p transforms. Only the unfinished rows are evaluated; a denoiser whose rows carry
        their own state (a block-diffusion context denoiser: ``rows(index)``) is restricted to them first."""
        counter = self._counter
        assert counter is not None, "wrap_denoiser sets the counter"
        if rows.numel() == batch:
            prediction = counter(xt, lam.float())
        else:
            prediction = counter.call_rows(xt, lam.float(), rows)
        if self.temperature == 1.0 and self.top_p >= 1.0 and self.top_k <= 0:
            return self.masked_site_log_probs(process, prediction, xt, masked)
        log_probs = process.x0_log_probs(prediction, xt)[masked]
        return transform_x0_log_probs(log_probs, self.temperature, self.top_p, self.top_k)

    @staticmethod
    def masked_site_log_probs(process: ForwardProcess, prediction: Prediction, xt: Tensor, masked: Tensor) -> Tensor:
        """log p(x0 | x_t) at the masked sites, (n, K) in row-major site order, without building the
        (B, *sites, K) tensor when the prediction can give them directly (``SubsPrediction.masked_log_probs``)."""
        getter = getattr(prediction, "masked_log_probs", None)
        rows = getter(xt, masked) if getter is not None else None
        return process.x0_log_probs(prediction, xt)[masked] if rows is None else rows

    def step(self, process: ForwardProcess, denoiser: Denoiser, xt: Tensor, lam_t: Tensor, lam_s: Tensor,
             generator: torch.Generator | None) -> Tensor:
        raise ValueError(f"sampler {self.name!r} has no fixed steps; call sample()")

    @property
    def file_tag(self) -> str:
        """What sets this sampler apart in a file name (``ddiff sample``'s stem), e.g. ``-tau0.9``."""
        tag = self.rule_tag()
        if self.confidence != "probability":
            tag += f"-{self.confidence}"
        if self.block_size:
            tag += f"-block{self.block_size}"
        if self.approx_cache is not None:
            tag += f"-{self.approx_cache}cache" + (f"{self.refresh_every}" if self.refresh_every else "")
            if self.refresh_ratio is not None:
                tag += f"-r{self.refresh_ratio:g}"
        return tag

    @abstractmethod
    def rule_tag(self) -> str:
        """The rule's parameter for file names, e.g. ``-tau0.9``."""

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "confidence": self.confidence}
        if self.block_size:
            out["block_size"] = self.block_size
        if self.approx_cache is not None:
            out["approx_cache"] = self.approx_cache
            out["refresh_every"] = self.refresh_every
            if self.refresh_ratio is not None:
                out["refresh_ratio"] = self.refresh_ratio
        for key, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0)):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        return out
