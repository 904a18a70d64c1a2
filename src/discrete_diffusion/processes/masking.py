"""Masking (absorbing-state) diffusion.

References: Sahoo et al., "Simple and Effective Masked Diffusion Language Models" (MDLM), NeurIPS 2024
(SUBS parameterisation, the continuous-time loss); Austin et al., "Structured Denoising Diffusion Models in
Discrete State-Spaces" (D3PM-absorbing), NeurIPS 2021; Shi et al., "Simplified and Generalized Masked
Diffusion for Discrete Data" (MD4), 2024.

Values: data 0..K-1 and MASK = K (num_values = K + 1). In sigma-time every data value jumps to MASK at rate
1 (Q[x, MASK] = 1), so q_t(x_t | x0) = alpha 1[x_t = x0] + (1 - alpha) 1[x_t = MASK].

ELBO integrand per unit of lam, from the generic form (1 - alpha) sum_{y != x_t} Q[y, x_t] Bregman(s_y, r_y):
only x_t = MASK contributes (no rate leads *into* an unmasked value), with y ranging over 0..K-1,
Q[y, MASK] = 1, r_y = q(y|x0)/q(MASK|x0) = 1[y = x0] alpha/(1 - alpha) and s_y = p(y|x_t) alpha/(1 - alpha).
Summing s_y - r_y log s_y + r_y log r_y - r_y over y gives alpha/(1 - alpha) (sum_y p_y - 1 - log p_x0) =
alpha/(1 - alpha) (-log p_x0) because the SUBS prediction puts no mass on MASK, hence

    elbo_integrand = alpha * sum_{masked d} -log p(x0^d | x_t).

Reverse rates per unit of lam (same algebra): MASK -> y at alpha p(y | x_t); the total at a masked site is
alpha, so the total rate is exactly sigmoid(lam) * (number of masked sites): the exact simulator's bound.

Prior (honest version of "all MASK"): a delta on MASK gives KL(q_1(.|x0) || prior) = inf whenever
alpha(1) > 0. The prior used here puts mass 1 - alpha1 on MASK and alpha1 / K on every data value; its KL
is alpha1 log K per site exactly (alpha1 log(alpha1 / (alpha1/K)) + (1 - alpha1) log 1), and the samplers
draw from this same prior (a fraction alpha1 of random unmasked values, 1e-4 for the log-linear schedule).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    ForwardProcess,
    Prediction,
    RateTerm,
    check_jump_rule,
    expand_to_sites,
    move_probability,
    sample_categorical,
)


def unmask_probability(lam_t: Tensor, lam_s: Tensor) -> Tensor:
    """(alpha_s - alpha_t) / (1 - alpha_t) = 1 - (1 - alpha_s)/(1 - alpha_t), float64 (B,), computed as
    -expm1(log(1 - alpha_s) - log(1 - alpha_t)) so that it stays accurate as alpha_t -> 1."""
    lam_t, lam_s = lam_t.double(), lam_s.double()
    return (-torch.expm1(F.logsigmoid(-lam_s) - F.logsigmoid(-lam_t))).clamp(0.0, 1.0)


class _SubsLogSoftmax(torch.autograd.Function):
    """SUBS on logits (B, *sites, K) with unmasked (B, *sites) bool and index = x_t clamped (B, *sites, 1): the
    log-softmax at masked sites, log-prob 0 on x_t and -inf elsewhere at unmasked ones; (B, *sites, K) float.

    One (B, *sites, K) tensor: the output, which is also all the backward keeps. Built from autograd ops, the SUBS
    edits could not be done in place on log_softmax's output (its backward needs it), and the copies cost two more
    tensors of the logits' size (28.6 against 20.9 GiB at K = 50,257, L = 1024, B = 16). Backward: at masked sites
    the output is log_softmax(logits), so the gradient is log_softmax's (grad - softmax * sum(grad)); at unmasked
    sites the output does not depend on the logits: 0."""

    @staticmethod
    def forward(ctx, logits: Tensor, unmasked: Tensor, index: Tensor) -> Tensor:
        out = torch.log_softmax(logits, dim=-1)
        kept = out.gather(-1, index)
        out.masked_fill_(unmasked[..., None], -torch.inf)
        out.scatter_(-1, index, torch.where(unmasked[..., None], torch.zeros_like(kept), kept))
        ctx.save_for_backward(out, unmasked)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        out, unmasked = ctx.saved_tensors
        # grad - exp(out) * grad.sum(-1) in one fused kernel (the aten op of log_softmax's own backward), valid at
        # masked sites, where out is the log-softmax; unmasked sites are zeroed
        grad_logits = torch._log_softmax_backward_data(grad.contiguous(), out, -1, out.dtype)
        return grad_logits.masked_fill_(unmasked[..., None], 0.0), None, None


class SubsPrediction(Prediction):
    """A masking prediction made without autograd: the logits (B, *sites, K) and x_t (B, *sites); ``x0_log_probs``
    (SUBS: the log-softmax at masked sites, a point mass on x_t at unmasked ones) is built on first access and kept.
    ``masked_log_probs`` gives the log-softmax at selected masked sites without building the whole tensor: a
    sampler that draws x0 only where a site unmasks (the bridge) then never touches the other (B, *sites, K)."""

    def __init__(self, logits: Tensor, xt: Tensor, mask_index: int) -> None:      # no dataclass __init__
        self.logits, self.xt, self.mask_index = logits, xt, mask_index
        self.mean_missing = None
        self._log_probs: Tensor | None = None

    @property
    def x0_log_probs(self) -> Tensor:       # type: ignore[override]
        if self._log_probs is None:
            logits, xt = self.logits, self.xt
            unmasked = xt != self.mask_index
            index = xt.clamp_max(self.mask_index - 1)[..., None]
            carried = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)   # every row written
            masked = ~unmasked
            if bool(masked.any()):
                carried[masked] = torch.log_softmax(logits[masked], dim=-1)
            if bool(unmasked.any()):
                carried[unmasked] = -torch.inf
            kept = carried.gather(-1, index)
            # log-prob 0 on x_t at unmasked sites; masked sites get their own value back
            self._log_probs = carried.scatter_(
                -1, index, torch.where(unmasked[..., None], torch.zeros_like(kept), kept))
        return self._log_probs

    def masked_log_probs(self, xt: Tensor, where: Tensor) -> Tensor | None:
        """log p(x0 | x_t) at the sites ``where`` (B, *sites) bool: (n, K), or None when ``xt`` is not the x_t of this
        prediction or a selected site is unmasked (then use ``x0_log_probs``)."""
        if self._log_probs is not None:
            return self._log_probs[where] if xt is self.xt else None
        if not (xt is self.xt or torch.equal(xt, self.xt)) or bool((where & (xt != self.mask_index)).any()):
            return None
        return torch.log_softmax(self.logits[where], dim=-1)


class MaskingProcess(ForwardProcess):
    """Absorbing-state diffusion with MASK = K and the SUBS parameterisation ("logits" over the K data values)."""

    name = "masking"
    parameterizations = ("logits",)
    posterior_depends_on_noise_level = False
    prior_description = "MASK with probability 1 - alpha(1), else a uniform data value (KL = alpha(1) log K per site)"

    def __init__(self, num_states: int) -> None:
        super().__init__(num_states)
        self.num_values = self.num_states + 1

    @property
    def mask_index(self) -> int:
        """The MASK value, K."""
        return self.num_states

    # ----- forward marginals -------------------------------------------------------------------
    def sample_marginal(self, x0: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        alpha = expand_to_sites(torch.sigmoid(lam.double()), x0)
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        return torch.where(u < alpha, x0, torch.full_like(x0, self.mask_index))

    def log_marginal_matrix(self, lam: Tensor) -> Tensor:
        lam64 = lam.double()
        k = self.num_states
        out = torch.full((lam.shape[0], k, k + 1), -torch.inf, dtype=torch.float64, device=lam.device)
        idx = torch.arange(k, device=lam.device)
        out[:, idx, idx] = F.logsigmoid(lam64)[:, None]
        out[:, :, k] = F.logsigmoid(-lam64)[:, None]
        return out

    # ----- prior ---------------------------------------------------------------------------------
    def prior_log_probs(self, lam: Tensor) -> Tensor:
        """log prior(y) over the K + 1 values at noise level lam (B,): (B, K + 1) float64."""
        lam64 = lam.double()
        values = (F.logsigmoid(lam64) - math.log(self.num_states))[:, None].expand(-1, self.num_states)
        return torch.cat([values, F.logsigmoid(-lam64)[:, None]], dim=1)

    def sample_prior(self, shape: tuple[int, ...], lam: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        alpha = 1.0 / (1.0 + math.exp(-float(lam))) if lam > -700 else 0.0
        u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        values = torch.randint(0, self.num_states, shape, generator=generator, device=device)
        return torch.where(u < alpha, values, torch.full_like(values, self.mask_index))

    def prior_kl(self, x0: Tensor, lam: Tensor) -> Tensor:
        sites = x0[0].numel()
        return (torch.sigmoid(lam.double()) * math.log(self.num_states) * sites).to(torch.get_default_dtype())

    # ----- denoiser output -----------------------------------------------------------------------
    #: network_features is one_hot(x_t): an embedding backbone reads the indices (ForwardProcess.input_kind)
    input_kind = "tokens"

    @property
    def feature_channels(self) -> int:
        return self.num_values

    def network_features(self, xt: Tensor, lam: Tensor) -> Tensor:
        """One-hot of the K + 1 values as channels: (B, K + 1, *sites) float."""
        return F.one_hot(xt, self.num_values).movedim(-1, 1).to(torch.get_default_dtype())

    def prediction_from_output(self, output: Tensor, xt: Tensor, lam: Tensor, parameterization: str) -> Prediction:
        """SUBS: log_softmax over the K data values at masked sites; unmasked sites copied through
        (log-prob 0 on x_t, -inf elsewhere). output: (B, K, *sites) -> x0_log_probs (B, *sites, K).

        Under autograd one (B, *sites, K) tensor is allocated (``_SubsLogSoftmax``); without autograd the result is
        a ``SubsPrediction``, which builds that tensor only when asked for it and lets ``sample_x0_where`` draw from
        the logits of the selected sites alone."""
        self.check_parameterization(parameterization)
        logits = output.movedim(1, -1)
        if not logits.requires_grad:
            return SubsPrediction(logits, xt, self.mask_index)
        unmasked = xt != self.mask_index
        index = xt.clamp_max(self.num_states - 1)[..., None]
        return Prediction(x0_log_probs=_SubsLogSoftmax.apply(logits, unmasked, index))

    # ----- training and likelihood ---------------------------------------------------------------
    def elbo_integrand(self, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction) -> Tensor:
        log_probs = self.x0_log_probs(prediction, xt)
        nll = -torch.gather(log_probs, -1, x0[..., None])[..., 0]
        nll = torch.where(xt == self.mask_index, nll, torch.zeros_like(nll))
        alpha = torch.sigmoid(lam.to(nll.dtype))
        return alpha * nll.reshape(nll.shape[0], -1).sum(1)

    def reconstruction_nll(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        log_probs = self.x0_log_probs(prediction, xt)
        nll = -torch.gather(log_probs, -1, x0[..., None])[..., 0]
        nll = torch.where(xt == self.mask_index, nll, torch.zeros_like(nll))
        return nll.reshape(nll.shape[0], -1).sum(1)

    # ----- generation ------------------------------------------------------------------------------
    def bridge_from_x0(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """A masked site becomes x0 with probability (alpha_s - alpha_t)/(1 - alpha_t); others stay."""
        p = expand_to_sites(unmask_probability(lam_t, lam_s), xt)
        u = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
        return torch.where((xt == self.mask_index) & (u < p), x0, xt)

    def combined_leap(self, base: Tensor, terms: list[RateTerm], lam_to: Tensor, rule: str = "reject",
                      generator: torch.Generator | None = None) -> Tensor:
        """One leap from ``base`` with the rates of the terms combined per channel "site d: MASK -> y".

        Only masked sites of ``base`` move. Term i = (c_i, x_i, prediction_i, lam_i, lam_from_i) contributes
        c_i h_i p_i(y) at such a site, h_i = softplus(lam_to) - softplus(lam_from_i) its integrated alpha and
        p_i = p(x0^d | x_i) (for a site that x_i has already unmasked, the point mass on x_i's value: SUBS, and
        the exact posterior). The channel's intensity is taken out of MASK, base's value, even where x_i has moved:
        theta-RK-2 leaps from x_t with rates from y*, and a zero rate at the sites y* unmasked would make a site
        unmask over the step with probability e^{-h_1}(1 - e^{-h}) instead of 1 - e^{-h} (first order).

        Every p_i sums to one, so the combined total hazard is exactly H = (sum_i c_i h_i)_+ whatever the
        predictions: a site moves with probability move_probability(H, rule) (with "first" the exact
        1 - (1 - alpha_s)/(1 - alpha_t) of the step when the h_i come from one interval) and its target is drawn
        (float64, only where a site moves) in proportion to (sum_i c_i h_i p_i(y))_+. Where that clamp does not
        bind and every x_i is masked wherever base is (theta-trapezoidal), this is the law of the generic
        combined_leap (tested)."""
        check_jump_rule(rule)
        sites = base == self.mask_index
        if not bool(sites.any()):
            return base
        rows = sites.nonzero(as_tuple=True)[0]
        combined, total = None, None
        for c, x, prediction, _lam, lam_from in terms:
            hazard = (F.softplus(lam_to.double()) - F.softplus(lam_from.double())).clamp_min(0.0)[rows]
            x_sites = x[sites]
            moved = x_sites != self.mask_index                                  # x has unmasked these sites
            probs = self.x0_log_probs(prediction, x)[sites].exp()               # a fresh (n, K) tensor
            if bool(moved.any()):
                probs[moved] = F.one_hot(x_sites[moved], self.num_states).to(probs.dtype)
            term = probs.mul_((c * hazard).float()[:, None])
            combined = term if combined is None else combined.add_(term)
            total = c * hazard if total is None else total + c * hazard
        combined = combined.clamp_min_(0.0)
        total = total.clamp_min(0.0)
        u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=base.device)
        move = (u < move_probability(total, rule)) & (combined.sum(-1) > 0)
        values = base[sites]
        if bool(move.any()):
            values[move] = sample_categorical(torch.log(combined[move].double()), generator)
        out = base.clone()
        out[sites] = values
        return out

    def sample_x0_where(self, xt: Tensor, prediction: Prediction, where: Tensor,
                        generator: torch.Generator | None = None) -> Tensor:
        """As the base's, reading only the selected rows of a ``SubsPrediction`` (no (B, *sites, K) tensor)."""
        if isinstance(prediction, SubsPrediction):
            out = xt.clone()
            if bool(where.any()):
                rows = prediction.masked_log_probs(xt, where)
                if rows is None:
                    rows = prediction.x0_log_probs[where]
                out[where] = sample_categorical(rows, generator)
            return out
        return super().sample_x0_where(xt, prediction, where, generator)

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        """x0 ~ p(x0 | x_t), drawn at the masked sites only: an unmasked site's posterior is a point mass on x_t."""
        return self.sample_x0_where(xt, prediction, xt == self.mask_index, generator)

    def bridge_step(self, xt: Tensor, prediction: Prediction, lam_t: Tensor, lam_s: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
        """The bridge step with x0 drawn only where a masked site unmasks (same law as bridge_from_x0 after
        sample_x0, a fraction of the cost when few sites unmask per step)."""
        p = expand_to_sites(unmask_probability(lam_t, lam_s), xt)
        u = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
        return self.sample_x0_where(xt, prediction, (xt == self.mask_index) & (u < p), generator)

    def leap(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor, lam_to: Tensor,
             rule: str = "reject", generator: torch.Generator | None = None) -> Tensor:
        """The rates out of MASK are a hazard h = softplus(lam_to) - softplus(lam_from) per masked site times
        p(y | x_t), which sums to 1: a masked site moves with probability move_probability(h, rule) and its
        target is drawn from p(x0 | x_t) only then. Same law as jump_from_rates on integrated_reverse_rates."""
        check_jump_rule(rule)
        hazard = (F.softplus(lam_to.double()) - F.softplus(lam_from.double())).clamp_min(0.0)
        p = expand_to_sites(move_probability(hazard, rule), xt)
        u = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
        return self.sample_x0_where(xt, prediction, (xt == self.mask_index) & (u < p), generator)

    def reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """MASK -> y at rate alpha p(y | x_t) per unit of lam (p renormalised over the K values in float64);
        zero at unmasked sites. (B, *sites, K + 1) float64."""
        probs = torch.softmax(self.x0_log_probs(prediction, xt).double(), dim=-1)
        alpha = expand_to_sites(torch.sigmoid(lam.double()), xt)[..., None]
        masked = (xt == self.mask_index)[..., None]
        rates = torch.where(masked, alpha * probs, torch.zeros_like(probs))
        return torch.cat([rates, torch.zeros_like(rates[..., :1])], dim=-1)

    def integrated_reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor,
                                 lam_to: Tensor) -> Tensor:
        """The rate is alpha(lam) p(y | x_t) and p does not depend on lam at fixed x_t, so the integral is exact:
        p(y | x_t) * (softplus(lam_to) - softplus(lam_from)) at masked sites (int alpha dlam = softplus)."""
        rates = self.reverse_rates(xt, prediction, torch.full_like(lam.double(), torch.inf))   # alpha = 1: p itself
        hazard = (F.softplus(lam_to.double()) - F.softplus(lam_from.double())).clamp_min(0.0)
        return rates * expand_to_sites(hazard, xt)[..., None]

    def max_remask_probability(self, lam_t: Tensor, lam_s: Tensor) -> Tensor:
        """ReMDM's sigma_max = min(1, (1 - alpha_s) / alpha_t), float64 (B,): the largest remasking probability
        that keeps the marginals q_s(. | x0) (Wang et al., 2025)."""
        lam_t, lam_s = lam_t.double(), lam_s.double()
        return torch.exp(F.logsigmoid(-lam_s) - F.logsigmoid(lam_t)).clamp(0.0, 1.0)

    def remasking_bridge(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor, sigma: Tensor,
                         generator: torch.Generator | None = None) -> Tensor:
        """ReMDM's posterior (Wang et al., 2025, "Remasking Discrete Diffusion Models with Inference-Time
        Scaling"), sigma (B,) or (B, *sites) in [0, max_remask_probability]: an unmasked site is remasked with
        probability sigma; a masked site becomes x0 with probability (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t).
        Both keep q_s(x_s | x0) = alpha_s 1[x_s = x0] + (1 - alpha_s) 1[x_s = MASK]; sigma = 0 is bridge_from_x0."""
        unmask, remask = self._remasking_moves(xt, lam_t, lam_s, sigma, generator)
        out = torch.where(unmask, x0, xt)
        return out.masked_fill(remask, self.mask_index)

    def remasking_step(self, xt: Tensor, prediction: Prediction, lam_t: Tensor, lam_s: Tensor, sigma: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """remasking_bridge with x0 ~ p(x0 | x_t) drawn only at the sites that unmask (same law, less work)."""
        unmask, remask = self._remasking_moves(xt, lam_t, lam_s, sigma, generator)
        return self.sample_x0_where(xt, prediction, unmask, generator).masked_fill(remask, self.mask_index)

    def _remasking_moves(self, xt: Tensor, lam_t: Tensor, lam_s: Tensor, sigma: Tensor,
                         generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(sites that unmask, sites that are remasked), both (B, *sites) bool, for remasking_bridge. sigma is
        (B,) or per site (B, *sites); a masked site unmasks with its own sigma in the formula."""
        sigma = sigma.double().clamp_min(0.0)
        sigma = expand_to_sites(sigma, xt) if sigma.dim() == 1 else sigma
        sigma = torch.minimum(sigma, expand_to_sites(self.max_remask_probability(lam_t, lam_s), xt))
        # (alpha_s - alpha_t)/(1 - alpha_t) + sigma alpha_t/(1 - alpha_t), the first term computed stably
        odds = expand_to_sites(torch.exp(F.logsigmoid(lam_t.double()) - F.logsigmoid(-lam_t.double())), xt)
        unmask = (expand_to_sites(unmask_probability(lam_t, lam_s), xt) + sigma * odds).clamp(0.0, 1.0)
        u = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
        masked = xt == self.mask_index
        return masked & (u < unmask), ~masked & (u < sigma)

    def reverse_rate_bound(self, xt: Tensor) -> Tensor:
        """The total rate is exactly sigmoid(lam) * (number of masked sites)."""
        return (xt == self.mask_index).reshape(xt.shape[0], -1).sum(1).double()
