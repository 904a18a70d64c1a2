"""Split Gibbs posterior sampling with a discrete diffusion prior (SGDD / SG-DPS).

References: Chu, Wu, Chen, Song, Yue, "Split Gibbs Discrete Diffusion Posterior Sampling", NeurIPS 2025 (SGDD,
earlier SG-DPS); its continuous parent Wu, Sun, Chen, Zhang, Yue, Bouman, "Principled Probabilistic Imaging using
Diffusion Models as Plug-and-Play Priors" (PnP-DM), NeurIPS 2024.

Target: the posterior p(x0 | y) ∝ p(x0) L(x0), L(x) = p(y | x0 = x), with p(x0) a diffusion model (the prior) and
L given by a ``MeasurementOperator``. Split Gibbs samples the augmented law, for a noise level t of the prior's
process (lam = logit(alpha(t)) through the run's schedule) with forward kernel K_t(z | x0) = prod_d q_t(z^d | x0^d):

    pi_t(x0, z) ∝ p(x0) K_t(z | x0) L(z),

alternating its two exact conditionals:

- likelihood step  z | x0 ∝ K_t(z | x0) L(z). K_t factorises over sites, so when L does too (log L = sum_d l_d,
  the operator's ``site_log_likelihood``) each z^d is drawn exactly from q_t(. | x0^d) exp(l_d(.)), normalised.
  When L is a function of the sums (or sums mod K) over disjoint groups of sites (``sum_factors``: downsample,
  parity with disjoint groups), each group is drawn exactly by forward filtering / backward sampling over its
  partial sums (group_likelihood.py; O(|group| S K) per group, S the number of sums).
  Otherwise (parity with shared sites, a callable) Metropolis-Hastings, started from the chain's current z,
  ``mh_steps`` proposals per iteration: "site" changes one uniformly chosen site d to a draw from q_t(. | x0^d),
  "independent" redraws every site from K_t(. | x0). Either proposal is proportional to the K_t factor of the
  target, so the acceptance probability is min(1, L(z') / L(z)) and the kernel leaves z | x0 invariant for any
  number of steps. A z with L(z) = 0 is repaired (a site of a zero factor set to a uniform allowed value, accepted
  unless it adds zero factors) until L > 0; one-site proposals under a hard coupled operator (downsample, parity
  with flip = 0) never move a feasible z and are refused, and a run whose one-site proposals from feasible z were
  never accepted warns. Reachability is the caveat of MH: under hard coupled constraints it mixes slowly or not
  at all, which is why the exact group step exists.
- prior step  x0 | z ∝ p(x0) K_t(z | x0) = p(x0 | x_t = z): the diffusion model's denoising of x_t = z from level
  t down to 0, i.e. a reverse sampler started mid-way (``Sampler.sample(..., start=(z, t))``), or an exact draw
  (``prior_step``, e.g. ``OraclePriorStep`` for an enumerable table).

The x0-marginal of pi_t is p(x0) sum_z K_t(z | x0) L(z) ∝ p(x0) E_{z ~ q_t(. | x0)}[L(z)]: the posterior with the
likelihood smoothed by the forward noise. It tends to p(x0 | y) as t -> 0 (K_t -> identity), while at large t the
chain mixes fast (z is far from x0); so t is annealed from ``t_max`` down to ``t_min`` over the iterations
("geometric": t_i = t_max (t_min / t_max)^(i / (n - 1)), or "linear"), and the result is the last x0. At a fixed t
with an exact prior step the chain's stationary law is exactly pi_t (tests/test_split_gibbs.py checks the
x0-marginal against enumeration); the bias left at t_min is the smoothing above.

The space of z per process: uniform and matrix, data values (K_t(z | x0) = P_t[x0, z]); blackout, counts z <= x0
(binomial thinning, L(z) is the operator at x0 = z); masking, data values or MASK, where p(y | x0 = MASK) is not
defined. For an operator that factorises, a masked site gets the constant factor
c_d = (1/K) sum_k exp(l_d(k)) (the site's likelihood averaged over a uniform value), so L(z) = prod over unmasked
sites of exp(l_d(z^d)) times prod over masked sites of c_d, and the x0-marginal is
p(x0) prod_d [alpha exp(l_d(x0^d)) + (1 - alpha) c_d], which still tends to the posterior as alpha -> 1. A coupled
operator with masking is refused (ValueError): a likelihood of a partly masked z would be an arbitrary choice.

What is exact, measured on the oracle (K = 4, D = 3, a correlated table; benchmarks/split_gibbs_oracle.py): each
step's kernel (per site, per group; MH leaves its target invariant), and the chain's law at a fixed level with an
exact prior step and an exact likelihood step (to the Monte-Carlo floor; tests/test_split_gibbs_coupled.py for the
group step). The
annealed output is not exact: besides the smoothing bias at t_min, the chain mixes slowly at small t (z rarely
differs from x0), so it freezes at a level where the smoothed law is still off. TV to the posterior falls as the
iterations grow (per-site channel, uniform: 0.38 at 5 iterations, 0.050 at 40, 0.018 at 320, floor 0.016;
blackout: 0.46 / 0.14 / 0.038). A coupled operator written without structure (a noisy sum mod 4 as a plain operator,
so MH) is harder, since moving between values of the same residue passes through z of low likelihood: uniform
reaches 0.025 at 640 iterations x 4 MH steps with "independent" proposals, against 0.080 with "site" ones; blackout
0.078 at 2560 x 4. The same law through ``ParityOperator`` takes the exact group step: uniform 0.161 / 0.081 / 0.031
at 10 / 40 / 160 iterations, blackout 0.381 / 0.321 / 0.193 (annealing, not the likelihood step, is then what limits
Blackout: z <= x0 makes the chain slow at small t); hard block sums (``DownsampleOperator``): uniform 0.168 / 0.063
/ 0.029, blackout 0.338 / 0.119 / 0.058 (floors 0.019 and 0.012). At the fixed level t = 0.6 both operators sit at
the floor on both processes (benchmarks/results/split_gibbs_oracle_coupled.md). "site" is the default because
one-site moves keep a usable acceptance rate when D is large, where an "independent" redraw of every site almost
never is accepted; on small problems with coupled constraints "independent" mixes faster. A prior step through the
bridge sampler (16 steps, 16 network evaluations per iteration) gave the same TV as the exact step within the noise
of 10k samples (80 iterations: 0.036 vs 0.042 on uniform, 0.066 vs 0.078 on blackout); its discretisation error is
not resolved there.

Cost (``SplitGibbsResult``): the prior steps' denoiser rows (``network_evaluations``, summed over the sampler runs;
nfe = that / batch), the exact prior step's rows (``prior_rows``), and the rows of log L evaluated by MH.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..oracle import OracleDenoiser
from ..processes.base import ForwardProcess, sample_categorical
from ..processes.masking import MaskingProcess
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule
from .common import warn_if_contradicting
from .group_likelihood import sample_given_group_sums
from .measurement import MeasurementOperator
from .oracle_prior import OraclePriorStep

__all__ = ["split_gibbs_sample", "split_gibbs_method", "annealing_levels", "LikelihoodStep", "SplitGibbsResult",
           "ANNEALING", "LIKELIHOOD_STEPS", "PROPOSALS"]

ANNEALING = ("geometric", "linear")
LIKELIHOOD_STEPS = ("auto", "exact", "mh")
PROPOSALS = ("site", "independent")

#: An exact prior step: (z (B, *sites) long, lam (B,) float64, generator) -> x0 ~ p(x0 | x_t = z), (B, *sites) long.
PriorStep = Callable[[Tensor, Tensor, "torch.Generator | None"], Tensor]


@dataclass
class SplitGibbsResult:
    """The output of ``split_gibbs_sample``.

    x0: (B, *sites) long, the last prior step's draw (the posterior sample). z: (B, *sites) long, the last
    likelihood step's state (values 0..num_values-1). levels: (iterations,) float64, the t of each iteration.
    network_evaluations / network_calls: denoiser rows / batched calls summed over the prior steps' sampler runs
    (0 with an exact ``prior_step``); nfe = network_evaluations / B. prior_rows: rows through an exact prior step.
    likelihood_evaluations: rows of log p(y | z) evaluated by Metropolis-Hastings (0 for the exact per-site step).
    acceptance_rate: the fraction of accepted MH proposals (nan without MH). likelihood_step: "exact" or "mh".
    infeasible_chains: chains whose last z has L(z) = 0 (y impossible given z; their x0 is a prior draw that y did
    not reach)."""

    x0: Tensor
    z: Tensor
    levels: Tensor
    network_evaluations: int
    network_calls: int
    nfe: float
    prior_rows: int
    likelihood_evaluations: int
    acceptance_rate: float
    likelihood_step: str
    infeasible_chains: int = 0


def annealing_levels(annealing: str, iterations: int, t_max: float, t_min: float) -> Tensor:
    """The noise level t_i of each iteration, from t_max (i = 0) to t_min (the last): (iterations,) float64.
    "geometric": t_max (t_min / t_max)^f, "linear": t_max + (t_min - t_max) f, f = i / (iterations - 1) (a single
    iteration runs at t_min)."""
    if annealing not in ANNEALING:
        raise ValueError(f"split gibbs: annealing must be one of {list(ANNEALING)}, got {annealing!r}")
    if iterations > 1:
        f = torch.linspace(0.0, 1.0, iterations, dtype=torch.float64)
    else:
        f = torch.ones(1, dtype=torch.float64)
    if annealing == "geometric":
        return t_max * (t_min / t_max) ** f
    return t_max + (t_min - t_max) * f


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"split gibbs: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_arguments(process: ForwardProcess, operator: MeasurementOperator, shape: tuple[int, ...],
                     iterations: int, t_max: float, t_min: float, mh_steps: int, likelihood_step: str,
                     proposal: str, sampler: Sampler | None, prior_step: PriorStep | None) -> None:
    _check_int(iterations, "iterations", 1)
    _check_int(mh_steps, "mh_steps", 1)
    if not (isinstance(t_max, (int, float)) and isinstance(t_min, (int, float)) and 0.0 < t_min <= t_max <= 1.0):
        raise ValueError(f"split gibbs: need 0 < t_min <= t_max <= 1 (times of the run's schedule), got "
                         f"t_min={t_min!r}, t_max={t_max!r}")
    if likelihood_step not in LIKELIHOOD_STEPS:
        raise ValueError(f"split gibbs: likelihood_step must be one of {list(LIKELIHOOD_STEPS)}, got "
                         f"{likelihood_step!r}")
    if proposal not in PROPOSALS:
        raise ValueError(f"split gibbs: proposal must be one of {list(PROPOSALS)}, got {proposal!r}")
    if not isinstance(operator, MeasurementOperator):
        raise ValueError(f"split gibbs: operator must be a MeasurementOperator, got {type(operator).__name__}")
    if operator.num_states != process.num_states:
        raise ValueError(f"split gibbs: the operator has {operator.num_states} values per site but process "
                         f"{process.name!r} has {process.num_states}")
    if len(shape) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"split gibbs: shape must be (B, *sites) positive integers, got {shape!r}")
    if (sampler is None) == (prior_step is None):
        raise ValueError("split gibbs: give exactly one of sampler= (denoise from level t with the model) and "
                         "prior_step= (an exact x0 ~ p(x0 | x_t) draw)")
    if sampler is not None and not sampler.supports(process):
        raise ValueError(f"split gibbs: sampler {sampler.name!r} does not apply to process {process.name!r}")


def _check_init(process: ForwardProcess, init: Tensor, shape: tuple[int, ...], device: torch.device) -> Tensor:
    init = torch.as_tensor(init)
    if tuple(init.shape) != tuple(shape) or init.is_floating_point() or init.dtype == torch.bool:
        raise ValueError(f"split gibbs: init must be integer data of shape {tuple(shape)}, got {init.dtype} "
                         f"{tuple(init.shape)}")
    if int(init.min()) < 0 or int(init.max()) >= process.num_states:
        raise ValueError(f"split gibbs: init values must lie in 0..{process.num_states - 1}")
    return init.to(device=device, dtype=torch.long)


class LikelihoodStep:
    """The likelihood step z | x0 ∝ K_t(z | x0) L(z) of split Gibbs (module docstring), for an observation y.

    ``mode``: "exact" (per-site draw for an operator with ``site_log_likelihood``; forward filtering / backward
    sampling over each group's partial sums for one with ``sum_factors``: downsample, parity with disjoint groups),
    "mh" (``mh_steps`` Metropolis-Hastings proposals of kind ``proposal`` from the given z), or "auto" (exact when
    the operator allows it). One-site MH proposals under a hard coupled operator (downsample; parity with flip = 0)
    never leave a feasible z and are refused. Counts the rows of log L evaluated (``likelihood_rows``), the MH
    proposals made and accepted, and the one-site proposals from a feasible z that would change it
    (``feasible_moves``) and were accepted (``feasible_moved``)."""

    def __init__(self, process: ForwardProcess, operator: MeasurementOperator, y: Tensor, sites: tuple[int, ...],
                 mode: str = "auto", mh_steps: int = 20, proposal: str = "site") -> None:
        self.process, self.operator, self.y = process, operator, y
        self.mh_steps, self.proposal = mh_steps, proposal
        self.likelihood_rows = self.proposals = self.accepted = 0
        self.feasible_moves = self.feasible_moved = 0
        table = operator.site_log_likelihood(y, sites)
        masking = isinstance(process, MaskingProcess)
        if table is not None:
            table = table.double()
            if bool(torch.isneginf(table).all(-1).any()):
                raise ValueError("split gibbs: the measurement y is impossible under every value of some site "
                                 "(its site log-likelihood is -inf for all K values)")
            if masking:     # MASK: the site's likelihood averaged over a uniform value (module docstring)
                log_c = torch.logsumexp(table, -1, keepdim=True) - math.log(process.num_states)
                table = torch.cat([table, log_c], dim=-1)
        elif masking:
            raise ValueError(f"split gibbs: operator {operator.name!r} couples sites, and its likelihood of a partly "
                             f"masked z is undefined; with the masking process use an operator that factorises over "
                             f"sites (site_log_likelihood), or another process")
        self.table = table                                                   # (B|1, *sites, M) or None
        self.groups = operator.sum_factors(y, sites) if table is None else None
        if mode == "auto":
            mode = "exact" if table is not None or self.groups is not None else "mh"
        if mode == "exact" and table is None and self.groups is None:
            raise ValueError(f"split gibbs: likelihood_step='exact' needs an operator that factorises over sites or "
                             f"over disjoint groups of a sum (downsample, parity with disjoint groups); "
                             f"{operator.name!r} does not: use 'mh'")
        if mode == "mh" and proposal == "site" and self._hard_coupled():
            raise ValueError(f"split gibbs: operator {operator.name!r} is a hard constraint coupling sites, and a "
                             f"one-site proposal from a z that satisfies it always breaks it (the chain never moves); "
                             f"use likelihood_step='exact' (downsample, disjoint parity) or proposal='independent'")
        self.mode = mode

    def _hard_coupled(self) -> bool:
        """Downsample, parity with flip = 0: y rules out every one-site change of a feasible z."""
        if self.table is not None:
            return False
        if self.groups is not None:
            return self.groups.hard
        return getattr(self.operator, "name", "") == "parity" and getattr(self.operator, "flip", 1.0) == 0.0

    def log_likelihood(self, z: Tensor) -> Tensor:
        """log L(z) for z (B, *sites) in the process's values: (B,) float64 (through the site table when there is
        one, MASK included, else the operator's ``log_likelihood``)."""
        self.likelihood_rows += int(z.shape[0])
        if self.table is None:
            return self.operator.log_likelihood(z, self.y).double()
        picked = torch.gather(self.table.expand(z.shape + self.table.shape[-1:]), -1, z[..., None])[..., 0]
        return picked.reshape(z.shape[0], -1).sum(1)

    def kernel_log_probs(self, x0: Tensor, lam: Tensor) -> Tensor:
        """log K_t(. | x0^d) per site at one level lam (1,) float64: (B, *sites, M)."""
        return self.process.log_marginal_matrix(lam.double().reshape(1))[0][x0]

    def __call__(self, x0: Tensor, lam: Tensor, z: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """A draw of z (B, *sites) for x0 (B, *sites) at level lam (one value): exact, or MH from ``z`` (from a draw of
        K_t(. | x0) when z is None)."""
        log_k = self.kernel_log_probs(x0, lam)
        if self.mode == "exact" and self.table is None:
            return sample_given_group_sums(log_k, self.groups, generator)[0]
        if self.mode == "exact":
            logits = log_k + self.table
            stuck = torch.isneginf(logits).all(-1)     # x0 outside the target's support (only an initial x0)
            return sample_categorical(torch.where(stuck[..., None], log_k, logits), generator)
        if z is None:
            z = sample_categorical(log_k, generator)
        return self._metropolis_hastings(z, log_k, generator)

    def violations(self, z: Tensor, log_l: Tensor) -> Tensor:
        """How many factors of L(z) are 0, (B,) long: sites whose site likelihood is -inf (an operator with a site
        table), groups whose sum y rules out (``sum_factors``), else 1 where log_l (B,) is -inf."""
        batch = z.shape[0]
        if self.table is not None:
            picked = torch.gather(self.table.expand(z.shape + self.table.shape[-1:]), -1, z[..., None])[..., 0]
            return torch.isneginf(picked).reshape(batch, -1).sum(1)
        if self.groups is not None:
            index, valid = self.groups.index.to(z.device), self.groups.valid.to(z.device)
            sums = (z.reshape(batch, -1)[:, index] * valid).sum(-1)                      # (B, G)
            if self.groups.modulus is not None:
                sums = sums % self.groups.modulus
            factor = self.groups.log_factor.to(z.device).expand(batch, -1, -1)
            return torch.isneginf(torch.gather(factor, -1, sums[..., None])[..., 0]).sum(1)
        return torch.isneginf(log_l).long()

    def _repair(self, z: Tensor, generator: torch.Generator | None) -> Tensor:
        """A move for a z with L(z) = 0, (B, *sites): one site set to a new value, the site uniform among those of a
        zero factor (a site with -inf site likelihood, or a site of a group whose sum y rules out) when the operator
        names them, else among all sites; the value uniform among those the site's likelihood allows (site table)
        or among all values."""
        batch = z.shape[0]
        flat = z.reshape(batch, -1)
        rows = torch.arange(batch, device=z.device)
        num_values = self.process.num_values
        sites = torch.ones(flat.shape, dtype=torch.bool, device=z.device)
        values = torch.ones(flat.shape + (num_values,), dtype=torch.bool, device=z.device)
        if self.table is not None:
            table = self.table.expand(z.shape + self.table.shape[-1:]).reshape(batch, -1, self.table.shape[-1])
            allowed = ~torch.isneginf(table)
            values = allowed
            sites = ~torch.gather(allowed, -1, flat[..., None])[..., 0]
        elif self.groups is not None:
            index, valid = self.groups.index.to(z.device), self.groups.valid.to(z.device)
            sums = (flat[:, index] * valid).sum(-1)
            if self.groups.modulus is not None:
                sums = sums % self.groups.modulus
            factor = self.groups.log_factor.to(z.device).expand(batch, -1, -1)
            broken = torch.isneginf(torch.gather(factor, -1, sums[..., None])[..., 0])          # (B, G)
            sites = torch.zeros_like(sites)
            member = (broken[..., None] & valid).reshape(batch, -1)
            sites[:, index.reshape(-1)] |= member
        sites = sites | ~sites.any(1, keepdim=True)                                              # none named: all
        site = sample_categorical(torch.log(sites.double()), generator)
        value = sample_categorical(torch.log(values[rows, site].double()), generator)
        out = flat.clone()
        out[rows, site] = value
        return out.reshape(z.shape)

    def _metropolis_hastings(self, z: Tensor, log_k: Tensor, generator: torch.Generator | None) -> Tensor:
        """``mh_steps`` proposals per row for the target K_t(z | x0) L(z), from z; log_k (B, *sites, M).

        A row whose z has L(z) = 0 (outside the target's support: an initial z, or one that the previous x0 forced
        where K_t is concentrated) is repaired instead (``_repair``: a site of a zero factor set to a uniform allowed
        value, not a draw from K_t, which may put all its mass on the violating value), accepted when it does not
        raise the number of zero factors (``violations``; for an operator with no finer structure, every such move).
        Moves out of the support do not touch the target's mass, so the kernel still leaves it invariant, and a row
        never re-enters L = 0 (such a proposal from L > 0 is rejected); rejecting -inf -> -inf instead made these
        states absorbing whenever leaving them took two or more site changes."""
        batch = z.shape[0]
        rows = torch.arange(batch, device=z.device)
        flat_k = log_k.reshape(batch, -1, log_k.shape[-1])
        num_sites = flat_k.shape[1]
        current = self.log_likelihood(z)
        for _ in range(self.mh_steps):
            outside = torch.isneginf(current)
            if self.proposal == "independent":
                candidate = sample_categorical(log_k, generator)
            else:
                site = torch.randint(0, num_sites, (batch,), generator=generator, device=z.device)
                candidate = z.reshape(batch, -1).clone()
                candidate[rows, site] = sample_categorical(flat_k[rows, site], generator)
                candidate = candidate.reshape(z.shape)
            if bool(outside.any()):
                shape = (batch,) + (1,) * (z.dim() - 1)
                candidate = torch.where(outside.reshape(shape), self._repair(z, generator), candidate)
            proposed = self.log_likelihood(candidate)
            u = torch.rand(batch, generator=generator, dtype=torch.float64, device=z.device)
            accept = ~outside & (torch.log(u) < proposed - current)
            if bool(outside.any()):
                fewer = self.violations(candidate, proposed) <= self.violations(z, current)
                accept = accept | (outside & fewer)
            changed = (candidate != z).reshape(batch, -1).any(1) & ~outside
            self.feasible_moves += int(changed.sum())
            self.feasible_moved += int((changed & accept).sum())
            z = torch.where(accept.reshape((batch,) + (1,) * (z.dim() - 1)), candidate, z)
            current = torch.where(accept, proposed, current)
            self.accepted += int(accept.sum())
            self.proposals += batch
        return z


@torch.no_grad()
def split_gibbs_sample(process: ForwardProcess, denoiser: Denoiser | None, schedule: Schedule,
                       operator: MeasurementOperator, y: Tensor, shape: tuple[int, ...], sampler: Sampler | None = None,
                       *, iterations: int = 40, t_max: float = 0.6, t_min: float = 0.01, mh_steps: int = 20,
                       annealing: str = "geometric", likelihood_step: str = "auto", proposal: str = "site",
                       prior_step: PriorStep | None = None, init: Tensor | None = None,
                       generator: torch.Generator | None = None, device: torch.device | str | None = None,
                       callback: ProgressCallback | None = None) -> SplitGibbsResult:
    """Posterior samples x0 ~ p(x0 | y) (approximately; see the module docstring for what is exact), (B, *sites).

    Args:
        process, denoiser, schedule: the prior (a diffusion model) and the run's schedule, which maps t to lam.
        operator, y: the measurement p(y | x0) and the observation, (B or 1, *operator.y_shape(sites)).
        shape: (B, *sites), B independent chains.
        sampler: the reverse sampler of the prior step, run from x_t = z at level t (``start=(z, t)``); or
        prior_step: an exact x0 ~ p(x0 | x_t = z) (``OraclePriorStep``): exactly one of the two.
        iterations, t_max, t_min, annealing: the levels t_i (``annealing_levels``), one Gibbs sweep each.
        likelihood_step: "exact" (per-site kernel; needs an operator that factorises), "mh", or "auto" (exact when
            possible). mh_steps, proposal: the Metropolis-Hastings proposals per iteration and their kind.
        init: the initial x0 (B, *sites) (default: uniform random data values).
        callback: callback(i, iterations, x0) after each iteration.
    """
    shape = tuple(shape)
    _check_arguments(process, operator, shape, iterations, t_max, t_min, mh_steps, likelihood_step, proposal,
                     sampler, prior_step)
    if sampler is not None:
        device = sampler.sampling_device(denoiser, generator, device)
    else:
        device = torch.device(device) if device is not None else (generator.device if generator is not None
                                                                 else torch.device("cpu"))
    batch, sites = shape[0], shape[1:]
    y = operator.check_y(torch.as_tensor(y).to(device), sites)
    if y.shape[0] not in (1, batch):
        raise ValueError(f"split gibbs: y has batch {y.shape[0]}, expected 1 or B = {batch}")
    step = LikelihoodStep(process, operator, y, sites, likelihood_step, mh_steps, proposal)
    levels = annealing_levels(annealing, iterations, float(t_max), float(t_min))
    lams = torch.logit(schedule.alpha(levels).clamp(0.0, 1.0))
    if not bool(torch.isfinite(lams).all()):
        raise ValueError(f"split gibbs: the schedule gives alpha(t) = 0 or 1 at some level in [{t_min}, {t_max}]; "
                         f"choose levels strictly inside the schedule's noise range")
    if init is None:
        x0 = torch.randint(0, process.num_states, shape, generator=generator, device=device)
    else:
        x0 = _check_init(process, init, shape, device)
    z: Tensor | None = None
    evaluations = calls = prior_rows = 0
    for i in range(iterations):
        lam = lams[i].reshape(1).to(device)
        z = step(x0, lam, z, generator)
        lam_rows = lam.double().expand(batch)
        if prior_step is not None:
            x0 = prior_step(z, lam_rows, generator)
            prior_rows += batch
        else:
            x0 = sampler.sample(process, denoiser, schedule, shape, generator, device, start=(z, float(levels[i])))
            evaluations += sampler.network_evaluations
            calls += sampler.network_calls
        if tuple(x0.shape) != shape or (x0.numel() and (int(x0.min()) < 0 or int(x0.max()) >= process.num_states)):
            raise ValueError(f"split gibbs: the prior step must return data values 0..{process.num_states - 1} of "
                             f"shape {shape} (a sampler needs final_denoise=True); got {tuple(x0.shape)}")
        if callback is not None:
            callback(i + 1, iterations, x0)
    if step.mode == "mh" and step.proposal == "site" and step.feasible_moves >= 100 and step.feasible_moved == 0:
        warnings.warn(f"split gibbs: none of {step.feasible_moves} one-site proposals from a z with p(y | z) > 0 was "
                      f"accepted: the operator looks like a hard constraint coupling sites, so z never moved; use "
                      f"proposal='independent'", RuntimeWarning, stacklevel=2)
    rows_before = step.likelihood_rows
    infeasible = int(torch.isneginf(step.log_likelihood(z)).sum()) if z is not None else 0
    step.likelihood_rows = rows_before
    return SplitGibbsResult(x0=x0, z=z, levels=levels, network_evaluations=evaluations, network_calls=calls,
                            nfe=evaluations / batch, prior_rows=prior_rows,
                            likelihood_evaluations=step.likelihood_rows,
                            acceptance_rate=step.accepted / step.proposals if step.proposals else float("nan"),
                            likelihood_step=step.mode, infeasible_chains=infeasible)


def split_gibbs_method(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                       operator: MeasurementOperator, y: Tensor, shape: tuple[int, ...], *, iterations: int = 40,
                       t_max: float = 0.6, t_min: float = 0.01, mh_steps: int = 20, annealing: str = "geometric",
                       likelihood_step: str = "auto", proposal: str = "site", exact_prior: bool = False,
                       generator: torch.Generator | None = None, device: torch.device | str | None = None,
                       callback: ProgressCallback | None = None) -> Tensor:
    """``split_gibbs_sample`` in the form of a ``posterior_sample`` method (sampler first, returns x0 (B, *sites)):
    register it as ``register_method("split-gibbs", split_gibbs_method)``. ``exact_prior``: the prior step is the
    exact joint p(x0 | x_t) of an oracle prior (``denoiser`` an ``OracleDenoiser`` or ``SharedLevelOracle``;
    ``sampler`` is then not used), else ``sampler`` started from x_t = z."""
    prior_step = None
    if exact_prior:
        oracle = getattr(denoiser, "oracle", denoiser)
        if not isinstance(oracle, OracleDenoiser):
            raise ValueError(f"split gibbs: exact_prior needs the prior as an enumerated table (OracleDenoiser or "
                             f"SharedLevelOracle), got {type(denoiser).__name__}")
        if oracle.process.name != process.name or oracle.process.num_states != process.num_states:
            raise ValueError(f"split gibbs: the oracle prior was built for process {oracle.process.name!r} (K = "
                             f"{oracle.process.num_states}), not {process.name!r} (K = {process.num_states})")
        prior_step, sampler = OraclePriorStep(oracle), None
    result = split_gibbs_sample(process, denoiser, schedule, operator, y, shape, sampler, iterations=iterations,
                                t_max=t_max, t_min=t_min, mh_steps=mh_steps, annealing=annealing,
                                likelihood_step=likelihood_step, proposal=proposal, prior_step=prior_step,
                                generator=generator, device=device, callback=callback)
    warn_if_contradicting(operator, operator.check_y(torch.as_tensor(y), tuple(shape[1:])), result.x0, "split-gibbs")
    return result.x0
