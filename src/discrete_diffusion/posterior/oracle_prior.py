"""The exact prior step of split Gibbs for an enumerable table: x0 ~ p(x0 | x_t) drawn jointly over the sites.

Reference: Chu, Wu, Chen, Song, Yue, "Split Gibbs Discrete Diffusion Posterior Sampling" (SGDD), NeurIPS 2025; its
prior step is a denoising of x_t = z from the current noise level, which a reverse sampler does only approximately
(finite steps, a learned denoiser). For a table pi over {0..K-1}^D (oracle.py) the step is exact by enumeration:

    p(x0 = j | x_t) ∝ pi_j * prod_d q_t(x_t^d | j^d)

(the joint posterior, not the per-site marginals ``OracleDenoiser`` gives), so with it the split Gibbs chain at a
fixed noise level has exactly the augmented target as its stationary law (tests/test_split_gibbs.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..oracle import OracleDenoiser

#: Rows x table entries of float64 work held at once while drawing (2^22 entries: 32 MiB).
_CHUNK = 1 << 22


class OraclePriorStep:
    """Exact x0 ~ p(x0 | x_t) for the table of an ``OracleDenoiser``: call as ``(x_t (B, *sites) long with D sites
    in all, lam (B,), generator) -> x0 (B, *sites) long``, the ``prior_step`` of ``split_gibbs_sample``.
    ``calls`` and ``rows`` count its use (one enumeration per distinct x_t and level, gathered for the rows)."""

    def __init__(self, oracle: OracleDenoiser) -> None:
        self.oracle = oracle
        self.process = oracle.process
        self.configs = oracle.configs                                        # (J, D)
        self.calls = 0
        self.rows = 0

    def log_posterior(self, xt: Tensor, lam: Tensor) -> Tensor:
        """log p(x0 = configs[j] | x_t) for x_t (B, D) at lam (B,): (B, J) float64, rows normalised."""
        log_q = self.process.log_marginal_matrix(lam.double().cpu())           # (B, K, M): [b, x0, y]
        configs = self.configs
        rows = torch.arange(xt.shape[0])[:, None, None]
        per_site = log_q[rows, configs[None, :, :], xt.cpu()[:, None, :]]       # (B, J, D)
        log_post = self.oracle.log_probs[None, :] + per_site.sum(-1)
        return torch.log_softmax(log_post, dim=-1)

    def __call__(self, xt: Tensor, lam: Tensor, generator: torch.Generator | None = None) -> Tensor:
        shape = xt.shape
        xt = xt.reshape(shape[0], -1)                                         # sites of any shape, in row-major order
        if xt.shape[1] != self.configs.shape[1]:
            raise ValueError(f"oracle prior step: x_t must have {self.configs.shape[1]} sites (the table's), got "
                             f"{tuple(shape)}")
        self.calls += 1
        self.rows += int(xt.shape[0])
        device = xt.device
        u = torch.rand(xt.shape[0], generator=generator, dtype=torch.float64, device=device).cpu()
        if bool((lam == lam[0]).all()):
            # one level for the batch: enumerate each distinct x_t once, then gather
            base = self.process.num_values
            powers = base ** torch.arange(xt.shape[1] - 1, -1, -1)
            distinct, inverse = torch.unique((xt.cpu() * powers).sum(1), return_inverse=True)
            states = distinct[:, None] // powers % base                     # the distinct rows of x_t
            cdf = self.log_posterior(states, lam[:1].expand(states.shape[0])).exp().cumsum(-1)   # (U, J)
        else:
            inverse = torch.arange(xt.shape[0])
            cdf = None
        out = torch.empty(xt.shape[0], dtype=torch.long)
        step = max(1, _CHUNK // self.configs.shape[0])
        for start in range(0, xt.shape[0], step):
            sl = slice(start, start + step)
            rows_cdf = cdf[inverse[sl]] if cdf is not None else \
                self.log_posterior(xt[sl], lam[sl]).exp().cumsum(-1)
            found = torch.searchsorted(rows_cdf, (u[sl] * rows_cdf[:, -1])[:, None], right=True)[:, 0]
            out[sl] = found.clamp_max(self.configs.shape[0] - 1)
        return self.configs[out].to(device).reshape(shape)
