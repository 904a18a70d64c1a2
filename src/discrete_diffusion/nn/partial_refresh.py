"""Partial refresh of a sequence transformer's per-layer features: in every layer, recompute the expensive linear
maps only at the positions whose input moved most since they were last computed, and reuse the kept features of the
rest. APPROXIMATE.

Reference: Liu, Yang, Zhang, Chen, Zou, Wei, Wang, Zhang, "dLLM-Cache: Accelerating Diffusion Large Language
Models with Adaptive Caching", 2025 (arXiv:2506.06295), section 3 (adaptive partial update: the cosine similarity
of a token's value vector with its cached one, "V-verify", picks the tokens whose attention and FFN outputs are
recomputed; the others reuse their cached outputs).

A **full pass** (``full_pass``) is the ``SequenceTransformer`` over all S positions (the same operations as its
``forward``, so its output is the network's bit for bit). It keeps, per layer and position (``LayerFeatures``):
the rotated query and key, the value (the reference of the check below), the attention output y and the MLP
output m before their gates, and the residual stream between them, mid (``AdaLNZeroBlock.forward_parts``).

A **partial pass** (``partial_pass``) with a budget of r <= S positions per layer runs on the residual stream h of
all S positions, layer by layer (c: the conditioning vector of the current noise level):

1. a = LN(h) (1 + scale1(c)) + shift1(c) and the values v = a W_v + b_v at every position (V-verify's check);
2. the r positions whose value moved most, the lowest cos(v[d], v_kept[d]) (ties: the lower position), get new
   queries and keys; the others keep theirs;
3. attention, by ``attend``:
   ``"all"`` (default; this library's variant): every position attends, with its (new or kept) query, over the keys
   of all positions and the new values of all positions, and the output projection runs everywhere, so a position
   whose own input did not change still sees its context change (a committed neighbour);
   ``"selected"`` (dLLM-Cache's rule): only the r positions of step 2 attend; the others keep their y;
4. mid = h + gate1(c) y; the MLP runs at r positions, ``"all"``: those whose mid moved most (lowest
   cos(mid[d], mid_kept[d])), ``"selected"``: the positions of step 2; the others keep their m;
5. h = mid + gate2(c) m (kept branches take the current gates, so the noise level reaches every position).

The output layer runs at every position. With r = S every position is refreshed in every layer: the pass is the
network up to float rounding; callers make r = S a full pass, which is exact bit for bit. With r < S it is an
approximation, measured against the full network by the caller (samplers/partial_cache.py,
benchmarks/approx_cache.py). Why two rules: on a character model the sites the sampler needs (masked ones) keep
their own input when a neighbour is committed, so V-verify alone never refreshes them and their outputs stay stale
(docs/samplers.md has the measured deviation of both).

Departures from dLLM-Cache beyond ``attend="all"``: one sequence and one refresh interval (dLLM-Cache keeps a
prompt cache and a response cache with separate intervals); kept branches are stored before their gates and
re-gated with the current noise level (LLaDA has no noise-level input); the attention uses the new values of every
position (computed for the check anyway).

Cost per layer and row in multiply-accumulates of the linear layers (``relative_cost``), with full = 4 dim^2 +
2 dim hidden per position: a full pass S full; ``"selected"``: S dim^2 + r (full - dim^2); ``"all"``:
2 S dim^2 + r (full - 2 dim^2) (values and output projection everywhere; queries, keys and MLP at r). Attention
scores: S x S (``"all"``) or r x S (``"selected"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .transformer import SequenceTransformer, _modulate, embed_tokens

__all__ = ["ATTEND", "LayerFeatures", "full_pass", "partial_pass", "relative_cost"]


#: The attention rules of a partial pass (module docstring).
ATTEND = ("all", "selected")


@dataclass
class LayerFeatures:
    """One layer's kept features of B rows over S positions: ``queries``, ``keys`` (B, heads, S, head_dim), rotated;
    ``values`` (B, S, dim), each position's value when it was last selected (the check's reference); ``attn_out``,
    ``mid``, ``mlp_out`` (B, S, dim): the attention output and MLP output before their gates and the residual stream
    between them (``BlockParts``)."""

    queries: Tensor
    keys: Tensor
    values: Tensor
    attn_out: Tensor
    mid: Tensor
    mlp_out: Tensor


def relative_cost(backbone: SequenceTransformer, count: int, attend: str) -> float:
    """The multiply-accumulates of the linear layers in a partial pass with budget ``count``, over those of a full
    pass (module docstring)."""
    sites, dim = backbone.seq_len, backbone.dim
    full = 4 * dim * dim + 2 * dim * backbone.blocks[0].mlp.fc1.out_features if len(backbone.blocks) else 1
    everywhere = dim * dim * (2 if attend == "all" else 1)
    return (sites * everywhere + count * (full - everywhere)) / (sites * full)


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
        parts = block.forward_parts(h, c, None, positions, None)
        h = parts.out
        values = parts.values.transpose(1, 2).reshape(batch, sites, dim)
        features.append(LayerFeatures(parts.queries, parts.keys, values, parts.attn_out, parts.mid, parts.mlp_out))
    return backbone.head(h, c).transpose(1, 2), features


def _least_similar(new: Tensor, kept: Tensor, count: int) -> Tensor:
    """The ``count`` positions (B, count) long whose rows of ``new`` (B, S, dim) have the lowest cosine similarity with
    those of ``kept`` (ties: the lower position)."""
    return F.cosine_similarity(new, kept, dim=-1).argsort(dim=1, stable=True)[:, :count]


def partial_pass(backbone: SequenceTransformer, tokens: Tensor, noise_level: Tensor | None,
                 features: list[LayerFeatures], count: int, attend: str = "all") -> tuple[Tensor, list[LayerFeatures]]:
    """The approximate network output (B, C_out, S) on ``tokens`` (B, S) long at ``noise_level`` (B,), refreshing
    ``count`` positions per layer under the attention rule ``attend`` ("all" | "selected") and reusing ``features``
    (of these B rows) for the rest; returns the updated features (module docstring). Inputs are not modified."""
    if attend not in ATTEND:
        raise ValueError(f"unknown attend rule {attend!r}; valid: {', '.join(ATTEND)}")
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
        heads, head_dim = attn.heads, dim // attn.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = block.modulation(F.silu(c)).chunk(6, dim=-1)
        a = _modulate(block.norm1(h), shift1, scale1)                                      # (B, S, dim)
        weight, bias = attn.qkv.weight, attn.qkv.bias
        values = F.linear(a, weight[2 * dim:], bias[2 * dim:])                            # (B, S, dim)
        chosen = _least_similar(values, kept.values, count)                               # (B, r)
        rows = chosen[:, :, None].expand(-1, -1, dim)
        qk = F.linear(a.gather(1, rows), weight[:2 * dim], bias[:2 * dim])
        q, k = qk.view(batch, count, 2, heads, head_dim).permute(2, 0, 3, 1, 4)            # (B, heads, r, hd)
        q, k = attn.rotary(q, chosen), attn.rotary(k, chosen)
        per_head = chosen[:, None, :, None].expand(-1, heads, -1, head_dim)
        queries, keys = kept.queries.scatter(2, per_head, q), kept.keys.scatter(2, per_head, k)
        value_heads = values.view(batch, sites, heads, head_dim).transpose(1, 2)
        if attend == "all":
            y = F.scaled_dot_product_attention(queries, keys, value_heads)
            attn_out = attn.proj(y.transpose(1, 2).reshape(batch, sites, dim))
        else:
            y = F.scaled_dot_product_attention(q, keys, value_heads)
            attn_out = kept.attn_out.scatter(1, rows, attn.proj(y.transpose(1, 2).reshape(batch, count, dim)))
        mid = h + gate1[:, None, :] * attn_out
        mlp_rows = _least_similar(mid, kept.mid, count)[:, :, None].expand(-1, -1, dim) if attend == "all" else rows
        m = block.mlp(_modulate(block.norm2(mid.gather(1, mlp_rows)), shift2, scale2))
        mlp_out = kept.mlp_out.scatter(1, mlp_rows, m)
        h = mid + gate2[:, None, :] * mlp_out
        updated.append(LayerFeatures(queries, keys, kept.values.scatter(1, rows, values.gather(1, rows)), attn_out,
                                     kept.mid.scatter(1, mlp_rows, mid.gather(1, mlp_rows)), mlp_out))
    return backbone.head(h, c).transpose(1, 2), updated
