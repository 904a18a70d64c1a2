"""Partial refresh of a sequence transformer's per-layer features: in every layer, recompute the expensive linear
maps only at the positions whose input moved most since they were last computed, and reuse the kept features of the
rest. APPROXIMATE.

Reference: Liu, Yang, Zhang, Chen, Zou, Wei, Wang, Zhang, "dLLM-Cache: Accelerating Diffusion Large Language
Models with Adaptive Caching", 2025 (arXiv:2506.06295), section 3 (adaptive partial update: the cosine similarity
of a token's value vector with its cached one, "V-verify", picks the tokens whose attention and FFN outputs are
recomputed; the others reuse their cached outputs), and the authors' released code (maomaocun/dLLM-cache), read for
the details below (which values the attention uses, how the reference values are updated).

A **full pass** (``full_pass``) is the ``SequenceTransformer`` over all S positions (the same operations as its
``forward``, so its output is the network's bit for bit). It returns, per layer and position (``LayerFeatures``):
the rotated query and key, the value, the attention output y and the MLP output m before their gates, and the
residual stream between them, mid (``AdaLNZeroBlock.forward_parts``); a rule keeps the ones it reads
(``KEPT_FIELDS``).

A **partial pass** (``partial_pass``) with a budget of r <= S positions per layer runs on the residual stream h of
all S positions, layer by layer (c: the conditioning vector of the current noise level):

1. a = LN(h) (1 + scale1(c)) + shift1(c) and the values v = a W_v + b_v at every position;
2. the r positions whose value moved most, the lowest cos(v[d], v_ref[d]) (a bitwise-equal value counts as
   similarity 1; ties: the lower position), get new queries and keys; the others keep their keys;
3. attention, by ``attend``; keys: the new ones at the r positions, the kept ones elsewhere; values: the new ones
   of every position:
   ``"selected"`` (dLLM-Cache's rule, V-verify): only the r positions attend; the others keep their y;
   ``"all"`` (this library's variant): every position attends, with its new or kept query, and the output
   projection runs everywhere, so a position whose own input did not change still sees its context change (a
   neighbour committed since);
4. mid = h + gate1(c) y; the MLP runs at r positions (``"selected"``: those of step 2; ``"all"``: those whose mid
   moved most, lowest cos(mid[d], mid_ref[d])); the others keep their m;
5. h = mid + gate2(c) m (kept branches take the current gates, so the noise level reaches every position).

Reference values: ``"selected"`` compares step to step (v_ref = this call's values at every position, as the
released code does); ``"all"`` compares with the value (and mid) at each position's last refresh, so a slow drift
adds up until the position is picked.

The output layer runs at every position. With r = S every position is refreshed in every layer: the pass is the
network up to float rounding; callers make r = S a full pass, which is exact bit for bit. With r < S it is an
approximation, measured against the full network by the caller (samplers/partial_cache.py,
benchmarks/approx_cache.py). Why two rules: on a character model the sites the sampler needs (masked ones) keep
their own input when a neighbour is committed, so V-verify refreshes them only when spare budget happens to fall on
them, and their outputs stay stale (docs/samplers.md has the measured deviation of both).

Departures from dLLM-Cache (of both rules): one sequence and one refresh interval (dLLM-Cache keeps a prompt cache and
a response cache with separate intervals); r = ceil(rho S), at least 1 (the released code takes int(rho S)); kept
branches are stored before their gates and re-gated with the current noise level (LLaDA has no noise-level input).

Cost in multiply-accumulates of the linear maps (``relative_cost``), per row, with full = 4 dim^2 + 2 dim hidden per
position and layer and head = dim C_out per position: a full pass S (depth full + head); ``"selected"``:
depth (S dim^2 + r (full - dim^2)) + S head; ``"all"``: depth (2 S dim^2 + r (full - 2 dim^2)) + S head (values and
output projection everywhere; queries, keys and MLP at r). Not counted: the attention scores (S x S per layer for
``"all"``, r x S for ``"selected"``) and the per-row conditioning. A large output head (a big vocabulary) runs at
every position in every call and caps the saving.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .transformer import SequenceTransformer, _modulate, embed_tokens

__all__ = ["ATTEND", "KEPT_FIELDS", "LayerFeatures", "full_pass", "partial_pass", "relative_cost"]


#: The attention rules of a partial pass (module docstring).
ATTEND = ("all", "selected")
#: The features each rule reads back from the previous call (the others are not kept).
KEPT_FIELDS = {"all": ("queries", "keys", "values", "mid", "mlp_out"),
               "selected": ("keys", "values", "attn_out", "mlp_out")}


@dataclass
class LayerFeatures:
    """One layer's features of B rows over S positions (None: not kept by the rule): ``queries``, ``keys``
    (B, heads, S, head_dim), rotated; ``values`` (B, S, dim), the reference of the check; ``attn_out``, ``mid``,
    ``mlp_out`` (B, S, dim): the attention output and MLP output before their gates and the residual stream between
    them (``BlockParts``)."""

    queries: Tensor | None
    keys: Tensor
    values: Tensor
    attn_out: Tensor | None
    mid: Tensor | None
    mlp_out: Tensor


def relative_cost(backbone: SequenceTransformer, count: int, attend: str) -> float:
    """The multiply-accumulates of the linear maps in a partial pass with budget ``count``, over those of a full
    pass (module docstring; 1 for a network without blocks)."""
    depth = len(backbone.blocks)
    if depth == 0:
        return 1.0
    sites, dim = backbone.seq_len, backbone.dim
    full = 4 * dim * dim + 2 * dim * backbone.blocks[0].mlp.fc1.out_features
    head = dim * backbone.out_channels
    everywhere = dim * dim * (2 if attend == "all" else 1)
    partial = depth * (sites * everywhere + count * (full - everywhere)) + sites * head
    return partial / (sites * (depth * full + head))


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


def _least_similar(new: Tensor, reference: Tensor, count: int) -> Tensor:
    """The ``count`` positions (B, count) long whose rows of ``new`` (B, S, dim) have the lowest cosine similarity with
    those of ``reference`` (a bitwise-equal row counts as 1, so rounding does not rank unchanged rows; ties: the
    lower position)."""
    similarity = F.cosine_similarity(new, reference, dim=-1)
    similarity = torch.where((new == reference).all(-1), torch.ones_like(similarity), similarity)
    return similarity.argsort(dim=1, stable=True)[:, :count]


def partial_pass(backbone: SequenceTransformer, tokens: Tensor, noise_level: Tensor | None,
                 features: list[LayerFeatures], count: int, attend: str = "all") -> tuple[Tensor, list[LayerFeatures]]:
    """The approximate network output (B, C_out, S) on ``tokens`` (B, S) long at ``noise_level`` (B,), refreshing
    ``count`` positions per layer under the attention rule ``attend`` ("all" | "selected") and reusing ``features``
    (of these B rows; the rule's ``KEPT_FIELDS``) for the rest; returns the updated features (module docstring).
    Inputs are not modified."""
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
        keys = kept.keys.scatter(2, per_head, k)
        value_heads = values.view(batch, sites, heads, head_dim).transpose(1, 2)
        if attend == "all":
            assert kept.queries is not None and kept.mid is not None, "the 'all' rule keeps queries and mid"
            queries: Tensor | None = kept.queries.scatter(2, per_head, q)
            y = F.scaled_dot_product_attention(queries, keys, value_heads)
            attn_out = attn.proj(y.transpose(1, 2).reshape(batch, sites, dim))
            mid = h + gate1[:, None, :] * attn_out
            mlp_rows = _least_similar(mid, kept.mid, count)[:, :, None].expand(-1, -1, dim)
            reference = kept.values.scatter(1, rows, values.gather(1, rows))             # at each last refresh
            kept_attn, kept_mid = None, kept.mid.scatter(1, mlp_rows, mid.gather(1, mlp_rows))
        else:
            assert kept.attn_out is not None, "the 'selected' rule keeps the attention output"
            queries = None
            y = F.scaled_dot_product_attention(q, keys, value_heads)
            attn_out = kept.attn_out.scatter(1, rows, attn.proj(y.transpose(1, 2).reshape(batch, count, dim)))
            mid = h + gate1[:, None, :] * attn_out
            mlp_rows, reference = rows, values                                            # step to step
            kept_attn, kept_mid = attn_out, None
        m = block.mlp(_modulate(block.norm2(mid.gather(1, mlp_rows)), shift2, scale2))
        mlp_out = kept.mlp_out.scatter(1, mlp_rows, m)
        h = mid + gate2[:, None, :] * mlp_out
        updated.append(LayerFeatures(queries, keys, reference, kept_attn, kept_mid, mlp_out))
    return backbone.head(h, c).transpose(1, 2), updated
