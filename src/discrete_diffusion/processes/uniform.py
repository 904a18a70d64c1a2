"""Uniform-noise diffusion.

References: Austin et al., "Structured Denoising Diffusion Models in Discrete State-Spaces" (D3PM-uniform),
NeurIPS 2021; Hoogeboom et al., "Argmax Flows and Multinomial Diffusion", NeurIPS 2021; Schiff et al.,
"Simple Guidance Mechanisms for Discrete Diffusion Models" (UDLM), 2024.

In sigma-time every site jumps at rate 1 to a uniformly drawn value: Q = (1/K) 1 1^T - I, so
P_t = alpha I + (1 - alpha)/K 1 1^T and q_t(y | x0) = alpha 1[y = x0] + (1 - alpha)/K.

Write x = x_t, g = K alpha / (1 - alpha) (so q(y|x0) = (1 - alpha)/K (1 + g 1[y = x0])) and p = p(x0 | x_t).
For y != x, Q[y, x] = 1/K and
    r_y = q(y|x0)/q(x|x0) = 1/(1 + g) (all y)  if x = x0;   1 + g (y = x0), 1 (other y)  if x != x0,
    s_y = sum_x0 p_x0 q(y|x0)/q(x|x0) = (1 - p_x) + p_x/(1 + g) + g p_y.
The ELBO integrand per lam is (1 - alpha)/K sum_{y != x} [s_y - r_y log s_y + r_y log r_y - r_y]: O(K) per
site. With the "logits" parameterisation p ∝ softmax(net) * (1 + g 1[x0 = x]) (the exact single-site
likelihood added to the logits), s_y becomes UDLM's (1 + g pi_y) / (1 + g pi_x), pi = softmax(net), and
p(x0 = x | x) -> 1 as alpha -> 1, which keeps the integrand finite at t -> 0 (DESIGN.md section 3).

Reverse rates per lam: x -> y at (1 - alpha)/K s_y. At a site the total is
(K-1)/K (1 - alpha)^2/(1 - alpha + K alpha) p_x + (1 - p_x) ((K-1)/K (1 - alpha) + alpha), which tends to
(K - 1)/K as alpha -> 0, so no bound of the form c(x) sigmoid(lam) exists: ``reverse_rate_bound`` raises and the
"exact" sampler does not apply. The two-term bound c_alpha sigmoid(lam) + c_noise sigmoid(-lam)
(``reverse_rate_bound_terms``) does hold, and the "exact-thinning" sampler simulates the reverse CTMC exactly with it.

Bridge: q(x_s | x_t, x0) ∝ P_{s->t}[x_s, x_t] q_s(x_s | x0), P_{s->t} = rho I + (1 - rho)/K 1 1^T,
rho = alpha_t / alpha_s; sampled exactly per site in float64. Prior: uniform over the K values.
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

#: lam is clamped here before exp(lam) (g = K e^lam stays finite in float64; 1 - alpha is ~1e-217 there).
_LAM_MAX = 500.0


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) to full precision at every x (F.softplus returns x itself above x = 20, dropping the e^-x
    that is the whole of 1 - p_x at the low-noise end), same shape and dtype as x."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _rest_probability(log_probs: Tensor, xt: Tensor) -> Tensor:
    """1 - p(x0 = x_t | x_t) = -expm1(log p_x): float64 (B, *sites), log_probs (B, *sites, K). Accurate when log p_x
    is accurate near 0 (relative, not absolute, error), which ``prediction_from_output`` guarantees."""
    return -torch.expm1(torch.gather(log_probs, -1, xt[..., None])[..., 0].double())


class UniformProcess(ForwardProcess):
    """Uniform jumps over K values; "logits" parameterisation with the single-site likelihood added."""

    name = "uniform"
    parameterizations = ("logits",)
    prior_description = "uniform over the K values"

    # ----- forward marginals -------------------------------------------------------------------
    def sample_marginal(self, x0: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.sample_marginal_with_noise(x0, lam, generator)[0]

    def sample_marginal_with_noise(self, x0: Tensor, lam: Tensor,
                                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """x_t ~ q_t(. | x0) with DDPD's latent noise indicator: (x_t, z), both (B, *sites). Each site is noise
        (z = 1, a uniform value, which may equal x0) with probability 1 - alpha, else x_t = x0 (z = 0)."""
        alpha = expand_to_sites(torch.sigmoid(lam.double()), x0)
        u = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        noise = torch.randint(0, self.num_states, x0.shape, generator=generator, device=x0.device)
        is_noise = u >= alpha
        return torch.where(is_noise, noise, x0), is_noise

    def _log_boost(self, lam: Tensor) -> Tensor:
        """log(1 + g) = log(1 + K alpha/(1 - alpha)) = softplus(lam + log K), float64, same shape as lam."""
        return _softplus(lam.double().clamp_max(_LAM_MAX) + math.log(self.num_states))

    def log_marginal_matrix(self, lam: Tensor) -> Tensor:
        k = self.num_states
        lam64 = lam.double()[:, None, None]
        off = F.logsigmoid(-lam64) - math.log(k)                                       # log (1 - alpha)/K
        diag = torch.logaddexp(F.logsigmoid(lam64), off)                               # log(alpha + (1 - alpha)/K)
        eye = torch.eye(k, dtype=torch.bool, device=lam.device)
        return torch.where(eye, diag, off)

    # ----- prior ---------------------------------------------------------------------------------
    def prior_log_probs(self, lam: Tensor) -> Tensor:
        """log prior(y) = -log K over the K values: (B, K) float64."""
        return torch.full((lam.shape[0], self.num_states), -math.log(self.num_states), dtype=torch.float64,
                          device=lam.device)

    def sample_prior(self, shape: tuple[int, ...], lam: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
        return torch.randint(0, self.num_states, shape, generator=generator, device=device)

    def prior_kl(self, x0: Tensor, lam: Tensor) -> Tensor:
        """KL(q_1(.|x0) || uniform) is the same for every x0: sum_y q log(K q), times the number of sites."""
        row = self.log_marginal_matrix(lam)[:, 0, :]                                   # (B, K)
        kl = (row.exp() * (row + math.log(self.num_states))).sum(1)
        return (kl * x0[0].numel()).to(torch.get_default_dtype())

    # ----- denoiser output -----------------------------------------------------------------------
    #: network_features is one_hot(x_t): an embedding backbone reads the indices (ForwardProcess.input_kind)
    input_kind = "tokens"

    @property
    def feature_channels(self) -> int:
        return self.num_states

    def network_features(self, xt: Tensor, lam: Tensor) -> Tensor:
        """One-hot of the K values as channels: (B, K, *sites) float."""
        return F.one_hot(xt, self.num_states).movedim(-1, 1).to(torch.get_default_dtype())

    def prediction_from_output(self, output: Tensor, xt: Tensor, lam: Tensor, parameterization: str) -> Prediction:
        """p(x0 | x_t) = softmax(net + log(1 + g) 1[x0 = x_t]). output (B, K, *sites) -> (B, *sites, K).

        With logits l, x = x_t and W = sum_{y != x} e^{l_y} (a logsumexp with l_x left out):
        v = log W - log(1 + g) - l_x = log((1 - p_x)/p_x), log p_x = -softplus(v) and the boosted normaliser is
        l_x + log(1 + g) + softplus(v), so log p_y = l_y - that for y != x. log p_x is never a difference of terms
        of size lam + log K: near p_x = 1 it keeps its relative precision, and so does 1 - p_x = -expm1(log p_x)
        (in float32 the difference form was off by ~1e-6 absolute, up to 100x 1 - p_x at K = 256, lam = 15)."""
        self.check_parameterization(parameterization)
        logits = output.movedim(1, -1)
        lam_sites = expand_to_sites(lam.double().clamp_max(_LAM_MAX), xt)
        boost = self._log_boost(lam_sites).to(logits.dtype).expand(xt.shape)[..., None]   # log(1 + g)
        at_x = torch.gather(logits, -1, xt[..., None])
        log_w = torch.logsumexp(logits.scatter(-1, xt[..., None], -torch.inf), dim=-1, keepdim=True)
        v = log_w - boost - at_x                                                        # log((1 - p_x)/p_x)
        log_norm = at_x + boost + _softplus(v)
        return Prediction(x0_log_probs=(logits - log_norm).scatter_(-1, xt[..., None], -_softplus(v)))

    # ----- training and likelihood ---------------------------------------------------------------
    def ratio_estimates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """s_y = (1 - p_x) + p_x/(1 + g) + g p_y for every y (the entry y = x_t is meaningless): float64
        (B, *sites, K). 1 - p_x is summed from the other probabilities to keep it accurate near p_x = 1."""
        probs = self.x0_log_probs(prediction, xt).double().exp()
        lam_sites = expand_to_sites(lam.double().clamp_max(_LAM_MAX), xt)[..., None]
        at_x = F.one_hot(xt, self.num_states).bool()
        p_x = torch.where(at_x, probs, torch.zeros_like(probs)).sum(-1, keepdim=True)
        rest = torch.where(at_x, torch.zeros_like(probs), probs).sum(-1, keepdim=True)
        g = torch.exp(lam_sites + math.log(self.num_states))
        return rest + p_x * torch.exp(-self._log_boost(lam_sites)) + g * probs

    def elbo_integrand(self, x0: Tensor, xt: Tensor, lam: Tensor, prediction: Prediction) -> Tensor:
        s = self.ratio_estimates(xt, prediction, lam)                                   # (B, *sites, K)
        log_boost = self._log_boost(expand_to_sites(lam, xt))[..., None]               # log(1 + g)
        at_x = F.one_hot(xt, self.num_states).bool()
        at_x0 = F.one_hot(x0, self.num_states).bool()
        clean = (xt == x0)[..., None]
        log_r = torch.where(clean, -log_boost, torch.where(at_x0, log_boost, torch.zeros_like(log_boost)))
        r = log_r.exp()
        bracket = s - r * torch.log(s.clamp_min(1e-300)) + r * log_r - r
        bracket = torch.where(at_x, torch.zeros_like(bracket), bracket)
        weight = torch.sigmoid(-lam.double()) / self.num_states                         # (1 - alpha)/K
        total = weight * bracket.reshape(bracket.shape[0], -1).sum(1)
        return total.to(self.x0_log_probs(prediction, xt).dtype)

    def reconstruction_nll(self, x0: Tensor, xt: Tensor, prediction: Prediction) -> Tensor:
        nll = -torch.gather(self.x0_log_probs(prediction, xt), -1, x0[..., None])[..., 0]
        return nll.reshape(nll.shape[0], -1).sum(1)

    # ----- generation ------------------------------------------------------------------------------
    def bridge_log_probs(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor) -> Tensor:
        """log q(x_s | x_t, x0) for every x_s, normalised: float64 (B, *sites, K)."""
        lam_t, lam_s = lam_t.double(), lam_s.double()
        k = self.num_states
        log_rho = expand_to_sites(F.logsigmoid(lam_t) - F.logsigmoid(lam_s), xt)[..., None].clamp_max(0.0)
        log_jump = torch.log(-torch.expm1(log_rho)) - math.log(k)                      # log (1 - rho)/K
        to_xt = F.one_hot(xt, k).bool()
        log_forward = torch.where(to_xt, torch.logaddexp(log_rho, log_jump), log_jump)  # P_{s->t}[x_s, x_t]
        log_qs = self.log_marginal_matrix(lam_s)                                       # (B, K, K)
        flat = x0.reshape(x0.shape[0], -1)
        rows = torch.gather(log_qs, 1, flat[:, :, None].expand(-1, -1, k)).reshape(x0.shape + (k,))
        return torch.log_softmax(log_forward + rows, dim=-1)

    def _bridge_weights(self, xt: Tensor, lam_t: Tensor, lam_s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(far_t, near_t, far_0, near_0), each broadcastable to (B, *sites) float64: P_{s->t}[y, x_t] is near_t
        at y = x_t and far_t elsewhere; q_s(y | x0) is near_0 at y = x0 and far_0 elsewhere."""
        k = self.num_states
        lam_t, lam_s = expand_to_sites(lam_t.double(), xt), expand_to_sites(lam_s.double(), xt)
        log_rho = (F.logsigmoid(lam_t) - F.logsigmoid(lam_s)).clamp_max(0.0)
        alpha_s = torch.sigmoid(lam_s)
        # 1 - rho and 1 - alpha_s in forms that keep their digits when rho, alpha_s -> 1 (1 - sigmoid(lam) is 0
        # in float64 for lam >= 37)
        far_t, far_0 = -torch.expm1(log_rho) / k, torch.sigmoid(-lam_s) / k
        return far_t, log_rho.exp() + far_t, far_0, alpha_s + far_0

    def bridge_step(self, xt: Tensor, prediction: Prediction, lam_t: Tensor, lam_s: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
        """The bridge step, drawing x0 only where x_s takes its value. x0 = x_t with probability p_x; then x_s is
        x_t or a uniform value other than x_t. Otherwise (x0 != x_t) q_s(y | x0) = (1 - alpha_s)/K + alpha_s 1[y = x0]
        splits the move to y != x_t into a uniform part ((K - 1) far_t far_0: any y != x_t, x0 included) and an x0
        part (far_t alpha_s), against staying (near_t far_0); x0 ~ p(. | x_t) without x_t is drawn only at the sites
        of the x0 part (few when alpha_s is small). Same law as bridge_from_x0 after sample_x0 (tested)."""
        k = self.num_states
        far_t, near_t, far_0, near_0 = self._bridge_weights(xt, lam_t, lam_s)
        log_probs = self.x0_log_probs(prediction, xt)
        u = torch.rand(xt.shape + (3,), generator=generator, dtype=torch.float64, device=xt.device)
        same = u[..., 0] >= _rest_probability(log_probs, xt)                            # probability p_x
        # x0 = x_t: stay with weight near_t near_0 against (K - 1) far_t far_0 for the others
        leave_same = u[..., 1] * (near_t * near_0 + (k - 1) * far_t * far_0) >= near_t * near_0
        w_stay, w_uniform, w_x0 = near_t * far_0, (k - 1) * far_t * far_0, far_t * (near_0 - far_0)
        v = u[..., 1] * (w_stay + w_uniform + w_x0)
        to_uniform = torch.where(same, leave_same, (v >= w_stay) & (v < w_stay + w_uniform))
        to_x0 = ~same & (v >= w_stay + w_uniform)
        out = xt.clone()
        if bool(to_uniform.any()):                              # a uniform value other than x_t: skip x_t
            r = torch.floor(u[..., 2][to_uniform] * (k - 1)).long().clamp_max(k - 2)
            out[to_uniform] = r + (r >= xt[to_uniform]).long()
        if bool(to_x0.any()):
            out[to_x0] = self._draw_other_values(log_probs, xt, to_x0, generator)
        return out

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        """x0 ~ p(x0 | x_t) per site: x_t with probability p_x, else a draw from p without x_t, made only at those
        sites (the final denoising step: few sites change). Same law as the generic K-way draw (tested)."""
        log_probs = self.x0_log_probs(prediction, xt)
        move = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device) < _rest_probability(
            log_probs, xt)                                                              # probability 1 - p_x
        out = xt.clone()
        if bool(move.any()):
            out[move] = self._draw_other_values(log_probs, xt, move, generator)
        return out

    @staticmethod
    def _draw_other_values(log_probs: Tensor, xt: Tensor, where: Tensor, generator: torch.Generator | None) -> Tensor:
        """x0 ~ p(. | x_t) given x0 != x_t at the sites in ``where``: (n,) long, in float64. A site whose other
        values all have probability zero keeps x_t."""
        x = xt[where]
        others = log_probs[where].double().scatter(-1, x[:, None], -torch.inf)
        return torch.where(torch.isfinite(others).any(-1), sample_categorical(others, generator), x)

    def bridge_from_x0(self, xt: Tensor, x0: Tensor, lam_t: Tensor, lam_s: Tensor,
                       generator: torch.Generator | None = None) -> Tensor:
        """Draw x_s ~ q(x_s | x_t, x0) in O(1) per site. The bridge is P_{s->t}[x_s, x_t] q_s(x_s | x0) with
        P_{s->t}[y, x_t] = rho 1[y = x_t] + (1 - rho)/K and q_s(y | x0) = alpha_s 1[y = x0] + (1 - alpha_s)/K, so
        it puts one weight on x_t, one on x0 and a common weight on each other value: pick one of the three
        groups, then a uniform value of the last group (skipping x_t and x0). Same law as bridge_log_probs."""
        k = self.num_states
        far_t, near_t, far_0, near_0 = self._bridge_weights(xt, lam_t, lam_s)
        same = xt == x0
        w_xt = torch.where(same, near_t * near_0, near_t * far_0)
        w_x0 = torch.where(same, torch.zeros_like(w_xt), far_t * near_0)
        others = torch.where(same, k - 1.0, k - 2.0)
        w_other = far_t * far_0 * others
        u = torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
        u = u * (w_xt + w_x0 + w_other)
        r = torch.floor(torch.rand(xt.shape, generator=generator, dtype=torch.float64, device=xt.device)
                        * others).long().clamp_max((others - 1).long())
        low, high = torch.minimum(xt, x0), torch.maximum(xt, x0)
        other = r + (r >= low).long()                            # skip the excluded values in increasing order
        other = torch.where(same, other, other + (other >= high).long())
        return torch.where(u < w_xt, xt, torch.where(u < w_xt + w_x0, x0, other))

    def noise_probability(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """DDPD's latent view (Liu et al., 2024): q_t(y | x0) = alpha 1[y = x0] + (1 - alpha)/K says a site is noise
        (z = 1, a uniform value) with probability 1 - alpha, else clean. Given p = p(x0 | x_t) and x = x_t,
        P(z = 1 | x0 = a, x) = ((1 - alpha)/K) / q_t(x | a) is 1 for a != x and 1/(1 + g) for a = x, so

            pi = P(z = 1 | x_t) = (1 - p_x) + p_x / (1 + g),   p(x0 = a | x_t, z = 1) = p_a (1/(1 + g))^[a = x] / pi

        (the second is ``noisy_x0_log_probs``). Exact whenever p is. Returns pi (B, *sites) float64."""
        log_probs = self.x0_log_probs(prediction, xt)
        p_x = torch.gather(log_probs, -1, xt[..., None])[..., 0].double().exp()
        keep = torch.exp(-self._log_boost(expand_to_sites(lam, xt)))                     # 1 / (1 + g)
        return _rest_probability(log_probs, xt) + p_x * keep                             # (1 - p_x) + p_x/(1 + g)

    def noisy_x0_log_probs(self, xt: Tensor, prediction: Prediction, lam: Tensor, where: Tensor) -> Tensor:
        """log p(x0 | x_t, site is noise) at the sites in ``where`` (B, *sites) bool: (n, K) float64."""
        log_p = self.x0_log_probs(prediction, xt)[where].double()                        # (n, K)
        x = xt[where][:, None]
        lam_sites = expand_to_sites(lam, xt).expand(xt.shape)[where]
        log_keep = -self._log_boost(lam_sites)[:, None]
        log_joint = log_p.scatter_add(-1, x, log_keep)                                   # log P(z = 1, x0 = a | x_t)
        return torch.log_softmax(log_joint, dim=-1)

    def reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """x -> y at (1 - alpha)/K s_y per unit of lam, zero at y = x_t: (B, *sites, K) float64."""
        s = self.ratio_estimates(xt, prediction, lam)
        weight = expand_to_sites(torch.sigmoid(-lam.double()), xt)[..., None] / self.num_states
        rates = weight * s
        return torch.where(F.one_hot(xt, self.num_states).bool(), torch.zeros_like(rates), rates)

    def leap(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor, lam_to: Tensor,
             rule: str = "reject", generator: torch.Generator | None = None) -> Tensor:
        """The rates out of x per lam are (1 - alpha)/K A + alpha p_y for y != x, with A = P(site is noise | x_t)
        (``noise_probability``): a uniform part and a part proportional to p. Per site E = h [(1 - alpha)(K - 1)/K A
        + alpha (1 - p_x)] with h the frozen step (lam_to - lam_from); a site moves with move_probability(E, rule),
        to a uniform y != x with the uniform part's share, else to y ~ p(. | x_t) without x. Same law as
        jump_from_rates on integrated_reverse_rates, drawing from p only at the sites that move."""
        check_jump_rule(rule)
        k = self.num_states
        log_probs = self.x0_log_probs(prediction, xt)
        rest = _rest_probability(log_probs, xt)                                          # 1 - p_x
        lam_sites = expand_to_sites(lam.double(), xt)
        uniform_part = torch.sigmoid(-lam_sites) * (k - 1) / k * self.noise_probability(xt, prediction, lam)
        p_part = torch.sigmoid(lam_sites) * rest
        width = expand_to_sites((lam_to.double() - lam_from.double()).clamp_min(0.0), xt)
        total = width * (uniform_part + p_part)
        u = torch.rand(xt.shape + (2,), generator=generator, dtype=torch.float64, device=xt.device)
        move = u[..., 0] < move_probability(total, rule)
        to_uniform = u[..., 1] * (uniform_part + p_part) < uniform_part
        out = xt.clone()
        pick = move & to_uniform                            # a uniform value other than x: skip x in 0..K-2
        if bool(pick.any()):
            r = torch.randint(0, k - 1, (int(pick.sum()),), generator=generator, device=xt.device)
            out[pick] = r + (r >= xt[pick]).long()
        pick = move & ~to_uniform
        if bool(pick.any()):
            out[pick] = self._draw_other_values(log_probs, xt, pick, generator)
        return out

    def combined_leap(self, base: Tensor, terms: list[RateTerm], lam_to: Tensor, rule: str = "reject",
                      generator: torch.Generator | None = None) -> Tensor:
        """The theta methods' second stage without float64 K-way tensors: a term's expected jumps x -> y are
        a + b p_y with a = h (1 - alpha) A / K and b = h alpha (h the frozen width, A as in ``leap``), formed in
        float32; targets are drawn in float64 only where a site moves. Same law as the generic combined_leap
        (tested)."""
        check_jump_rule(rule)
        combined = None
        for c, x, prediction, lam, lam_from in terms:
            lam_sites = expand_to_sites(lam.double(), x)
            width = expand_to_sites((lam_to.double() - lam_from.double()).clamp_min(0.0), x)
            a = c * width * torch.sigmoid(-lam_sites) / self.num_states * self.noise_probability(x, prediction, lam)
            b = c * width * torch.sigmoid(lam_sites)
            term = self.x0_log_probs(prediction, x).float().exp()                  # fresh: edited in place
            term = term.mul_(b.float()[..., None]).add_(a.float()[..., None]).scatter_(-1, x[..., None], 0.0)
            combined = term if combined is None else combined.add_(term)
        combined = combined.clamp_min_(0.0).scatter_(-1, base[..., None], 0.0)
        total = combined.sum(-1).double()
        u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=base.device)
        move = u < move_probability(total, rule)
        out = base.clone()
        if bool(move.any()):
            out[move] = sample_categorical(torch.log(combined[move].double()), generator)
        return out

    def reverse_rate_bound_terms(self, xt: Tensor) -> tuple[Tensor, Tensor]:
        """(c_alpha, c_noise), each (B,) float64: the total reverse rate per lam is <= c_alpha sigmoid(lam) +
        c_noise sigmoid(-lam) for every prediction. Per site the total is (K-1)/K (1 - alpha) [(1 - p_x) +
        p_x/(1 + g)] + alpha (1 - p_x) <= (K-1)/K (1 - alpha) + alpha, so c_alpha = S and c_noise = S (K-1)/K
        for S sites (used by the "exact-thinning" sampler)."""
        sites = float(xt[0].numel())
        c_alpha = torch.full((xt.shape[0],), sites, dtype=torch.float64, device=xt.device)
        return c_alpha, c_alpha * (self.num_states - 1) / self.num_states

    def reverse_rate_bound(self, xt: Tensor) -> Tensor:
        raise ValueError("process 'uniform' has no reverse_rate_bound: its reverse rate per unit of lam tends to "
                         "(K - 1)/K per site as alpha -> 0, so no bound c(x) * sigmoid(lam) exists (use the "
                         "'exact-thinning' sampler, or 'bridge')")
