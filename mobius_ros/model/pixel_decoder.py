"""Bottleneck pixel decoder (MOBIUS's first contribution, DESIGN §4.5).

Backbone strides 8/16/32 are projected to C; N transformer layers run on the bottleneck scale
only (deformable self-attention samples all projected scales), one bi-attention block fuses
text into the bottleneck before the first layer, and an FPN path brings the result back to
stride 4 as mask features. With `encoder_strides=(8, 16, 32, 64)` the same module is GLEE's
all-scale encoder (the baseline). `MaskDINOPixelDecoder` computes exactly what GLEE's MaskDINO
encoder computes, so GLEE's trained weights load into it (`maskdino_encoder_from_glee`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.config import PixelDecoderConfig
from mobius_ros.model.deformable_attention import MSDeformAttn
from mobius_ros.model.fusion import BiAttentionBlock
from mobius_ros.model.position import cell_centres, sine_position_2d, sine_position_2d_detr

SELF_ATTENTION = ('deformable', 'standard', 'none')
PROJECTED_STRIDES = (8, 16, 32)
MASKDINO_STRIDES = (8, 16, 32, 64)


def conv_gn(
    cin: int, cout: int, kernel: int, stride: int = 1, *, relu: bool = False, bias: bool = False
) -> nn.Sequential:
    """Conv [with bias] + GroupNorm (32 groups, or fewer for narrow widths) [+ ReLU]."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if cout % g == 0)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
        nn.GroupNorm(groups, cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FeedForward(nn.Module):
    """C -> hidden -> C with ReLU, residual and post-norm."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, N, C]."""
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention over the encoder tokens (deformable / standard / none), then an FFN."""

    def __init__(
        self,
        dim: int,
        *,
        self_attn: str,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_dim: int,
    ) -> None:
        super().__init__()
        if self_attn not in SELF_ATTENTION:
            raise ValueError(f'self_attn must be one of {SELF_ATTENTION}, got {self_attn!r}')
        self.kind = self_attn
        if self_attn == 'deformable':
            self.attn: nn.Module | None = MSDeformAttn(dim, num_levels, num_heads, num_points)
        elif self_attn == 'standard':
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        else:
            self.attn = None
        self.norm = nn.LayerNorm(dim) if self.attn is not None else None
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        reference: Tensor,
        value: Tensor,
        shapes: list[tuple[int, int]],
    ) -> Tensor:
        """tokens/pos [B, Nt, C], reference [B, Nt, 2], value [B, N, C] -> [B, Nt, C]."""
        if self.kind == 'deformable':
            tokens = self.norm(tokens + self.attn(tokens + pos, reference, value, shapes))
        elif self.kind == 'standard':
            q = tokens + pos
            tokens = self.norm(tokens + self.attn(q, q, tokens, need_weights=False)[0])
        return self.ffn(tokens)


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
    ) -> None:
        super().__init__()
        self.strides = PROJECTED_STRIDES + ((64,) if 64 in encoder_strides else ())
        if not set(encoder_strides) <= set(self.strides):
            raise ValueError(f'encoder_strides {encoder_strides} must be within {self.strides}')
        self.encoder_strides = tuple(sorted(encoder_strides))
        self.multi_scale_memory = multi_scale_memory
        self.dim = dim
        self.input_proj = nn.ModuleDict(
            {str(s): conv_gn(in_channels[s], dim, 1) for s in PROJECTED_STRIDES}
        )
        if 64 in self.strides:
            self.input_proj['64'] = conv_gn(in_channels[32], dim, 3, stride=2)
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
            {str(s): conv_gn(in_channels[s], dim, 1) for s in self.fpn_strides}
        )
        self.output = nn.ModuleDict(
            {str(s): conv_gn(dim, dim, 3, relu=True) for s in self.fpn_strides}
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


class MaskDINOPixelDecoder(nn.Module):
    """GLEE's MaskDINO encoder with early vision-language fusion, computed as GLEE computes it.

    Strides 8/16/32 are projected by 1x1 conv (with bias) + GroupNorm, stride 64 by a 3x3
    stride-2 conv + GroupNorm of the stride-32 trunk map. One bi-attention block fuses the text
    into all four levels' tokens (without positions; its residuals start from the normalised
    streams and, as in GLEE, no text token is masked out), then N deformable layers update all
    levels. An FPN step (bilinear upsampling of the stride-8 level + a 1x1 lateral of stride 4,
    then a 3x3 conv) gives the mask features.

    Args:
        in_channels: backbone channels per stride (4, 8, 16, 32 required).
        dim: hidden width C (a multiple of 32: GroupNorm(32)).
        num_layers: deformable encoder layers N.
        num_heads, num_points: attention heads and sampling points per level.
        ffn_dim: FFN hidden width.
        fusion: early fusion before the first layer.
        fusion_dim, fusion_heads: bi-attention inner width and heads (2048 and 8 in GLEE).
    """

    memory_strides = MASKDINO_STRIDES[::-1]

    def __init__(
        self,
        in_channels: dict[int, int],
        dim: int = 256,
        *,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        fusion: bool = True,
        fusion_dim: int = 2048,
        fusion_heads: int = 8,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.input_proj = nn.ModuleDict(
            {str(s): conv_gn(in_channels[s], dim, 1, bias=True) for s in PROJECTED_STRIDES}
        )
        self.input_proj['64'] = conv_gn(in_channels[32], dim, 3, stride=2, bias=True)
        self.level_embed = nn.Parameter(torch.randn(len(MASKDINO_STRIDES), dim) * 0.02)
        self.fusion = (
            BiAttentionBlock(dim, fusion_dim, fusion_heads, residual_from_norm=True)
            if fusion
            else None
        )
        self.layers = nn.ModuleList(
            EncoderLayer(
                dim,
                self_attn='deformable',
                num_heads=num_heads,
                num_levels=len(MASKDINO_STRIDES),
                num_points=num_points,
                ffn_dim=ffn_dim,
            )
            for _ in range(num_layers)
        )
        self.lateral = conv_gn(in_channels[4], dim, 1)
        self.output = conv_gn(dim, dim, 3, relu=True)
        self.mask_proj = nn.Conv2d(dim, dim, 1)

    def forward(
        self, features: dict[int, Tensor], text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, tuple[tuple[int, int], ...], Tensor, Tensor]:
        """Run the encoder.

        Args:
            features: backbone maps {stride: [B, C_s, H/s, W/s]} for strides 4..32.
            text: [B, T, C] projected text tokens, exactly those GLEE fuses.
            text_mask: [B, T] bool; GLEE's fusion ignores it (its bool mask, filled with
                -9e15, stays True and adds 1 to every logit), so it is unused here.

        Returns:
            memory [B, N, C]: the encoded levels flattened in GLEE's decoder order, strides
            64, 32, 16, 8 (no level embedding); memory_shapes ((H_l, W_l), ...) in that order;
            mask_features [B, C, H/4, W/4]; fused text [B, T, C] (unused downstream).
        """
        del text_mask
        maps = [self.input_proj[str(s)](features[s]) for s in PROJECTED_STRIDES]
        maps.append(self.input_proj['64'](features[32]))
        B = maps[0].shape[0]
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        device = maps[0].device
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)
        pos = torch.cat(
            [
                sine_position_2d_detr(h, w, self.dim, device) + self.level_embed[i]
                for i, (h, w) in enumerate(shapes)
            ]
        )[None]
        reference = cell_centres(shapes, device)[None].expand(B, -1, -1)
        if self.fusion is not None:
            tokens, text = self.fusion(tokens, text, None)
        for layer in self.layers:
            tokens = layer(tokens, pos, reference, tokens, shapes)
        levels = tokens.split([h * w for h, w in shapes], dim=1)
        h, w = shapes[0]
        finest = levels[0].transpose(1, 2).reshape(B, self.dim, h, w)
        lateral = self.lateral(features[4])
        up = F.interpolate(finest, size=lateral.shape[-2:], mode='bilinear', align_corners=False)
        mask_features = self.mask_proj(self.output(lateral + up))
        memory = torch.cat(levels[::-1], dim=1)
        return memory, tuple(shapes[::-1]), mask_features, text


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
        )
    if config.style == 'maskdino':
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


_GLEE_FUSION = 'pixel_decoder.transformer.encoder.vl_layers.0.b_attn.'
_GLEE_ATTN = ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj')
_GLEE_BI_ATTN = ('v_proj', 'l_proj', 'values_v_proj', 'values_l_proj', 'out_v_proj', 'out_l_proj')


def maskdino_encoder_from_glee(
    take: Callable[[str], Tensor], config: PixelDecoderConfig
) -> dict[str, Tensor]:
    """MaskDINOPixelDecoder's state dict from GLEE_Model's 'pixel_decoder.*' tensors.

    GLEE's input_proj.0..3 are strides 8, 16, 32, 64; adapter_1 / layer_1 the stride-4 FPN step.
    """
    pd = 'pixel_decoder.'
    out: dict[str, Tensor] = {}
    for i, s in enumerate(MASKDINO_STRIDES):
        for j in ('0', '1'):
            for leaf in ('weight', 'bias'):
                out[f'input_proj.{s}.{j}.{leaf}'] = take(f'{pd}input_proj.{i}.{j}.{leaf}')
    out['level_embed'] = take(f'{pd}transformer.level_embed')
    if config.fusion:
        for ours, theirs in (('norm_v', 'layer_norm_v'), ('norm_l', 'layer_norm_l')):
            for leaf in ('weight', 'bias'):
                out[f'fusion.{ours}.{leaf}'] = take(f'{_GLEE_FUSION}{theirs}.{leaf}')
        for name in _GLEE_BI_ATTN:
            for leaf in ('weight', 'bias'):
                out[f'fusion.attn.{name}.{leaf}'] = take(f'{_GLEE_FUSION}attn.{name}.{leaf}')
        for leaf in ('gamma_v', 'gamma_l'):
            out[f'fusion.{leaf}'] = take(f'{_GLEE_FUSION}{leaf}')
    for n in range(config.num_layers):
        glee = f'{pd}transformer.encoder.layers.{n}.'
        renames = [(f'attn.{a}', f'self_attn.{a}') for a in _GLEE_ATTN] + [
            ('norm', 'norm1'),
            ('ffn.linear1', 'linear1'),
            ('ffn.linear2', 'linear2'),
            ('ffn.norm', 'norm2'),
        ]
        for ours, theirs in renames:
            for leaf in ('weight', 'bias'):
                out[f'layers.{n}.{ours}.{leaf}'] = take(f'{glee}{theirs}.{leaf}')
    for ours, theirs in (('lateral', 'adapter_1'), ('output', 'layer_1')):
        out[f'{ours}.0.weight'] = take(f'{pd}{theirs}.weight')
        for leaf in ('weight', 'bias'):
            out[f'{ours}.1.{leaf}'] = take(f'{pd}{theirs}.norm.{leaf}')
    for leaf in ('weight', 'bias'):
        out[f'mask_proj.{leaf}'] = take(f'{pd}mask_features.{leaf}')
    return out
