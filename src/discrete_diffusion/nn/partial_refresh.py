"""Partial refresh of a sequence transformer's per-layer features: in every layer, recompute only the positions
whose input moved most since they were last computed, and reuse the kept features of the rest. APPROXIMATE.

Reference: Liu, Yang, Zhang, Chen, Zou, Wei, Wang, Zhang, "dLLM-Cache: Accelerating Diffusion Large Language
Models with Adaptive Caching", 2025 (arXiv:2506.06295), section 3 (adaptive partial update: the cosine similarity
of a token's value vector with its cached one, "V-verify", picks the tokens whose attention and FFN outputs are
recomputed; the others reuse their cached outputs).

A **full pass** (``full_pass``) is the ``SequenceTransformer`` over all S positions (the same operations as its
``forward``, so its output is the network's bit for bit). It keeps, per layer l and position d
(``LayerFeatures``): the rotated key k_l[d], the value v_l[d] (the reference of the check below), and the two
residual branches before their gates, the attention output y_l[d] and the MLP output m_l[d]
(``AdaLNZeroBlock.forward_parts``).

A **partial pass** (``partial_pass``) with a budget of r <= S positions per layer runs on the residual stream h_l of
all S positions, layer by layer (c: the conditioning vector of the current noise level):

1. a = LN(h_l) (1 + scale1(c)) + shift1(c) and the values v = a W_v + b_v at every position (the check);
2. the r positions whose value moved most, the lowest cos(v[d], v_l[d]) (ties: the lower position), are
   **refreshed**: their queries and keys are computed and they attend over the keys of all S positions (their own
   new keys, the kept keys of the others) and the values of all S positions (the new ones of step 1: they are
   computed anyway); their MLP runs; their k_l, v_l, y_l, m_l are replaced;
3. every other position reuses its kept y_l and m_l, under the current gates:
   h_{l+1} = h_l + gate1(c) y + gate2(c) m (so the noise level still reaches every position through the gates,
   and a changed token still reaches later layers through the residual stream).

The output layer runs at every position. With r = S every position is refreshed in every layer: the pass is the
network up to float rounding (the attention runs over reordered rows); callers make r = S a full pass, which is
exact bit for bit. With r < S it is an approximation, measured against the full network by the caller
(samplers/partial_cache.py, benchmarks/approx_cache.py).

Departures from dLLM-Cache: one sequence and one refresh interval (dLLM-Cache keeps a prompt cache and a response
cache with separate intervals); the kept branches are stored before their gates and re-gated with the current
noise level (LLaDA has no noise-level input); values in the attention are the fresh ones of every position.

Cost per layer and row in multiply-accumulates of the linear layers (``linear_macs``): a full pass
S (4 dim^2 + 2 dim hidden); a partial pass S dim^2 (the check) + r (3 dim^2 + 2 dim hidden) (queries, keys, output
projection, MLP). Attention: r x S scores against S x S.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .transformer import SequenceTransformer, _modulate, embed_tokens

__all__ = ["LayerFeatures", "full_pass", "partial_pass", "linear_macs"]


@dataclass
class LayerFeatures:
    """One layer's kept features of B rows over S positions: ``keys`` (B, heads, S, head_dim), rotated;
    ``values`` (B, S, dim), each position's value at its last refresh; ``attn_out`` and ``mlp_out`` (B, S, dim),
    the residual branches before their gates."""

    keys: Tensor
    values: Tensor
    attn_out: Tensor
    mlp_out: Tensor


def linear_macs(backbone: SequenceTransformer) -> tuple[int, int]:
    """(full, check): multiply-accumulates of one position in one layer's linear maps, all of them (qkv, output
    projection, MLP) and the value projection alone."""
    block = backbone.blocks[0]
    dim, hidden = backbone.dim, block.mlp.fc1.out_features
    return 4 * dim * dim + 2 * dim * hidden, dim * dim


def _start(backbone: SequenceTransformer, tokens: Tensor, noise_level: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The conditioning c (B, dim), the embedded tokens h (B, S, dim) and the positions (S,)."""
    if tokens.dim() != 2 or tokens.is_floating_point() or tokens.shape[1] != backbone.seq_len:
        raise ValueError(f"partial refresh takes (B, {backbone.seq_len}) token indices, got "
                         f"{tuple(tokens.shape)} {tokens.dtype}")
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    c = backbone._conditioning(noise_level, None, tokens.shape[0], tokens.device)
    h = embed_tokens(backbone.input_proj, tokens)
    if backbone.positions is not None:
        h = backbone.positions(h, positions)
    return c, h, positions


def full_pass(backbone: SequenceTransformer, tokens: Tensor,
              noise_level: Tensor | None) -> tuple[Tensor, list[LayerFeatures]]:
    """The network on ``tokens`` (B, S) long at ``noise_level`` (B,) float: its output (B, C_out, S), bit for bit,
    and every layer's features (module docstring)."""
    c, h, positions = _start(backbone, tokens, noise_level)
    batch, sites, dim = h.shape
    features = []
    for block in backbone.blocks:
        h, k, v, y, m = block.forward_parts(h, c, None, positions, None)
        features.append(LayerFeatures(k, v.transpose(1, 2).reshape(batch, sites, dim), y, m))
    return backbone.head(h, c).transpose(1, 2), features


def partial_pass(backbone: SequenceTransformer, tokens: Tensor, noise_level: Tensor | None,
                 features: list[LayerFeatures], count: int) -> tuple[Tensor, list[LayerFeatures]]:
    """The approximate network output (B, C_out, S) on ``tokens`` (B, S) long at ``noise_level`` (B,), refreshing
    ``count`` positions per layer and reusing ``features`` (of these B rows) for the rest; returns the updated
    features (module docstring). Inputs are not modified."""
    c, h, _ = _start(backbone, tokens, noise_level)
    if c.dim() != 2:
        raise ValueError("partial refresh needs one noise level per row")
    if len(features) != len(backbone.blocks):
        raise ValueError(f"the backbone has {len(backbone.blocks)} layers, got features of {len(features)}")
    batch, sites, dim = h.shape
    count = max(1, min(int(count), sites))
    updated = []
    for block, kept in zip(backbone.blocks, features):
        attn = block.attn
        heads = attn.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = block.modulation(F.silu(c)).chunk(6, dim=-1)
        a = _modulate(block.norm1(h), shift1, scale1)                                      # (B, S, dim)
        weight, bias = attn.qkv.weight, attn.qkv.bias
        values = F.linear(a, weight[2 * dim:], bias[2 * dim:])                            # (B, S, dim)
        similarity = F.cosine_similarity(values, kept.values, dim=-1)                     # (B, S)
        chosen = similarity.argsort(dim=1, stable=True)[:, :count]                        # (B, r)
        rows = chosen[:, :, None].expand(-1, -1, dim)
        qk = F.linear(a.gather(1, rows), weight[:2 * dim], bias[:2 * dim])
        q, k = qk.view(batch, count, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)       # (B, heads, r, hd)
        q, k = attn.rotary(q, chosen), attn.rotary(k, chosen)
        keys = kept.keys.scatter(2, chosen[:, None, :, None].expand(-1, heads, -1, dim // heads), k)
        y = F.scaled_dot_product_attention(q, keys, values.view(batch, sites, heads, -1).transpose(1, 2))
        y = attn.proj(y.transpose(1, 2).reshape(batch, count, dim))
        attn_out = kept.attn_out.scatter(1, rows, y)
        h = h + gate1[:, None, :] * attn_out
        m = block.mlp(_modulate(block.norm2(h.gather(1, rows)), shift2, scale2))
        mlp_out = kept.mlp_out.scatter(1, rows, m)
        h = h + gate2[:, None, :] * mlp_out
        updated.append(LayerFeatures(keys, kept.values.scatter(1, rows, values.gather(1, rows)), attn_out, mlp_out))
    return backbone.head(h, c).transpose(1, 2), updated
