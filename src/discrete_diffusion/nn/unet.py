"""A small noise-level-conditioned U-Net for images, written from scratch.

Layout (``L = len(channel_mults)`` levels, level ``i`` has width
``base_channels * channel_mults[i]`` and spatial size ``image_size / 2**i``)::

    conv_in 3x3
    encoder: per level num_res_blocks x [ResBlock (+ attention)], each output
             saved as a skip, then a stride-2 3x3 conv downsample (not after
             the last level)
    middle:  ResBlock -> self-attention  (at the lowest resolution)
    decoder: per level num_res_blocks x [concat skip -> 1x1 merge conv ->
             ResBlock (+ attention)], then nearest-neighbour x2 upsample +
             3x3 conv to the next level's width (not after the top level)
    head:    GroupNorm -> SiLU -> conv 3x3, zero-initialised (output is 0 at init)

The 1x1 merge conv (instead of feeding the concatenation straight into a
ResBlock) and the single middle ResBlock keep the default 8x8 model near
1.4M parameters so that it trains quickly on CPU.

Every residual block is conditioned on the noise level by adaLN-style FiLM:
``h = GroupNorm(h) * (1 + scale) + shift`` with ``(scale, shift)`` a linear
function of the noise-level embedding.

Image sizes: both ``H`` and ``W`` must be divisible by ``2 ** (L - 1)``; no
padding is applied, a ``ValueError`` names the allowed choices instead.  E.g.
8x8 works with ``channel_mults`` of length 1..4, 28x28 with length 1..3
(28 -> 14 -> 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, NoiseLevelEmbedding, _prepare_inputs, add_class_embedding

__all__ = ["UNet", "ResBlock", "SelfAttention2d"]


class ResBlock(nn.Module):
    """Residual block: GN -> SiLU -> conv3x3 -> FiLM(GN) -> SiLU -> dropout -> conv3x3.

    Shapes: ``x`` ``(B, in_ch, H, W)``, ``emb`` ``(B, emb_dim)`` -> ``(B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions, with a residual connection.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, HW, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class _Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv ``in_ch -> out_ch``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _UpStage(nn.Module):
    """Decoder stage: concat skip -> 1x1 merge conv -> ResBlock (-> attention)."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, block: ResBlock, attn: nn.Module | None) -> None:
        super().__init__()
        self.merge = nn.Conv2d(in_ch + skip_ch, out_ch, 1)
        self.block = block
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, h: Tensor, skip: Tensor, emb: Tensor) -> Tensor:
        h = self.merge(torch.cat([h, skip], dim=1))
        return self.attn(self.block(h, emb))


class UNet(nn.Module):
    """Noise-level-conditioned U-Net backbone for small images.

    Args:
        in_channels: ``C_in``, channels of ``features``.
        out_channels: ``C_out``, channels of the output.
        image_size: ``(H, W)``; both must be divisible by ``2 ** (len(channel_mults) - 1)``
            (no padding is done; other sizes raise ``ValueError``).
        base_channels: width of the first level; ``base_channels * m`` must be
            divisible by ``groups`` for every ``m`` in ``channel_mults``.
        channel_mults: width multiplier per resolution level (one level per entry).
        num_res_blocks: residual blocks per level, in the encoder and in the decoder.
        attention_resolutions: spatial heights (e.g. ``(8,)``) at which encoder and
            decoder levels get self-attention after each residual block.  The
            middle block always has self-attention at the lowest resolution.
        dropout: dropout probability inside residual blocks.
        groups: GroupNorm groups.
        num_heads: attention heads.
        emb_dim: width of the noise-level embedding (default ``2 * base_channels``).
        num_classes: C > 0 adds a class embedding (C + 1 rows, the last the null class) to the noise-level
            embedding; 0 (default) is unconditional.

    Always reads float features (no ``accepts_tokens``): its first layer is a 3x3 convolution, which on a
    one-hot input is a sum of nine shifted lookups rather than one embedding, and image data has few values
    (17 to 256), so the one-hot input costs little here.

    Shapes:
        ``features`` ``(B, C_in, H, W)`` float, ``noise_level`` ``(B,)`` float in
        ``[-1, 1]`` -> ``(B, C_out, H, W)``.

    Parameter counts (``in_channels=2, out_channels=17``): 8x8 defaults about
    1.37M (tested to lie in ``[1.0M, 1.5M]``); 8x8 with ``num_res_blocks=2``
    about 2.2M; 28x28 with ``channel_mults=(1, 2, 2)`` about 2.35M, and with
    ``base_channels=32`` as well about 0.59M.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: tuple[int, int],
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.1,
        groups: int = 8,
        num_heads: int = 4,
        emb_dim: int | None = None,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        image_size = (int(image_size[0]), int(image_size[1]))
        self._validate(image_size, base_channels, channel_mults, num_res_blocks, groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.channel_mults = channel_mults
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        emb_dim = 2 * base_channels if emb_dim is None else emb_dim
        widths = [base_channels * m for m in channel_mults]
        n_levels = len(channel_mults)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, groups)

        def attn(ch: int, height: int) -> nn.Module | None:
            return SelfAttention2d(ch, num_heads, groups) if height in attention_resolutions else None

        self.noise_embedding = NoiseLevelEmbedding(emb_dim)
        self.class_embedding = ClassEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Encoder: a skip is saved after every (ResBlock [+ attention]).
        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_chs: list[int] = []
        ch = base_channels
        height = image_size[0]
        for level in range(n_levels):
            for _ in range(num_res_blocks):
                self.down_blocks.append(block(ch, widths[level]))
                ch = widths[level]
                a = attn(ch, height)
                self.down_attn.append(a if a is not None else nn.Identity())
                skip_chs.append(ch)
            if level != n_levels - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                height //= 2

        self.mid_block = block(ch, ch)
        self.mid_attn = SelfAttention2d(ch, num_heads, groups)

        # Decoder: mirrors the encoder, consuming the skips in reverse order.
        self.up_stages = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(n_levels)):
            for _ in range(num_res_blocks):
                out_ch = widths[level]
                self.up_stages.append(
                    _UpStage(ch, skip_chs.pop(), out_ch, block(out_ch, out_ch), attn(out_ch, height))
                )
                ch = out_ch
            if level != 0:
                self.upsample.append(_Upsample(ch, widths[level - 1]))
                ch = widths[level - 1]
                height *= 2
        assert not skip_chs
        self.num_res_blocks = num_res_blocks

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _validate(
        image_size: tuple[int, int],
        base_channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        groups: int,
    ) -> None:
        if len(channel_mults) == 0 or any(m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        for m in (1, *channel_mults):
            if (base_channels * m) % groups != 0:
                raise ValueError(
                    f"base_channels * mult = {base_channels * m} is not divisible by groups={groups}; "
                    "choose base_channels/channel_mults/groups so that every level width is a multiple of groups"
                )
        h, w = image_size
        factor = 2 ** (len(channel_mults) - 1)
        if h < 1 or w < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if h % factor != 0 or w % factor != 0:
            max_levels = 1
            while h % 2**max_levels == 0 and w % 2**max_levels == 0:
                max_levels += 1
            raise ValueError(
                f"image_size {image_size} is incompatible with channel_mults {channel_mults}: "
                f"{len(channel_mults)} levels downsample by {factor}, so H and W must be divisible by {factor}. "
                f"For this image size use at most {max_levels} entries in channel_mults "
                f"(H and W divisible by 2**(len(channel_mults)-1)); images are not padded."
            )

    def forward(self, features: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        """``(B, C_in, H, W)``, ``(B,)`` -> ``(B, C_out, H, W)``; ``labels`` (B,) long (conditional backbones only;
        None = the null class)."""
        noise_level = _prepare_inputs(features, noise_level, self.in_channels, 2)
        if tuple(features.shape[2:]) != self.image_size:
            raise ValueError(f"expected spatial size {self.image_size}, got {tuple(features.shape[2:])}")
        emb = add_class_embedding(self.noise_embedding(noise_level), self.class_embedding, labels)
        h = self.conv_in(features.to(self.conv_in.weight.dtype))
        skips = []
        n_levels = len(self.channel_mults)
        i = 0
        for level in range(n_levels):
            for _ in range(self.num_res_blocks):
                h = self.down_attn[i](self.down_blocks[i](h, emb))
                skips.append(h)
                i += 1
            if level != n_levels - 1:
                h = self.downsample[level](h)
        h = self.mid_attn(self.mid_block(h, emb))
        i = 0
        for j, level in enumerate(reversed(range(n_levels))):
            for _ in range(self.num_res_blocks):
                h = self.up_stages[i](h, skips.pop(), emb)
                i += 1
            if level != 0:
                h = self.upsample[j](h)
        return self.conv_out(F.silu(self.norm_out(h)))
