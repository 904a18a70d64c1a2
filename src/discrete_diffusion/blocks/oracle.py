"""The exact block-diffusion denoiser of a small explicit distribution, for exactness tests (DESIGN.md section 6).

Reference: Arriola et al., "Block Diffusion" (BD3-LM), ICLR 2025 (the factorisation p(x) = prod_b p(x^b | x^{<b})).

For a table pi over all K^L sequences, the exact p(x0^d | x_t^b, x0^{<b}) of a site d in block b follows by
enumeration: the sequences j that agree with x0 on the blocks before b and with x_t^b on its unmasked sites carry
weight pi_j (masking's q(x_t | x0) is the same for every such j, so the noise level cancels: the oracle is
time-free), and p(x0^d = k | .) = sum_{j: j^d = k} pi_j / sum_j pi_j. It has the interface of
``blocks.denoiser.BlockNetworkDenoiser`` that the block bound and semi-autoregressive decoding use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nn.block_mask import check_block_size
from ..oracle import all_configurations
from ..processes.base import ForwardProcess, Prediction

__all__ = ["BlockOracle"]


class BlockOracle:
    """Exact block-diffusion denoiser of ``probs`` over all_configurations(K, L), blocks of ``block_size``."""

    def __init__(self, process: ForwardProcess, probs: Tensor, length: int, block_size: int,
                 dtype: torch.dtype = torch.float64) -> None:
        if process.name != "masking":
            raise ValueError(f"BlockOracle is for the masking process, got {process.name!r}")
        if probs.numel() != process.num_states ** length:
            raise ValueError(f"BlockOracle: probs must have K^L = {process.num_states ** length} entries")
        self.process, self.length, self.dtype = process, int(length), dtype
        self.block_size = check_block_size(block_size, length)
        self.configs = all_configurations(process.num_states, length)                 # (J, L)
        probs = probs.double().reshape(-1)
        self.probs = probs / probs.sum()                                                # (J,)

    def nll(self, x0: Tensor) -> Tensor:
        """-log pi(x0) per row: (B,) float64."""
        index = (x0 * process_weights(self.process.num_states, self.length, x0.device)).sum(1)
        return -torch.log(self.probs[index])

    def conditional(self, context: Tensor, block: Tensor) -> Tensor:
        """p(x0 | block's x_t, context) at the block's sites: context (B, P) long clean (positions 0..P-1), block
        (B, n) with MASK = K at positions P..P+n-1 -> (B, n, K) float64 probabilities."""
        mask = self.process.mask_index
        p, n = context.shape[1], block.shape[1]
        configs = self.configs.to(block.device)
        agree = (configs[None, :, :p] == context[:, None, :]).all(-1)                                    # (B, J)
        seen = block[:, None, :] != mask
        agree &= ((configs[None, :, p:p + n] == block[:, None, :]) | ~seen).all(-1)
        weights = self.probs.to(block.device)[None, :] * agree
        onehot = torch.nn.functional.one_hot(configs[:, p:p + n], self.process.num_states).double()     # (J, n, K)
        marginal = torch.einsum("bj,jnk->bnk", weights, onehot)
        return marginal / marginal.sum(-1, keepdim=True)

    def _prediction(self, probs: Tensor) -> Prediction:
        return Prediction(x0_log_probs=torch.log(probs.clamp_min(1e-300)).to(self.dtype))

    def __call__(self, xt: Tensor, lam: Tensor, labels: Tensor | None = None,
                 clean: Tensor | None = None) -> Prediction:
        """x_t (B, L), lam (ignored), clean = x0 (B, L) -> p(x0 | x_t of each block, x0 of the blocks before it)."""
        if clean is None:
            if self.length != self.block_size:
                raise ValueError("BlockOracle with several blocks needs clean=x0")
            clean = xt[:, :0]
        out = [self.conditional(clean[:, :start], xt[:, start:start + self.block_size])
               for start in range(0, self.length, self.block_size)]
        return self._prediction(torch.cat(out, dim=1))

    def encode(self, context: Tensor, labels: Tensor | None = None, past=None):
        """The oracle reads its context directly: no cache (None)."""
        return None

    def context_denoiser(self, context: Tensor, cache=None, labels: Tensor | None = None):
        """The exact denoiser (x_block (B, n), lam) -> Prediction of the block after ``context`` (B, P)."""
        oracle = self

        class _Block:
            def rows(self, index: Tensor):
                return oracle.context_denoiser(context[index])

            def __call__(self, xt: Tensor, lam: Tensor) -> Prediction:
                return oracle._prediction(oracle.conditional(context.to(xt.device), xt))

        return _Block()


def process_weights(num_states: int, length: int, device: torch.device) -> Tensor:
    """K^(L-1-d) per position d: the lexicographic index weights of ``oracle.all_configurations``."""
    return num_states ** torch.arange(length - 1, -1, -1, device=device)
