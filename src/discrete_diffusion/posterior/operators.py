"""Concrete measurement operators p(y | x0) (issue 13 item 1), all behind the ``MeasurementOperator`` contract.

x0 is (B, *sites) long in 0..K-1; y carries a leading batch axis of B (one observation per sample) or 1 (shared).

- ``inpaint``: y (B|1, *sites) long holds x0's value at the observed sites and ``UNOBSERVED`` (-1) elsewhere;
  p(y | x0) = 1 when x0 agrees with y at every observed site, else 0. Factorises: l_d(k) = 0 if y_d in {-1, k},
  else -inf. The ``observed`` mask given to the operator (``simulate`` needs it) also fixes where y may hold values.
- ``channel`` (eps): each site independently replaced, with probability eps, by a uniform draw from the K values
  (which may equal x0^d): p(y_d | x0^d) = (1 - eps) [y_d = x0^d] + eps / K. Factorises.
- ``thinning`` (p), for counts: y_d ~ Binomial(x0^d, p), so y_d <= x0^d <= K - 1 (photon-limited imaging: each
  photon of a Blackout count image is detected with probability p). Factorises:
  l_d(k) = log C(k, y_d) + y_d log p + (k - y_d) log(1 - p), -inf for k < y_d.
- ``downsample`` (block), for counts: y = the sums of x0 over non-overlapping blocks (sites / block per axis);
  p(y | x0) = 1 if every block sums to y, else 0, so y_b lies in 0..|block| (K - 1). Couples the sites of a block.
- ``parity`` (groups, flip): for groups g of (flattened) sites, s_g = sum_{d in g} x0^d mod K (XOR for K = 2);
  p(y_g | s_g) = 1 - flip if y_g = s_g else flip / (K - 1) (flip = 0: a hard constraint). Couples a group's sites.
- ``callable``: a user function ``fn(x0, y) -> (B,)`` log p(y | x0), with its output checked (shape, no NaN / +inf).

The coupled operators (downsample, parity with disjoint groups) also give ``factorised_log_likelihood``: the exact
log E[p(y | x0)] when the sites of x0 are independent with given per-site laws (a convolution per block / group),
which the DPS-style approximation (dps.py) uses. Errors are one-line ValueErrors naming what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .measurement import MeasurementOperator, SumFactors

__all__ = ["UNOBSERVED", "InpaintOperator", "ChannelOperator", "ThinningOperator", "DownsampleOperator",
           "ParityOperator", "CallableOperator", "OPERATORS", "build_operator", "inpaint_observation"]

#: The value of y at a site that inpainting does not observe.
UNOBSERVED = -1


# ----- shared checks ------------------------------------------------------------------------------------------
def _as_site_shape(site_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in site_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"the data's site shape must be non-empty with sizes >= 1, got {shape}")
    return shape


def _integer_y(op: MeasurementOperator, y: Tensor, y_shape: tuple[int, ...]) -> Tensor:
    """y as a long tensor of shape (B or 1, *y_shape) with B >= 1; ValueError otherwise."""
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{op.name}: y must be an integer tensor, got {y.dtype}")
    if y.dim() != len(y_shape) + 1 or tuple(y.shape[1:]) != y_shape or y.shape[0] < 1:
        raise ValueError(f"{op.name}: y must have shape (B or 1, {', '.join(map(str, y_shape))}) with a leading batch "
                         f"axis, got {tuple(y.shape)}")
    return y.long()


def _check_range(op: MeasurementOperator, y: Tensor, low: int, high: int, what: str) -> None:
    bad = (y < low) | (y > high)
    if bool(bad.any()):
        raise ValueError(f"{op.name}: y must lie in {low}..{high} ({what}), got {int(y[bad].reshape(-1)[0])}")


def _check_batch(op: MeasurementOperator, x0: Tensor, y: Tensor) -> None:
    if y.shape[0] not in (1, x0.shape[0]):
        raise ValueError(f"{op.name}: y has {y.shape[0]} rows but x0 has {x0.shape[0]}: give one observation per "
                         "sample or one shared (batch 1)")


def _check_x0(op: MeasurementOperator, x0: Tensor) -> Tensor:
    if x0.is_floating_point() or x0.dtype == torch.bool or x0.dim() < 2:
        raise ValueError(f"{op.name}: x0 must be a (B, *sites) integer tensor, got {x0.dtype} {tuple(x0.shape)}")
    return x0.long()


def _probability(value: float, name: str, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


def _sum_sites(table: Tensor, x0: Tensor) -> Tensor:
    """sum_d table[b, d, x0^d] for a site table (B|1, *sites, K) and x0 (B, *sites): (B,) float64."""
    table = table.expand(x0.shape + table.shape[-1:])
    return torch.gather(table, -1, x0[..., None])[..., 0].reshape(x0.shape[0], -1).sum(1)


# ----- factorising operators ------------------------------------------------------------------------------------
class _SiteOperator(MeasurementOperator):
    """An operator with y of the data's shape and log p(y | x0) = sum_d l_d(x0^d) (``site_log_likelihood``)."""

    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        return _as_site_shape(site_shape)

    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        x0 = _check_x0(self, x0)
        _check_batch(self, x0, y)
        return _sum_sites(self.site_log_likelihood(y, tuple(x0.shape[1:])), x0)


class InpaintOperator(_SiteOperator):
    """Observed sites of x0 (see the module doc). ``observed``: bool (*sites) or (B, *sites), True where a value is
    observed; needed by ``simulate``, and when given, y must hold a value exactly there."""

    name = "inpaint"

    def __init__(self, num_states: int, observed: Tensor | None = None) -> None:
        super().__init__(num_states)
        if observed is not None:
            observed = torch.as_tensor(observed)
            if observed.dtype != torch.bool and (observed.is_floating_point() or
                                                 not bool(((observed == 0) | (observed == 1)).all())):
                raise ValueError("inpaint: the observed mask must be boolean (or 0/1 integers), True where observed")
            observed = observed.bool()
        self.observed = observed

    def _mask_for(self, site_shape: tuple[int, ...], batch: int) -> Tensor:
        mask = self.observed
        if tuple(mask.shape) == site_shape:
            return mask[None]
        if tuple(mask.shape[1:]) == site_shape and mask.shape[0] in (1, batch):
            return mask
        raise ValueError(f"inpaint: the observed mask {tuple(mask.shape)} fits neither the sites {site_shape} nor "
                         f"(B = {batch}, *sites)")

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        y = _integer_y(self, y, self.y_shape(site_shape))
        _check_range(self, y, UNOBSERVED, self.num_states - 1, f"a data value, or {UNOBSERVED} where unobserved")
        if self.observed is not None:
            mask = self._mask_for(tuple(y.shape[1:]), y.shape[0])
            if not bool(((y >= 0) == mask).all()):
                raise ValueError(f"inpaint: y must hold a value (0..{self.num_states - 1}) exactly at the observed "
                                 f"sites of the operator's mask and {UNOBSERVED} elsewhere")
        return y

    def site_log_likelihood(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        values = torch.arange(self.num_states, device=y.device)
        ok = (y[..., None] == UNOBSERVED) | (y[..., None] == values)
        return torch.where(ok, 0.0, -torch.inf).double()

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0 = _check_x0(self, x0)
        if self.observed is None:
            raise ValueError("inpaint: simulate needs the operator's observed mask (InpaintOperator(K, observed=...))")
        mask = self._mask_for(tuple(x0.shape[1:]), x0.shape[0]).to(x0.device)
        return torch.where(mask, x0, torch.full_like(x0, UNOBSERVED))


def inpaint_observation(values: Tensor, observed: Tensor) -> Tensor:
    """y for inpainting: ``values`` where ``observed`` (bool, broadcastable) is True, ``UNOBSERVED`` elsewhere."""
    values, observed = torch.as_tensor(values).long(), torch.as_tensor(observed).bool()
    return torch.where(observed, values, torch.full_like(values, UNOBSERVED))


class ChannelOperator(_SiteOperator):
    """The symmetric noisy channel with replacement probability ``eps`` in [0, 1] (see the module doc)."""

    name = "channel"

    def __init__(self, num_states: int, eps: float) -> None:
        super().__init__(num_states)
        self.eps = _probability(eps, "channel: eps (the replacement probability)")

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        y = _integer_y(self, y, self.y_shape(site_shape))
        _check_range(self, y, 0, self.num_states - 1, "a data value")
        return y

    def site_log_likelihood(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        same = y[..., None] == torch.arange(self.num_states, device=y.device)
        probs = (1.0 - self.eps) * same.double() + self.eps / self.num_states
        return torch.log(probs)

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0 = _check_x0(self, x0)
        replace = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device) < self.eps
        noise = torch.randint(0, self.num_states, x0.shape, generator=generator, device=x0.device)
        return torch.where(replace, noise, x0)


class ThinningOperator(_SiteOperator):
    """Binomial thinning y ~ Binomial(x0, p) of counts, p in (0, 1] (see the module doc)."""

    name = "thinning"

    def __init__(self, num_states: int, p: float) -> None:
        super().__init__(num_states)
        self.p = _probability(p, "thinning: p (the detection probability)", low_open=True)

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        y = _integer_y(self, y, self.y_shape(site_shape))
        _check_range(self, y, 0, self.num_states - 1, "a thinned count is at most the largest count K - 1")
        return y

    def site_log_likelihood(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        k = torch.arange(self.num_states, dtype=torch.float64, device=y.device)
        yy = y.double()[..., None]
        rest = (k - yy).clamp_min(0.0)
        log_choose = torch.lgamma(k + 1) - torch.lgamma(yy + 1) - torch.lgamma(rest + 1)
        out = log_choose + torch.xlogy(yy, torch.tensor(self.p, dtype=torch.float64)) + \
            torch.xlogy(rest, torch.tensor(1.0 - self.p, dtype=torch.float64))
        return torch.where(k >= yy, out, torch.full_like(out, -torch.inf))

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x0 = _check_x0(self, x0)
        counts = x0.double()
        return torch.binomial(counts, torch.full_like(counts, self.p), generator=generator).long()


# ----- coupled operators ----------------------------------------------------------------------------------------
def _blocks(x: Tensor, block: tuple[int, ...], trailing: int = 0) -> Tensor:
    """x (B, *sites, *trailing dims) regrouped as (B, *y_sites, |block|, *trailing dims) (blocks in row-major order)."""
    batch, sites = x.shape[0], x.shape[1:x.dim() - trailing]
    tail = x.shape[x.dim() - trailing:]
    split: list[int] = []
    for size, b in zip(sites, block):
        split += [size // b, b]
    view = x.reshape((batch, *split, *tail))
    n = len(block)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + \
        list(range(1 + 2 * n, 1 + 2 * n + trailing))
    return view.permute(order).reshape((batch, *(s // b for s, b in zip(sites, block)), math.prod(block), *tail))


def _sum_distribution(probs: Tensor, modulus: int | None = None) -> Tensor:
    """The law of the sum of independent values with laws probs (..., n, K) over n: (..., n (K - 1) + 1), or of the
    sum mod ``modulus`` (..., modulus). Float64 probabilities, one convolution per summand."""
    k = probs.shape[-1]
    size = modulus if modulus is not None else 1
    dist = torch.zeros(probs.shape[:-2] + (size,), dtype=torch.float64, device=probs.device)
    dist[..., 0] = 1.0
    for i in range(probs.shape[-2]):
        p = probs[..., i, :].double()
        if modulus is None:
            new = torch.zeros(dist.shape[:-1] + (dist.shape[-1] + k - 1,), dtype=torch.float64, device=dist.device)
            for v in range(k):
                new[..., v:v + dist.shape[-1]] += dist * p[..., v:v + 1]
        else:
            new = torch.zeros_like(dist)
            for v in range(k):
                new += torch.roll(dist, v % modulus, dims=-1) * p[..., v:v + 1]
        dist = new
    return dist


class DownsampleOperator(MeasurementOperator):
    """Block sums of counts (see the module doc). ``block``: an int (every axis) or one size per site axis; every
    site axis must be divisible by its block size."""

    name = "downsample"

    def __init__(self, num_states: int, block: int | Sequence[int]) -> None:
        super().__init__(num_states)
        sizes = (block,) if isinstance(block, int) and not isinstance(block, bool) else tuple(block) \
            if isinstance(block, (tuple, list)) else None
        if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
            raise ValueError(f"downsample: block must be an integer >= 1 or a tuple of them, got {block!r}")
        self.block = sizes

    def _block_for(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        site_shape = _as_site_shape(site_shape)
        block = self.block * len(site_shape) if len(self.block) == 1 else self.block
        if len(block) != len(site_shape) or any(s % b for s, b in zip(site_shape, block)):
            raise ValueError(f"downsample: block {self.block} must divide the site shape {site_shape} on every axis")
        return block

    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        block = self._block_for(site_shape)
        return tuple(s // b for s, b in zip(site_shape, block))

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        y = _integer_y(self, y, self.y_shape(site_shape))
        top = math.prod(self._block_for(site_shape)) * (self.num_states - 1)
        _check_range(self, y, 0, top, "a block sum is at most block size * (K - 1)")
        return y

    def block_sums(self, x0: Tensor) -> Tensor:
        """The measurement of x0 (B, *sites): (B, *y_sites) long."""
        x0 = _check_x0(self, x0)
        return _blocks(x0, self._block_for(tuple(x0.shape[1:]))).sum(-1)

    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        x0 = _check_x0(self, x0)
        _check_batch(self, x0, y)
        ok = (self.block_sums(x0) == y).reshape(x0.shape[0], -1).all(1)
        return torch.where(ok, 0.0, -torch.inf).double()

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.block_sums(x0)

    def sum_factors(self, y: Tensor, site_shape: tuple[int, ...]) -> SumFactors:
        """The blocks as groups of flattened sites, f_b(s) = 0 at s = y_b, else -inf (``SumFactors``)."""
        site_shape = _as_site_shape(site_shape)
        block = self._block_for(site_shape)
        flat = torch.arange(math.prod(site_shape), device=y.device).reshape((1, *site_shape))
        index = _blocks(flat, block)[0].reshape(-1, math.prod(block))                     # (G, W)
        width = (self.num_states - 1) * index.shape[1] + 1
        sums = torch.arange(width, device=y.device)
        target = y.reshape(y.shape[0], -1, 1)
        log_factor = torch.where(sums == target, 0.0, -torch.inf).double()                # (B|1, G, S)
        return SumFactors(index, torch.ones_like(index, dtype=torch.bool), None, log_factor)

    def factorised_log_likelihood(self, log_probs: Tensor, y: Tensor) -> Tensor:
        """log E[p(y | x0)] for independent sites with laws exp(log_probs) (n, *sites, K) and y (n|1, *y_sites):
        sum over blocks of log P(block sum = y_b), the law of a block sum by convolution. (n,) float64."""
        block = self._block_for(tuple(log_probs.shape[1:-1]))
        laws = _sum_distribution(_blocks(log_probs.double().exp(), block, trailing=1))    # (n, *y_sites, S)
        picked = torch.gather(laws, -1, y.expand(laws.shape[:-1])[..., None])[..., 0]
        return torch.log(picked).reshape(log_probs.shape[0], -1).sum(1)


class ParityOperator(MeasurementOperator):
    """Sums mod K over groups of (flattened, row-major) sites, observed hard (flip = 0) or through a symmetric flip
    with probability ``flip`` (see the module doc). ``groups``: a sequence of non-empty sequences of distinct site
    indices, e.g. pairs [(0, 1), (2, 5)]."""

    name = "parity"

    def __init__(self, num_states: int, groups: Sequence[Sequence[int]], flip: float = 0.0) -> None:
        super().__init__(num_states)
        try:
            parsed = [tuple(int(i) for i in g) for g in groups]
        except TypeError:
            raise ValueError(f"parity: groups must be a sequence of site-index sequences, got {groups!r}") from None
        if not parsed or any(len(g) == 0 or len(set(g)) != len(g) or min(g) < 0 for g in parsed):
            raise ValueError("parity: groups must be non-empty sequences of distinct site indices >= 0 (at least one)")
        self.groups = parsed
        self.flip = _probability(flip, "parity: flip (the probability that an observed sum is wrong)")
        width = max(len(g) for g in parsed)
        self._index = torch.tensor([g + (g[0],) * (width - len(g)) for g in parsed], dtype=torch.long)  # (G, W)
        self._valid = torch.tensor([[i < len(g) for i in range(width)] for g in parsed])               # (G, W)
        self.disjoint = len({i for g in parsed for i in g}) == sum(len(g) for g in parsed)

    def _check_sites(self, site_shape: tuple[int, ...]) -> None:
        sites = math.prod(_as_site_shape(site_shape))
        top = max(max(g) for g in self.groups)
        if top >= sites:
            raise ValueError(f"parity: a group names site {top} but the data has {sites} sites (flattened, 0-based)")

    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        self._check_sites(site_shape)
        return (len(self.groups),)

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        y = _integer_y(self, y, self.y_shape(site_shape))
        _check_range(self, y, 0, self.num_states - 1, "a sum mod K")
        return y

    def group_sums(self, x0: Tensor) -> Tensor:
        """s_g = sum_{d in g} x0^d mod K for x0 (B, *sites): (B, G) long."""
        x0 = _check_x0(self, x0)
        self._check_sites(tuple(x0.shape[1:]))
        flat = x0.reshape(x0.shape[0], -1)
        index, valid = self._index.to(x0.device), self._valid.to(x0.device)
        return (flat[:, index] * valid).sum(-1) % self.num_states

    def _log_kernel(self, device: torch.device) -> Tensor:
        """log p(y_g = a | s_g = s), (K, K) float64 [s, a]."""
        k = self.num_states
        same = torch.eye(k, dtype=torch.float64, device=device)
        return torch.log((1.0 - self.flip) * same + self.flip / (k - 1) * (1.0 - same))

    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        x0 = _check_x0(self, x0)
        _check_batch(self, x0, y)
        s = self.group_sums(x0)
        return self._log_kernel(x0.device)[s, y.expand_as(s)].sum(1)

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        s = self.group_sums(x0)
        wrong = torch.rand(s.shape, generator=generator, dtype=torch.float64, device=s.device) < self.flip
        shift = torch.randint(1, self.num_states, s.shape, generator=generator, device=s.device)
        return torch.where(wrong, (s + shift) % self.num_states, s)

    def sum_factors(self, y: Tensor, site_shape: tuple[int, ...]) -> SumFactors | None:
        """Disjoint groups only (else None): f_g(s) = log p(y_g | s_g = s) over s in 0..K-1 (``SumFactors``)."""
        if not self.disjoint:
            return None
        self._check_sites(tuple(site_shape))
        log_factor = self._log_kernel(y.device)[:, y].permute(1, 2, 0)                   # (B|1, G, K)
        return SumFactors(self._index.to(y.device), self._valid.to(y.device), self.num_states, log_factor)

    def factorised_log_likelihood(self, log_probs: Tensor, y: Tensor) -> Tensor | None:
        """log E[p(y | x0)] for independent sites with laws exp(log_probs) (n, *sites, K), exact when the groups are
        disjoint (a product over groups of sum_s P(s_g = s) p(y_g | s), the law of s_g by cyclic convolution);
        None when groups share a site (the expectation does not factor over groups). (n,) float64."""
        if not self.disjoint:
            return None
        self._check_sites(tuple(log_probs.shape[1:-1]))
        flat = log_probs.double().exp().reshape(log_probs.shape[0], -1, self.num_states)
        index, valid = self._index.to(flat.device), self._valid.to(flat.device)
        members = flat[:, index]                                                 # (n, G, W, K)
        unit = torch.zeros(self.num_states, dtype=torch.float64, device=flat.device)
        unit[0] = 1.0                                                            # padding: the value 0 for sure
        members = torch.where(valid[None, :, :, None], members, unit)
        laws = _sum_distribution(members, modulus=self.num_states)               # (n, G, K)
        like = self._log_kernel(flat.device).exp()[:, y.expand(laws.shape[:2])]  # (K_s, n, G)
        return torch.log((laws * like.permute(1, 2, 0)).sum(-1)).sum(1)


class CallableOperator(MeasurementOperator):
    """A user measurement: ``fn(x0 (B, *sites) long, y (B|1, *y_sites)) -> (B,)`` log p(y | x0). ``y_shape``: the
    observation's shape without the batch axis (a tuple, or a function of the site shape); ``y_dtype``: long
    (integer y) or a floating dtype; ``simulate``: an optional ``(x0, generator) -> y``."""

    name = "callable"

    def __init__(self, num_states: int, fn: Callable[[Tensor, Tensor], Tensor],
                 y_shape: Sequence[int] | Callable[[tuple[int, ...]], Sequence[int]],
                 simulate: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,
                 y_dtype: torch.dtype = torch.long) -> None:
        super().__init__(num_states)
        if not callable(fn):
            raise ValueError(f"callable: fn must be a function (x0, y) -> (B,) log p(y | x0), got {type(fn).__name__}")
        if y_dtype != torch.long and not y_dtype.is_floating_point:
            raise ValueError(f"callable: y_dtype must be torch.long or a floating dtype, got {y_dtype}")
        self.fn, self._y_shape, self._simulate, self.y_dtype = fn, y_shape, simulate, y_dtype

    def y_shape(self, site_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = self._y_shape(tuple(site_shape)) if callable(self._y_shape) else self._y_shape
        return tuple(int(s) for s in shape)

    def check_y(self, y: Tensor, site_shape: tuple[int, ...]) -> Tensor:
        if self.y_dtype == torch.long:
            return _integer_y(self, y, self.y_shape(site_shape))
        y = torch.as_tensor(y)
        want = self.y_shape(site_shape)
        if y.dtype == torch.bool or y.is_complex() or y.dim() != len(want) + 1 or tuple(y.shape[1:]) != want:
            raise ValueError(f"callable: y must be a real tensor of shape (B or 1, {', '.join(map(str, want))}), "
                             f"got {y.dtype} {tuple(y.shape)}")
        if not bool(torch.isfinite(y.double()).all()):
            raise ValueError("callable: y must be finite")
        return y.to(self.y_dtype)

    def log_likelihood(self, x0: Tensor, y: Tensor) -> Tensor:
        x0 = _check_x0(self, x0)
        _check_batch(self, x0, y)
        out = self.fn(x0, y)
        if not isinstance(out, Tensor) or tuple(out.shape) != (x0.shape[0],) or out.dtype == torch.bool or \
                out.is_complex():
            raise ValueError(f"callable: fn must return a ({x0.shape[0]},) real tensor of log p(y | x0), got "
                             f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}")
        out = out.double()
        if bool(torch.isnan(out).any()) or bool((out == torch.inf).any()):
            raise ValueError("callable: fn returned NaN or +inf; log p(y | x0) must be finite or -inf")
        return out

    def simulate(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self._simulate is None:
            raise ValueError("callable: no simulate function was given (CallableOperator(..., simulate=...))")
        x0 = _check_x0(self, x0)
        y = torch.as_tensor(self._simulate(x0, generator))
        if y.dim() < 1 or y.shape[0] != x0.shape[0]:
            raise ValueError(f"callable: simulate must return one observation per row of x0 ({x0.shape[0]}), got "
                             f"{tuple(y.shape)}")
        return self.check_y(y, tuple(x0.shape[1:]))


#: Registry of the operators by name (the CLI builds them with ``build_operator``).
OPERATORS: dict[str, type[MeasurementOperator]] = {
    cls.name: cls for cls in (InpaintOperator, ChannelOperator, ThinningOperator, DownsampleOperator, ParityOperator,
                              CallableOperator)}


def build_operator(name: str, num_states: int, **options) -> MeasurementOperator:
    """An operator by registry name; unknown names or bad options raise a one-line ValueError."""
    if name not in OPERATORS:
        raise ValueError(f"unknown measurement {name!r}; valid measurements: {', '.join(sorted(OPERATORS))}")
    try:
        return OPERATORS[name](num_states, **options)
    except TypeError as err:
        raise ValueError(f"bad options for measurement {name!r}: {err}") from None
