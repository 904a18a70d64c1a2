"""A causal transformer language model: the autoregressive likelihood baseline for sequences.

References: Radford, Narasimhan, Salimans, Sutskever, "Improving Language Understanding by Generative
Pre-Training" (GPT), 2018, and Radford et al., "Language Models are Unsupervised Multitask Learners"
(GPT-2), 2019: decoder-only transformer with pre-LayerNorm blocks and causal self-attention. Positions
are rotary (Su et al., RoFormer, 2021) as in the diffusion backbone
(:class:`~discrete_diffusion.nn.transformer.SequenceTransformer`), so both can be built at the same
width, depth and head count for a like-for-like comparison.

The sequence is factorised left to right, ``p(x) = prod_i p(x_i | x_<i)``: the input is the sequence
shifted right by one with a BOS token (index ``num_states``) in front, attention is causal, and the
logits at position ``i`` parameterise ``p(x_i | x_<i)``. The NLL is therefore exact: the sum of the
per-position cross-entropies. Images (or any site shape) are modelled in raster order by flattening
``(B, *site_shape)`` to ``(B, L)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.transformer import PreNormBlock

__all__ = ["ARTransformer"]


class ARTransformer(nn.Module):
    """Causal transformer over ``seq_len`` tokens with values in ``0..num_states-1``.

    Args:
        num_states: ``K``, the vocabulary size (BOS is an extra input index ``K``).
        seq_len: ``L``, the number of positions (``prod(site_shape)`` for images).
        dim, depth, heads, dropout, mlp_ratio: as in
            :class:`~discrete_diffusion.nn.transformer.SequenceTransformer`.

    Shapes:
        ``forward(x)``: ``x`` ``(B, L)`` or ``(B, *site_shape)`` long -> logits ``(B, L, K)`` where
        ``logits[:, i]`` are those of ``p(x_i | x_<i)`` (raster order).
    """

    def __init__(self, num_states: int, seq_len: int, dim: int = 256, depth: int = 4, heads: int = 4,
                 dropout: float = 0.1, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if num_states < 2:
            raise ValueError(f"ARTransformer: num_states must be >= 2, got {num_states}")
        if seq_len < 1 or dim < 1 or depth < 0 or heads < 1:
            raise ValueError(f"ARTransformer: need seq_len, dim, heads >= 1 and depth >= 0; got "
                             f"{seq_len}, {dim}, {heads}, {depth}")
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"ARTransformer: dim {dim} must be divisible by heads {heads} with an even head dimension")
        self.num_states, self.seq_len = int(num_states), int(seq_len)
        self.bos = self.num_states
        self.embed = nn.Embedding(self.num_states + 1, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            PreNormBlock(dim, heads, mlp_ratio, self.seq_len, dropout, causal=True) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, self.num_states)

    def _flatten(self, x: Tensor) -> Tensor:
        if x.dtype != torch.long:
            raise ValueError(f"ARTransformer expects torch.long tokens, got {x.dtype}")
        if x.dim() < 2:
            raise ValueError(f"ARTransformer expects a batch (B, L) or (B, *site_shape), got {tuple(x.shape)}")
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.seq_len:
            raise ValueError(f"ARTransformer was built for {self.seq_len} positions, got {flat.shape[1]} "
                             f"(shape {tuple(x.shape)})")
        return flat

    def _logits_of_inputs(self, inputs: Tensor) -> Tensor:
        """Logits for an input prefix ``[BOS, x_0, ..., x_{n-2}]`` of length ``n <= L``: ``(B, n, K)``."""
        h = self.dropout(self.embed(inputs))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm_out(h))

    def forward(self, x: Tensor) -> Tensor:
        flat = self._flatten(x)
        bos = torch.full((flat.shape[0], 1), self.bos, dtype=torch.long, device=flat.device)
        return self._logits_of_inputs(torch.cat([bos, flat[:, :-1]], dim=1))

    def nll(self, x: Tensor) -> Tensor:
        """Exact ``-log p(x)`` in nats, summed over positions: ``(B, ...)`` long -> ``(B,)``."""
        flat = self._flatten(x)
        if int(flat.min()) < 0 or int(flat.max()) >= self.num_states:
            raise ValueError(f"ARTransformer: token values must be in 0..{self.num_states - 1}")
        logits = self.forward(flat)
        ce = F.cross_entropy(logits.transpose(1, 2).float(), flat, reduction="none")   # (B, L)
        return ce.sum(dim=1)

    def log_likelihood(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` in nats: ``(B,)``."""
        return -self.nll(x)

    def bits_per_dim(self, x: Tensor) -> Tensor:
        """``-log2 p(x) / L`` per sequence: ``(B,)``."""
        return self.nll(x) / (self.seq_len * math.log(2.0))

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               device: torch.device | str | None = None) -> Tensor:
        """Ancestral samples, left to right (``L`` network calls on growing prefixes, no KV cache).

        Returns ``(num, L)`` long; reshape to the site shape for images. Runs in eval mode (dropout off)
        and restores the previous mode.
        """
        if num < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        dev = torch.device(device) if device is not None else self.head.weight.device
        was_training = self.training
        self.eval()
        try:
            inputs = torch.full((num, self.seq_len + 1), self.bos, dtype=torch.long, device=dev)
            for i in range(self.seq_len):
                logits = self._logits_of_inputs(inputs[:, : i + 1])[:, -1].double() / temperature
                probs = torch.softmax(logits, dim=-1)
                inputs[:, i + 1] = torch.multinomial(probs, 1, generator=generator)[:, 0]
        finally:
            self.train(was_training)
        return inputs[:, 1:].clone()
