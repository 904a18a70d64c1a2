"""Ready-made CTMC rate matrices ("generators") for ``MatrixProcess``.

References:
- Austin, Johnson, Ho, Tarlow, van den Berg, "Structured Denoising Diffusion Models in Discrete State-Spaces"
  (D3PM), NeurIPS 2021: uniform, absorbing, discretised-Gaussian (Appendix A.2.2) and banded kernels.
- Campbell et al., "A Continuous Time Framework for Discrete Denoising Models", NeurIPS 2022 (generators
  in continuous time; birth-death / Ehrenfest-type chains on ordinal data).
- Santos et al., "Blackout Diffusion", ICML 2023 (the pure-death generator).

Every function takes the number of data values K first and returns a float64 tensor Q of shape (M, M)
(M = K, except ``absorbing_generator``: M = K + 1 with the mask last). Q[x, y] (x != y) is the rate of
jumping from x to y in sigma-time (sigma = -log alpha); rows sum to zero. ``spectral_gap`` measures how
fast a chain mixes; ``MatrixProcess(normalize=True)`` divides Q by it so that the slowest mode decays like
alpha, as for the uniform, absorbing and pure-death generators (whose gap is already 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def _with_diagonal(rates: Tensor) -> Tensor:
    """Set the diagonal so rows sum to zero (the off-diagonal entries are the rates)."""
    rates = rates.clone()
    rates.fill_diagonal_(0.0)
    return rates - torch.diag(rates.sum(1))


def _check_size(num_states: int, minimum: int = 2) -> int:
    if int(num_states) < minimum:
        raise ValueError(f"a generator needs num_states >= {minimum}, got {num_states}")
    return int(num_states)


def uniform_generator(num_states: int) -> Tensor:
    """Q = (1/K) 1 1^T - I: jump at rate 1 to a uniformly drawn value (possibly the same). (K, K)."""
    k = _check_size(num_states)
    return torch.full((k, k), 1.0 / k, dtype=torch.float64) - torch.eye(k, dtype=torch.float64)


def absorbing_generator(num_states: int) -> Tensor:
    """Every data value jumps to the mask (index K) at rate 1; the mask is absorbing. (K + 1, K + 1)."""
    k = _check_size(num_states)
    rates = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    rates[:k, k] = 1.0
    return _with_diagonal(rates)


def gaussian_generator(num_states: int, variance: float = 1.0) -> Tensor:
    """D3PM discretised Gaussian for ordinal data: rate(i -> j) = exp(-4 (i-j)^2 / ((K-1)^2 var)) / Z with
    Z = sum_{n=-(K-1)}^{K-1} exp(-4 n^2 / ((K-1)^2 var)), so the total rate out of a state is < 1. (K, K)."""
    k = _check_size(num_states)
    if not variance > 0:
        raise ValueError(f"gaussian generator: variance must be > 0, got {variance}")
    offsets = torch.arange(-(k - 1), k, dtype=torch.float64)
    scale = (k - 1) ** 2 * float(variance)
    norm = torch.exp(-4.0 * offsets**2 / scale).sum()
    i = torch.arange(k, dtype=torch.float64)
    return _with_diagonal(torch.exp(-4.0 * (i[:, None] - i[None, :]) ** 2 / scale) / norm)


def banded_generator(num_states: int, bandwidth: int = 1) -> Tensor:
    """Nearest-neighbour kernel: rate 1 from i to each j with 1 <= |i - j| <= bandwidth (inside 0..K-1). (K, K)."""
    k = _check_size(num_states)
    if int(bandwidth) < 1:
        raise ValueError(f"banded generator: bandwidth must be >= 1, got {bandwidth}")
    i = torch.arange(k)
    distance = (i[:, None] - i[None, :]).abs()
    return _with_diagonal(((distance >= 1) & (distance <= int(bandwidth))).double())


def birth_death_generator(num_states: int, birth: float = 1.0, death: float = 1.0) -> Tensor:
    """Rate ``birth`` from i to i + 1 and ``death`` from i to i - 1, reflecting at 0 and K - 1. (K, K).
    Reversible with stationary distribution proportional to (birth / death)^i."""
    k = _check_size(num_states)
    if not (birth > 0 and death > 0):
        raise ValueError(f"birth-death generator: birth and death rates must be > 0, got {birth}, {death}")
    rates = torch.zeros(k, k, dtype=torch.float64)
    i = torch.arange(k - 1)
    rates[i, i + 1] = float(birth)
    rates[i + 1, i] = float(death)
    return _with_diagonal(rates)


def reflecting_random_walk_generator(num_states: int, rate: float = 1.0) -> Tensor:
    """Symmetric walk: rate ``rate`` to each neighbour i +- 1, reflecting at the ends (uniform stationary). (K, K)."""
    return birth_death_generator(num_states, rate, rate)


def ehrenfest_generator(num_states: int, rate: float = 0.5) -> Tensor:
    """Ehrenfest urn with N = K - 1 balls, each switching urns at ``rate``: i -> i + 1 at rate (N - i) rate,
    i -> i - 1 at rate i rate. Stationary Binomial(N, 1/2); spectral gap 2 rate (1 for the default). (K, K)."""
    k = _check_size(num_states)
    if not rate > 0:
        raise ValueError(f"ehrenfest generator: rate must be > 0, got {rate}")
    n = k - 1
    rates = torch.zeros(k, k, dtype=torch.float64)
    i = torch.arange(n)
    rates[i, i + 1] = (n - i).double() * float(rate)
    rates[i + 1, i] = (i + 1).double() * float(rate)
    return _with_diagonal(rates)


def pure_death_generator(num_states: int) -> Tensor:
    """Blackout's pure death on counts 0..N (N = K - 1): x -> x - 1 at rate x (each unit dies at rate 1),
    so P_t[x0, y] = Binomial(y; x0, alpha). Not irreducible: state 0 is absorbing. (K, K)."""
    k = _check_size(num_states)
    rates = torch.zeros(k, k, dtype=torch.float64)
    i = torch.arange(1, k)
    rates[i, i - 1] = i.double()
    return _with_diagonal(rates)


def spectral_gap(rates: Tensor) -> float:
    """The smallest decay rate -Re(lambda) over the nonzero eigenvalues of Q (how fast P_t approaches its
    limit). Raises ValueError when Q has no nonzero eigenvalue (no dynamics)."""
    q = torch.as_tensor(rates, dtype=torch.float64)
    eigenvalues = torch.linalg.eigvals(q)
    scale = float(q.abs().max())
    decay = -eigenvalues.real[eigenvalues.abs() > 1e-9 * max(scale, 1e-300)]
    if decay.numel() == 0 or scale == 0:
        raise ValueError("the rate matrix has no nonzero eigenvalue: nothing ever jumps")
    return float(decay.min())


#: name -> function(num_states, **options) returning Q.
GENERATORS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform_generator,
    "absorbing": absorbing_generator,
    "gaussian": gaussian_generator,
    "banded": banded_generator,
    "birth-death": birth_death_generator,
    "random-walk": reflecting_random_walk_generator,
    "ehrenfest": ehrenfest_generator,
    "pure-death": pure_death_generator,
}


# ----- checks and properties of a rate matrix ---------------------------------------------------------
def validate_rate_matrix(rates: Tensor) -> Tensor:
    """Check that Q is a finite square matrix with off-diagonal >= 0 and zero row sums; return it in float64
    with the diagonal reset to exactly minus the row's rates. Raises ValueError naming the offending entry."""
    q = torch.as_tensor(rates).detach().to("cpu", torch.float64)
    if q.dim() != 2 or q.shape[0] != q.shape[1] or q.shape[0] < 2:
        raise ValueError(f"rate matrix must be square with at least 2 states, got shape {tuple(q.shape)}")
    bad = (~torch.isfinite(q)).nonzero()
    if bad.numel():
        i, j = bad[0].tolist()
        raise ValueError(f"rate matrix entry [{i}, {j}] = {float(q[i, j])} is not finite")
    off = ~torch.eye(q.shape[0], dtype=torch.bool)
    bad = ((q < 0) & off).nonzero()
    if bad.numel():
        i, j = bad[0].tolist()
        raise ValueError(f"rate matrix entry [{i}, {j}] = {float(q[i, j])} is negative; off-diagonal rates "
                         "must be >= 0")
    row_sums = q.sum(1)
    scale = 1.0 + q.abs().sum(1)
    bad = (row_sums.abs() > 1e-8 * scale).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"row {i} of the rate matrix sums to {float(row_sums[i]):.6g}, not 0 (the diagonal "
                         "must be minus the sum of the row's off-diagonal rates)")
    if not bool((q * off).any()):
        raise ValueError("the rate matrix is zero: nothing ever jumps")
    rates_off = q * off
    return rates_off - torch.diag(rates_off.sum(1))


def _unreachable_pair(rates: Tensor) -> tuple[int, int] | None:
    """(i, j) with state j not reachable from state i, or None when Q is irreducible."""
    reach = (rates > 0) | torch.eye(rates.shape[0], dtype=torch.bool)
    for _ in range(max(1, math.ceil(math.log2(rates.shape[0]))) + 1):
        reach = (reach.double() @ reach.double()) > 0
    missing = (~reach).nonzero()
    return None if missing.numel() == 0 else tuple(missing[0].tolist())


def stationary_distribution(rates: Tensor) -> Tensor:
    """pi with pi Q = 0, sum pi = 1, for an irreducible Q: (M,) float64."""
    a = rates.T.clone()
    a[-1] = 1.0
    b = torch.zeros(rates.shape[0], dtype=torch.float64)
    b[-1] = 1.0
    pi = torch.linalg.solve(a, b).clamp_min(0.0)
    return pi / pi.sum()
