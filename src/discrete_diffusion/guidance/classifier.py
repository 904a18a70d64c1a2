"""Classifier (predictor) guidance on the reverse CTMC rates, for every forward process.

Reference: Nisonoff, Xiong, Allenspach, Listgarten, "Unlocking Guidance for Discrete State-Space Diffusion and
Flow Models", ICLR 2025 (predictor guidance on CTMC rates; exact at gamma = 1; the first-order Taylor form).

A noise-conditioned classifier gives log p_t(c | x_t) (``NoisyClassifier``: ``(x_t (B, *sites), lam (B,)) ->
(B, C)``). For a one-site move x -> y (y = x with site d set to v) the guided reverse rate is

    R_gamma(x -> y | c) = R(x -> y) * [p_t(c | y) / p_t(c | x)]^gamma.

With the exact noisy classifier p_t(c | x) = sum_x0 p(x0 | x_t) p(c | x0) and gamma = 1 this IS the reverse rate
of the exact class-conditional model (the forward process does not depend on c, so R_c(x -> y) = R_fwd(y -> x)
q_t(y | c) / q_t(x | c) and q_t(y | c) / q_t(x | c) = [q_t(y) / q_t(x)] [p_t(c | y) / p_t(c | x)]); gamma = 0 is the
unguided model. Forms of the log ratio log p_t(c | y) - log p_t(c | x):

- ``exact``: one classifier evaluation per candidate move: the masked sites' K values (masking), every other
  value at every site (uniform, matrix), the birth x^d + 1 at every site (Blackout: D evaluations).
- ``taylor``: one gradient g = d log p_t(c | x) / d onehot(x), (B, *sites, M), gives every move at once:
  log ratio(d, v) ~ g[d, v] - g[d, x^d] (exact when log p_t(c | .) is linear in the one-hot input). Needs a
  classifier with ``onehot_log_probs`` on a process whose network input is one_hot(x_t) (masking, uniform,
  matrix).

Design: ``ClassifierGuidance.denoiser`` returns a ``GuidedPrediction`` that carries the per-move log weights
gamma * log ratio, (B, *sites, M), computed once per denoiser call at (x_t, lam); ``ClassifierGuidance.process``
is the run's process with its rate hooks (``reverse_rates``, ``integrated_reverse_rates``, ``leap``, Blackout's
``expected_missing`` / ``tau_leap``, ``reverse_rate_bound``) multiplying the rates by those weights. The final
noise-removal draw (``sample_x0``) draws x0^d from p(x0^d | x_t) times the weight of the move to v (exact at gamma
= 1 for masking, where the move MASK -> v reveals x0^d = v; first order in the remaining noise otherwise).

Samplers (``GUIDED_SAMPLERS``): tau-leaping and euler for every process; exact simulation for masking when the
classifier does not depend on the noise level (the exact one does not: a mask carries no information whatever
alpha is), with the bound c(x) * max_move weight. Samplers that draw x0 and bridge to x_s (ancestral, the
theta methods, confidence, ...) never see the rates: they raise a ValueError naming the samplers that work.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from ..denoiser import Denoiser, check_labels
from ..processes.base import ForwardProcess, Prediction, jump_from_rates
from ..processes.masking import MaskingProcess
from ..samplers.base import ProgressCallback, Sampler
from ..schedules import Schedule

#: Registry names of the samplers that consume guided rates (exact simulation: masking only, see the module doc).
GUIDED_SAMPLERS = ("tau-leaping", "euler", "exact")
GUIDANCE_FORMS = ("exact", "taylor")
#: Candidate moves evaluated by the classifier in one batch (exact form), to bound memory.
CANDIDATE_CHUNK = 4096
#: Largest log weight kept (exp(700) is finite in float64).
MAX_LOG_WEIGHT = 700.0


class NoisyClassifier(Protocol):
    """(x_t (B, *sites) long, lam (B,)) -> log p_t(c | x_t), (B, C) float. ``num_classes`` = C.
    ``noise_level_free``: True when the output does not depend on lam at fixed x_t (then exact simulation works).
    ``row_context``: True for a classifier with per-row context (posterior sampling with one observation per sample):
    it is then called as ``classifier(x_t, lam, rows=rows)`` (and ``onehot_log_probs(onehot, lam, rows=rows)``),
    ``rows`` (n,) long naming the batch row of the sampled x_t that each evaluated row (a candidate move) belongs to."""

    num_classes: int

    def __call__(self, xt: Tensor, lam: Tensor) -> Tensor: ...


def _classify(classifier: NoisyClassifier, xt: Tensor, lam: Tensor, rows: Tensor) -> Tensor:
    """log p_t(c | x_t) (n, C), passing ``rows`` (n,) to a classifier with ``row_context``."""
    if getattr(classifier, "row_context", False):
        return classifier(xt, lam, rows=rows)
    return classifier(xt, lam)


def candidate_moves(process: ForwardProcess, xt: Tensor) -> Tensor:
    """Which one-site moves x -> y can have a non-zero reverse rate: (B, *sites, M) bool, M = num_values.
    Masking: MASK -> v (v < K) at masked sites; Blackout: x^d -> x^d + 1 below N; otherwise every v != x^d."""
    values = torch.arange(process.num_values, device=xt.device)
    if isinstance(process, MaskingProcess):
        return (xt == process.mask_index)[..., None] & (values < process.num_states)
    if process.name == "blackout":
        return (values == (xt + 1)[..., None]) & (values < process.num_states)
    return values != xt[..., None]


def exact_log_ratios(classifier: NoisyClassifier, process: ForwardProcess, xt: Tensor, lam: Tensor, label: Tensor,
                     moves: Tensor) -> Tensor:
    """log p_t(c | y) - log p_t(c | x) for every candidate move (``moves`` (B, *sites, M) bool), one classifier
    evaluation per move in batches of ``CANDIDATE_CHUNK``: (B, *sites, M) float64, 0 where not a candidate."""
    batch = xt.shape[0]
    flat_x = xt.reshape(batch, -1)
    rows = torch.arange(batch, device=xt.device)
    base = _classify(classifier, xt, lam, rows).double()[rows, label]             # (B,)
    out = torch.zeros(moves.shape, dtype=torch.float64, device=xt.device)
    flat_out = out.reshape(batch, -1, moves.shape[-1])
    index = moves.reshape(batch, -1, moves.shape[-1]).nonzero()                   # (n, 3): b, site, value
    for start in range(0, index.shape[0], CANDIDATE_CHUNK):
        b, site, value = index[start:start + CANDIDATE_CHUNK].unbind(1)
        y = flat_x[b].clone()
        y[torch.arange(b.shape[0], device=xt.device), site] = value
        log_p = _classify(classifier, y.reshape((b.shape[0],) + xt.shape[1:]), lam[b], b).double()
        flat_out[b, site, value] = log_p[torch.arange(b.shape[0], device=xt.device), label[b]] - base[b]
    return out


def taylor_log_ratios(classifier: NoisyClassifier, process: ForwardProcess, xt: Tensor, lam: Tensor,
                      label: Tensor, moves: Tensor) -> Tensor:
    """The first-order form g[d, v] - g[d, x^d] with g = d log p_t(c | x) / d onehot(x) (one backward pass):
    (B, *sites, M) float64, 0 where not a candidate."""
    if not hasattr(classifier, "onehot_log_probs") or process.input_kind != "tokens":
        raise ValueError("the taylor guidance form needs a classifier with a one-hot input (onehot_log_probs) on a "
                         f"process whose input is one_hot(x_t) (masking, uniform, matrix), "
                         f"got process {process.name!r}; "
                         "use --guidance-form exact")
    with torch.enable_grad():
        onehot = torch.nn.functional.one_hot(xt, process.num_values).double().requires_grad_(True)
        if getattr(classifier, "row_context", False):
            log_p = classifier.onehot_log_probs(onehot, lam, rows=torch.arange(xt.shape[0], device=xt.device))
        else:
            log_p = classifier.onehot_log_probs(onehot, lam)
        picked = log_p[torch.arange(xt.shape[0], device=xt.device), label].sum()
        (grad,) = torch.autograd.grad(picked, onehot)
    grad = grad.double()
    ratio = grad - torch.gather(grad, -1, xt[..., None])
    return torch.where(moves, ratio, torch.zeros_like(ratio))


class GuidedPrediction(Prediction):
    """A Prediction that also carries ``log_weights`` (B, *sites, M) float64: gamma * log[p_t(c | y) / p_t(c | x)]
    per one-site move (0 at the current value and at impossible moves), and the (x_t, lam) they were computed at."""

    def __init__(self, x0_log_probs: Tensor | None, mean_missing: Tensor | None, log_weights: Tensor, xt: Tensor,
                 lam: Tensor) -> None:
        super().__init__(x0_log_probs=x0_log_probs, mean_missing=mean_missing)
        self.log_weights, self.xt, self.lam = log_weights, xt, lam


def _weights_of(prediction: Prediction) -> Tensor:
    weights = getattr(prediction, "log_weights", None)
    if weights is None:
        raise ValueError("classifier guidance lost its per-move weights: it does not combine with the cache, "
                         "temperature, top_k or top_p options")
    return weights


class ClassifierGuidance:
    """Classifier guidance towards class ``label`` (one int) with scale ``gamma`` >= 0 for ``process``.

    ``guidance.denoiser(denoiser)``: a plain denoiser whose predictions carry the guided per-move weights;
    ``guidance.process``: the process whose rate hooks apply them. Pass both to a sampler in ``GUIDED_SAMPLERS``
    (``classifier_guided_sample`` checks the sampler)."""

    def __init__(self, process: ForwardProcess, classifier: NoisyClassifier, label: int, gamma: float,
                 form: str = "exact") -> None:
        num_classes = int(getattr(classifier, "num_classes", 0))
        self.label = check_labels(label, num_classes, allow_null=False)
        if self.label.dim() != 0:
            raise ValueError("classifier guidance takes one class for the whole batch")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < float("inf"):
            raise ValueError(f"the guidance scale must be a finite number >= 0 (0 = unguided, 1 = conditional), "
                             f"got {gamma!r}")
        if form not in GUIDANCE_FORMS:
            raise ValueError(f"the guidance form must be one of {list(GUIDANCE_FORMS)}, got {form!r}")
        self.base, self.classifier, self.gamma, self.form = process, classifier, float(gamma), form
        self.process = GuidedProcess(process, self)

    def log_weights(self, xt: Tensor, lam: Tensor, moves: Tensor | None = None) -> Tensor:
        """gamma * log ratio per move, (B, *sites, M) float64 (exactly 0 everywhere at gamma = 0); ``moves``
        (B, *sites, M) bool defaults to ``candidate_moves``."""
        moves = candidate_moves(self.base, xt) if moves is None else moves
        if self.gamma == 0:
            return torch.zeros(moves.shape, dtype=torch.float64, device=xt.device)
        label = self.label.to(xt.device).expand(xt.shape[0])
        ratios = (exact_log_ratios if self.form == "exact" else taylor_log_ratios)(
            self.classifier, self.base, xt, lam, label, moves)
        weights = (self.gamma * ratios).nan_to_num(nan=-torch.inf).clamp_max(MAX_LOG_WEIGHT)
        return torch.where(moves, weights, torch.zeros_like(weights))

    def denoiser(self, denoiser: Denoiser) -> Denoiser:
        """``denoiser`` whose predictions carry ``log_weights`` at (x_t, lam)."""

        def guided(xt: Tensor, lam: Tensor) -> Prediction:
            pred = denoiser(xt, lam)
            return GuidedPrediction(pred.x0_log_probs, pred.mean_missing, self.log_weights(xt, lam), xt, lam)

        return guided


class GuidedProcess:
    """``base`` with the reverse-rate hooks multiplied by the prediction's per-move weights (see the module doc).
    Hooks that bypass the rates (bridges, remasking, combined leaps) raise a ValueError naming the samplers that
    work; everything else (marginals, the prior, names) is the base process's."""

    _BYPASS = ("bridge_step", "bridge_from_x0", "combined_leap", "sample_x0_where", "mean_bridge", "remasking_step",
               "remasking_bridge", "noise_probability", "noisy_x0_log_probs", "reverse_rate_window_bound",
               "reverse_rate_bound_terms")

    def __init__(self, base: ForwardProcess, guidance: ClassifierGuidance) -> None:
        self.base, self.guidance = base, guidance

    def __getattr__(self, name: str):
        if name in GuidedProcess._BYPASS:
            raise ValueError(f"classifier guidance acts on the reverse rates; this sampler uses {name}, which bypasses "
                             f"them: use one of {list(GUIDED_SAMPLERS)} (exact: masking only)")
        return getattr(self.base, name)

    def reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor) -> Tensor:
        """R(x -> y) * exp(log_weights): (B, *sites, M) float64."""
        return self.base.reverse_rates(xt, prediction, lam) * torch.exp(_weights_of(prediction))

    def integrated_reverse_rates(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor,
                                 lam_to: Tensor) -> Tensor:
        """The base process's integral with the weights frozen at (x_t, lam)."""
        rates = self.base.integrated_reverse_rates(xt, prediction, lam, lam_from, lam_to)
        return rates * torch.exp(_weights_of(prediction))

    def expected_missing(self, prediction: Prediction) -> Tensor:
        """Blackout: the birth rate into x^d + 1 is proportional to yhat^d, so the guided yhat is yhat * weight of
        the move x^d -> x^d + 1, (B, *sites) float64 (at x^d = N the gathered weight is the current value's, 0)."""
        weights = _weights_of(prediction)
        mean = self.base.expected_missing(prediction).double()
        target = (prediction.xt + 1).clamp_max(self.base.num_states - 1)[..., None]
        return mean * torch.exp(torch.gather(weights, -1, target)[..., 0])

    def leap(self, xt: Tensor, prediction: Prediction, lam: Tensor, lam_from: Tensor, lam_to: Tensor,
             rule: str = "reject", generator: torch.Generator | None = None) -> Tensor:
        """One leap with the guided expected jumps (Blackout: Poisson births at the guided mean)."""
        if self.base.name == "blackout":
            guided = Prediction(mean_missing=self.expected_missing(prediction))
            return self.base.leap(xt, guided, lam, lam_from, lam_to, rule, generator)
        return jump_from_rates(xt, self.integrated_reverse_rates(xt, prediction, lam, lam_from, lam_to), generator,
                               rule)

    def sample_x0(self, xt: Tensor, prediction: Prediction, generator: torch.Generator | None = None) -> Tensor:
        """The final draw: x0^d from p(x0^d = v | x_t) * weight(x^d -> v), normalised per site, the weights at the
        prediction's (x_t, lam). Blackout evaluates here every v >= x^d (its rates have only v = x^d + 1); with only
        a mean it draws from the guided mean, rounded as the base process does."""
        weights = _weights_of(prediction)
        if prediction.x0_log_probs is None:
            return self.base.sample_x0(xt, Prediction(mean_missing=self.expected_missing(prediction)), generator)
        if self.base.name == "blackout":
            values = torch.arange(self.base.num_states, device=xt.device)
            weights = self.guidance.log_weights(prediction.xt, prediction.lam, values > xt[..., None])
        k = self.base.num_states
        tilted = torch.log_softmax(prediction.x0_log_probs.double() + weights[..., :k], dim=-1)
        return self.base.sample_x0(xt, Prediction(x0_log_probs=tilted), generator)

    def reverse_rate_bound(self, xt: Tensor) -> Tensor:
        """Masking with a noise-level-free classifier only: c(x) * max over candidate moves of the weight (the
        weights do not change with lam until the next jump). Otherwise no bound holds until the next jump."""
        if (not isinstance(self.base, MaskingProcess)
                or not getattr(self.guidance.classifier, "noise_level_free", False)):
            raise ValueError("exact simulation with classifier guidance needs a rate bound that holds until the next "
                             "jump: only masking with a classifier that does not depend on the noise level has one; "
                             "use tau-leaping or euler")
        weights = self.guidance.log_weights(xt, torch.zeros(xt.shape[0], dtype=torch.float64, device=xt.device))
        top = weights.reshape(xt.shape[0], -1).max(1).values.clamp_min(0.0)
        return self.base.reverse_rate_bound(xt) * torch.exp(top)


def check_guided_sampler(sampler: Sampler, process: ForwardProcess) -> None:
    """ValueError unless ``sampler`` consumes the guided rates for ``process`` (see ``GUIDED_SAMPLERS``)."""
    name = getattr(sampler, "name", type(sampler).__name__)
    if name not in GUIDED_SAMPLERS or (name == "exact" and not isinstance(process, MaskingProcess)):
        raise ValueError(f"classifier guidance acts on the reverse rates: sampler {name!r} does not use them for "
                         f"process {process.name!r}; use tau-leaping or euler (or exact for masking)")
    if getattr(sampler, "cache", False) or getattr(sampler, "temperature", 1.0) != 1.0 or \
            getattr(sampler, "top_p", 1.0) < 1.0 or getattr(sampler, "top_k", 0):
        raise ValueError("classifier guidance does not combine with the cache, temperature, top_k or top_p options")


@torch.no_grad()
def classifier_guided_sample(sampler: Sampler, process: ForwardProcess, denoiser: Denoiser, schedule: Schedule,
                             shape: tuple[int, ...],
                             classifier: NoisyClassifier, label: int, gamma: float, form: str = "exact",
                             generator: torch.Generator | None = None, device: torch.device | str | None = None,
                             callback: ProgressCallback | None = None) -> Tensor:
    """Samples (B, *sites) from the reverse chain guided towards ``label`` (see the module doc)."""
    check_guided_sampler(sampler, process)
    device = sampler.sampling_device(denoiser, generator, device)     # the network's device, before wrapping it
    guidance = ClassifierGuidance(process, classifier, label, gamma, form)
    return sampler.sample(guidance.process, guidance.denoiser(denoiser), schedule, shape, generator, device, callback)
