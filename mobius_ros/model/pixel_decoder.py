"""Bottleneck pixel decoder (MOBIUS's first contribution, DESIGN §4.5).

Backbone strides 8/16/32 are projected to C; N transformer layers run on the bottleneck scale
only (deformable self-attention samples all projected scales), one bi-attention block fuses
text into the bottleneck before the first layer, and an FPN path brings the result back to
stride 4 as mask features. With `encoder_strides=(8, 16, 32, 64)` the same module is GLEE's
all-scale encoder (the baseline). `MaskDINOPixelDecoder` (`maskdino.py`) computes exactly what
GLEE's MaskDINO encoder computes, so GLEE's trained weights load into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.config import PixelDecoderConfig
from mobius_ros.model.fusion import BiAttentionBlock
from mobius_ros.model.layers import (
    PROJECTED_STRIDES,
    EncoderLayer,
    conv_gn,
    separable_conv_gn,
)
from mobius_ros.model.maskdino import MASKDINO_STRIDES, MaskDINOPixelDecoder
from mobius_ros.model.position import cell_centres, sine_position_2d


class BottleneckPixelDecoder(nn.Module):
    """Multi-scale features + text -> decoder memory and mask features.

    Args:
        in_channels: backbone channels per stride (4, 8, 16, 32 required).
        dim: hidden width C.
        encoder_strides: scales whose tokens the layers update: (16,) is MOBIUS's bottleneck,
            (8, 16, 32, 64) is GLEE's all-scale encoder (stride 64 by a 3x3 stride-2 conv).
        num_layers: transformer layers N.
        self_attn: 'deformable', 'standard' or 'none'.
        num_heads, num_points: attention heads and deformable points per level.
        ffn_dim: FFN hidden width.
        fusion: early vision-language fusion before the first layer.
        fusion_dim, fusion_heads: bi-attention inner width and heads.
        multi_scale_memory: give the decoder all projected scales instead of the bottleneck.
        fpn_conv: 'full' 3x3 FPN output convolutions or 'separable' (depthwise + pointwise).
        norm: the norm after each projection and FPN convolution: 'group' or 'batch'.
    """

    def __init__(
        self,
        in_channels: dict[int, int],
        dim: int,
        *,
        encoder_strides: tuple[int, ...] = (16,),
        num_layers: int = 6,
        self_attn: str = 'deformable',
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        fusion: bool = True,
        fusion_dim: int = 2048,
        fusion_heads: int = 8,
        multi_scale_memory: bool = False,
        fpn_conv: str = 'full',
        norm: str = 'group',
    ) -> None:
        super().__init__()
        self.strides = PROJECTED_STRIDES + ((64,) if 64 in encoder_strides else ())
        if not set(encoder_strides) <= set(self.strides):
            raise ValueError(f'encoder_strides {encoder_strides} must be within {self.strides}')
        self.encoder_strides = tuple(sorted(encoder_strides))
        self.multi_scale_memory = multi_scale_memory
        self.dim = dim
        self.input_proj = nn.ModuleDict(
            {str(s): conv_gn(in_channels[s], dim, 1, norm=norm) for s in PROJECTED_STRIDES}
        )
        if 64 in self.strides:
            self.input_proj['64'] = conv_gn(in_channels[32], dim, 3, stride=2, norm=norm)
        self.level_embed = nn.Parameter(torch.randn(len(self.strides), dim) * 0.02)
        self.fusion = BiAttentionBlock(dim, fusion_dim, fusion_heads) if fusion else None
        self.layers = nn.ModuleList(
            EncoderLayer(
                dim,
                self_attn=self_attn,
                num_heads=num_heads,
                num_levels=len(self.strides),
                num_points=num_points,
                ffn_dim=ffn_dim,
            )
            for _ in range(num_layers)
        )
        # FPN back to stride 4 from the finest encoder scale.
        self.fpn_strides = tuple(s for s in (16, 8, 4) if s < self.encoder_strides[0])
        self.lateral = nn.ModuleDict(
            {str(s): conv_gn(in_channels[s], dim, 1, norm=norm) for s in self.fpn_strides}
        )
        if fpn_conv not in ('full', 'separable'):
            raise ValueError(f"fpn_conv must be 'full' or 'separable', got {fpn_conv!r}")
        output = conv_gn if fpn_conv == 'full' else separable_conv_gn
        self.output = nn.ModuleDict(
            {str(s): output(dim, dim, 3, relu=True, norm=norm) for s in self.fpn_strides}
        )
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    @property
    def memory_strides(self) -> tuple[int, ...]:
        """Strides of the memory levels handed to the decoder."""
        return self.strides if self.multi_scale_memory else self.encoder_strides

    def forward(
        self, features: dict[int, Tensor], text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, tuple[tuple[int, int], ...], Tensor, Tensor]:
        """Run the pixel decoder.

        Args:
            features: backbone maps {stride: [B, C_s, H/s, W/s]} for strides 4..32.
            text: [B, T, C] projected text tokens.
            text_mask: [B, T] bool, True on valid tokens.

        Returns:
            memory [B, N, C], memory_shapes ((H_l, W_l), ...), mask_features [B, C, H/4, W/4],
            fused text [B, T, C] (unused at inference).
        """
        maps = {s: self.input_proj[str(s)](features[s]) for s in PROJECTED_STRIDES}
        if 64 in self.strides:
            maps[64] = self.input_proj['64'](features[32])
        shapes = [(int(maps[s].shape[-2]), int(maps[s].shape[-1])) for s in self.strides]
        flat = {s: maps[s].flatten(2).transpose(1, 2) for s in self.strides}  # [B, HW, C]
        device = text.device
        pos = {
            s: sine_position_2d(*shapes[i], self.dim, device) + self.level_embed[i]
            for i, s in enumerate(self.strides)
        }
        enc_shapes = [shapes[self.strides.index(s)] for s in self.encoder_strides]
        sizes = [h * w for h, w in enc_shapes]
        tokens = torch.cat([flat[s] for s in self.encoder_strides], dim=1)
        token_pos = torch.cat([pos[s] for s in self.encoder_strides], dim=0)[None]
        reference = cell_centres(enc_shapes, device)[None].expand(tokens.shape[0], -1, -1)
        if self.fusion is not None:
            tokens, text = self.fusion(tokens, text, text_mask)
        for layer in self.layers:
            value = self._with_tokens(flat, tokens, sizes)
            tokens = layer(tokens, token_pos, reference, value, shapes)
        updated = dict(zip(self.encoder_strides, tokens.split(sizes, dim=1)))
        flat.update(updated)
        memory_strides = self.memory_strides
        memory = torch.cat([flat[s] for s in memory_strides], dim=1)
        memory_shapes = tuple(shapes[self.strides.index(s)] for s in memory_strides)
        mask_features = self._fpn(updated, enc_shapes, features)
        return memory, memory_shapes, mask_features, text

    def _with_tokens(self, flat: dict[int, Tensor], tokens: Tensor, sizes: list[int]) -> Tensor:
        """All levels flattened, with the encoder levels replaced by the current tokens."""
        current = dict(flat)
        current.update(zip(self.encoder_strides, tokens.split(sizes, dim=1)))
        return torch.cat([current[s] for s in self.strides], dim=1)

    def _fpn(
        self,
        updated: dict[int, Tensor],
        enc_shapes: list[tuple[int, int]],
        features: dict[int, Tensor],
    ) -> Tensor:
        finest = self.encoder_strides[0]
        B = features[4].shape[0]
        h, w = enc_shapes[0]
        x = updated[finest].transpose(1, 2).reshape(B, self.dim, h, w)
        for s in self.fpn_strides:
            lateral = self.lateral[str(s)](features[s])
            up = F.interpolate(x, size=lateral.shape[-2:], mode='nearest')
            x = self.output[str(s)](lateral + up)
        return self.mask_proj(x)


def build_pixel_decoder(
    config: PixelDecoderConfig,
    in_channels: dict[int, int],
    dim: int,
    *,
    multi_scale_memory: bool = False,
) -> BottleneckPixelDecoder | MaskDINOPixelDecoder:
    """The pixel decoder of a config's style ('bottleneck' or 'maskdino').

    `multi_scale_memory` applies to the bottleneck style; the MaskDINO encoder always hands
    the decoder its four levels.
    """
    if config.style == 'bottleneck':
        return BottleneckPixelDecoder(
            in_channels,
            dim,
            encoder_strides=config.encoder_strides,
            num_layers=config.num_layers,
            self_attn=config.self_attn,
            num_heads=config.num_heads,
            num_points=config.num_points,
            ffn_dim=config.ffn_dim,
            fusion=config.fusion,
            fusion_dim=config.fusion_dim,
            fusion_heads=config.fusion_heads,
            multi_scale_memory=multi_scale_memory,
            fpn_conv=config.fpn_conv,
            norm=config.norm,
        )
    if config.style == 'maskdino':
        if config.norm != 'group':
            raise ValueError(
                f"style 'maskdino' uses GroupNorm as GLEE does, got norm {config.norm!r}"
            )
        if tuple(config.encoder_strides) != MASKDINO_STRIDES or config.self_attn != 'deformable':
            raise ValueError(
                f"style 'maskdino' needs encoder_strides={MASKDINO_STRIDES} and self_attn "
                f"'deformable', got {config.encoder_strides} and {config.self_attn!r}"
            )
        return MaskDINOPixelDecoder(
            in_channels,
            dim,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            num_points=config.num_points,
            ffn_dim=config.ffn_dim,
            fusion=config.fusion,
            fusion_dim=config.fusion_dim,
            fusion_heads=config.fusion_heads,
        )
    raise ValueError(f"style must be 'bottleneck' or 'maskdino', got {config.style!r}")
