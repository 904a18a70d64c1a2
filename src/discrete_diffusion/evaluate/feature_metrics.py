"""Distances between two sets of feature vectors: Frechet distance, KID, precision / recall / density / coverage.

References:
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
    NeurIPS 2017 (the Frechet distance of Gaussian fits, FID).
    Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (KID: unbiased MMD^2, cubic polynomial kernel).
    Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models", NeurIPS 2019.
    Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020 (density, coverage).

Every function takes features as float tensors ``(n, d)``; the real set comes first. All arithmetic is in
float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["gaussian_stats", "frechet_distance", "frechet_distance_of", "kid", "prdc", "class_entropy_bits"]


def _as_features(x: Tensor, name: str, min_rows: int = 1) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D tensor of features (n, d), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (divisor n - 1) of ``features`` ``(n, d)``, n >= 2."""
    x = _as_features(features, "features", min_rows=2)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    vals, vecs = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Squared 2-Wasserstein (Frechet) distance between N(mu1, sigma1) and N(mu2, sigma2):

        ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1^1/2 sigma2 sigma1^1/2)^1/2).

    The trace term uses two symmetric eigendecompositions in float64 (the inner matrix is symmetric PSD, so
    no complex square root appears); tiny negative eigenvalues from round-off are clipped to 0.
    Shapes: mu ``(d,)``, sigma ``(d, d)``.
    """
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance needs means (d,) and covariances (d, d) of one d, got "
                         f"{tuple(mu1.shape)}, {tuple(sigma1.shape)}, {tuple(mu2.shape)}, {tuple(sigma2.shape)}")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = float(((mu1 - mu2) ** 2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * cross)
    return max(value, 0.0)


def frechet_distance_of(real: Tensor, fake: Tensor) -> float:
    """:func:`frechet_distance` of the Gaussian fits (:func:`gaussian_stats`) of two feature sets."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def _mmd2_unbiased(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> float:
    m, n = kxx.shape[0], kyy.shape[0]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


def kid(real: Tensor, fake: Tensor, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased estimate of MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,
    averaged over ``num_subsets`` subsets of ``m = min(subset_size, n_real, n_fake)`` rows drawn without
    replacement from each set (independently; seeded, so the value is deterministic):

        MMD_u^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2.

    It is unbiased, so two samples of one distribution give values around 0 (possibly negative).
    Shapes: ``real`` ``(n_real, d)``, ``fake`` ``(n_fake, d)``.
    """
    x, y = _as_features(real, "real features", 2), _as_features(fake, "fake features", 2)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"kid needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    d = x.shape[1]
    m = min(subset_size, x.shape[0], y.shape[0])
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(num_subsets):
        xs = x[torch.randperm(x.shape[0], generator=generator)[:m]]
        ys = y[torch.randperm(y.shape[0], generator=generator)[:m]]
        total += _mmd2_unbiased((xs @ xs.T / d + 1) ** 3, (ys @ ys.T / d + 1) ** 3, (xs @ ys.T / d + 1) ** 3)
    return total / num_subsets


#: Distance blocks hold at most this many entries (2^24 float64 values: 128 MiB).
_BLOCK_ENTRIES = 1 << 24


def _row_chunks(rows: int, cols: int) -> range:
    return range(0, rows, max(1, _BLOCK_ENTRIES // max(cols, 1)))


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row (itself excluded), in row blocks."""
    step = _row_chunks(x.shape[0], x.shape[0]).step
    # the 1st smallest distance of a row is to itself (0)
    return torch.cat([torch.cdist(x[i:i + step], x).kthvalue(k + 1, dim=1).values
                      for i in range(0, x.shape[0], step)])


def prdc(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours.

    With r_i the distance of real x_i to its k-th nearest real neighbour, r'_j that of fake y_j among fakes,
    and B(c, r) the closed ball:

        precision = 1/M sum_j 1[y_j in some B(x_i, r_i)]
        recall    = 1/N sum_i 1[x_i in some B(y_j, r'_j)]
        density   = 1/(k M) sum_j sum_i 1[y_j in B(x_i, r_i)]
        coverage  = 1/N sum_i 1[nearest fake to x_i in B(x_i, r_i)]

    Shapes: ``real`` ``(N, d)``, ``fake`` ``(M, d)``; both need more than ``k`` rows. A set against itself
    gives precision = recall = coverage = 1 exactly. Distances are computed in blocks of at most 2^24 entries.
    """
    x, y = _as_features(real, "real features", k + 1), _as_features(fake, "fake features", k + 1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    if k < 1:
        raise ValueError(f"prdc needs k >= 1, got {k}")
    real_r, fake_r = _knn_radii(x, k), _knn_radii(y, k)
    balls_holding = torch.zeros(y.shape[0], dtype=torch.float64)  # per fake: real balls that hold it
    recalled, covered = [], []
    blocks = _row_chunks(x.shape[0], y.shape[0])
    for i in blocks:
        dist = torch.cdist(x[i:i + blocks.step], y)  # (block, M)
        radii = real_r[i:i + dist.shape[0]]
        balls_holding += (dist <= radii[:, None]).double().sum(0)
        recalled.append((dist <= fake_r[None, :]).any(1))
        covered.append(dist.min(1).values <= radii)
    return {
        "precision": float((balls_holding > 0).double().mean()),
        "recall": float(torch.cat(recalled).double().mean()),
        "density": float(balls_holding.sum() / (k * y.shape[0])),
        "coverage": float(torch.cat(covered).double().mean()),
    }


def class_entropy_bits(predicted: Tensor, num_classes: int) -> float:
    """Entropy in bits of the histogram of predicted classes ``(n,)`` (log2(num_classes) when balanced)."""
    counts = torch.bincount(predicted.reshape(-1).long(), minlength=num_classes).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum() / math.log(2.0))
