"""GLEE's MaskDINO encoder and decoder at inference, computed as GLEE's code computes them, and
the maps of GLEE's trained tensors onto them (`mobius convert-glee`).

`MaskDINOPixelDecoder` is the pixel decoder of style 'maskdino' (GLEE's all-scale encoder with
early fusion), `MaskDINODecoder` the query decoder of style 'maskdino' (query selection from the
encoder, box refinement, GLEE's heads), behind the interfaces of `BottleneckPixelDecoder` and
`QueryDecoder`. MOBIUS's own modules are in `pixel_decoder.py` and `transformer_decoder.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.config import MobiusConfig, PixelDecoderConfig
from mobius_ros.model.fusion import BiAttentionBlock
from mobius_ros.model.heads import (
    MLP,
    DotClassHead,
    clamped_odds_logit,
    confidence_from_logits,
    inverse_sigmoid,
)
from mobius_ros.model.layers import (
    PROJECTED_STRIDES,
    DecoderLayer,
    EncoderLayer,
    Shapes,
    conv_gn,
    gather_rows,
)
from mobius_ros.model.position import cell_centres, sine_box_embed, sine_position_2d_detr

MASKDINO_STRIDES = (8, 16, 32, 64)


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


class MaskDINODecoder(nn.Module):
    """GLEE's MaskDINO query decoder at inference, with the interface of `QueryDecoder`.

    Selection scores every memory token against the class embeddings and keeps the top Q;
    each layer (post-norm self-attention, deformable cross-attention to all levels, FFN) is
    followed by the shared norm and the box head shared by the proposals and every layer; the
    dot-product class head sees the normed output normed once more (so does `RenormMaskHead`),
    as in MaskDINO. The confidence is max_k sigmoid(logit), GLEE's ranking score.

    Args:
        dim: hidden width C (256: the box sine embedding has 128 features per coordinate).
        num_queries: Q; num_layers: L; num_levels: memory levels.
        num_heads, num_points, ffn_dim: attention heads, deformable points, FFN width.
        embed_dim: class embedding width (GLEE's DIM_PROJ).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_queries: int = 300,
        num_layers: int = 9,
        num_levels: int = 4,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_queries, self.num_layers, self.dim = num_queries, num_layers, dim
        self.enc_output = nn.Linear(dim, dim)
        self.enc_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                ffn_dim=ffn_dim,
            )
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.class_head = DotClassHead(dim, embed_dim or dim)
        self.box_head = MLP(dim, dim, 4, 3)

    def select(
        self, memory: Tensor, memory_shapes: Shapes, class_embed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Two-stage selection: the top-Q memory tokens by their best class logit.

        Args:
            memory: [B, N, C] in GLEE's flattening order; memory_shapes: its levels' (H, W).
            class_embed: [B, K, E] class embeddings.

        Returns:
            queries [B, Q, C], reference_boxes [B, Q, 4] (detached), proposal logits
            [B, Q, K] (the heads on the selected tokens, GLEE's interm_outputs), proposal
            boxes [B, Q, 4], token index [B, Q].
        """
        anchors, valid = maskdino_anchors(memory_shapes, memory.device)
        features = self.enc_norm(self.enc_output(memory.masked_fill(~valid[:, None], 0.0)))
        scores = self.class_head(features, class_embed)  # [B, N, K], no final norm here
        boxes = (self.box_head(features) + inverse_sigmoid(anchors)).sigmoid()
        # Tokens whose anchor leaves the image get an infinite box logit in MaskDINO.
        boxes = boxes.masked_fill(~valid[:, None], 1.0)
        k = min(self.num_queries, memory.shape[1])
        index = scores.amax(dim=-1).topk(k, dim=1).indices  # [B, Q]
        queries, sel_boxes = gather_rows(features, index), gather_rows(boxes, index)
        logits = self.class_head(self.norm(queries), class_embed)
        return queries, sel_boxes.detach(), logits, sel_boxes, index

    def reference(self, index: int, queries: Tensor, boxes: Tensor) -> Tensor:
        """The reference boxes [B, Q, 4] layer `index` attends from.

        Layer 0 starts from the proposals. Later layers start where MaskDINO moves the
        reference: the shared box head applied to the previous layer's output *before* the
        final norm, whereas its reported boxes apply it after the norm. Both add the same
        reference logit, which is recovered from the reported boxes, so the layers keep the
        (queries, boxes) interface; exact to rounding except where a reported box coordinate
        saturates within ~1e-7 of 0 or 1.

        Args:
            queries: [B, Q, C] the previous layer's output; boxes: [B, Q, 4] its boxes.
        """
        if index == 0:
            return boxes
        bound = math.log(1.0 / 1e-5)
        base = inverse_sigmoid(boxes, 1e-7) - self.box_head(self.norm(queries))
        return (self.box_head(queries) + base.clamp(-bound, bound)).sigmoid()

    def layer(
        self,
        index: int,
        queries: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        class_embed: Tensor,
        memory_shapes: Shapes,
        *,
        extra_tokens: Tensor | None = None,
        extra_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One decoder layer and its heads (see `QueryDecoder.layer`).

        Args:
            index: layer l in 0..L-1.
            queries: [B, Q, C]; reference_boxes: [B, Q, 4] the previous layer's boxes (the
                proposals for l = 0).
            memory: [B, N, C]; class_embed: [B, K, E]; memory_shapes: levels' (H, W).
            extra_tokens, extra_mask: referring expression tokens [B, T, C] and mask [B, T];
                they join the self-attention as keys and values, with themselves as position.

        Returns:
            queries [B, Q, C] (before the final norm), boxes [B, Q, 4], logits [B, Q, K],
            confidence [B, Q].
        """
        reference = self.reference(index, queries, reference_boxes.detach()).detach()
        # MaskDINO embeds (y, x, w, h); our sine embedding takes the coordinates in order.
        query_pos = self.ref_point_head(sine_box_embed(reference[..., [1, 0, 2, 3]], self.dim))
        queries = self.layers[index](
            queries,
            query_pos,
            reference,
            memory,
            memory_shapes,
            extra_tokens=extra_tokens,
            extra_mask=extra_mask,
            extra_pos=extra_tokens,
        )
        # MaskDINO's layer output is normed once for the boxes; its heads norm it again.
        normed = self.norm(queries)
        boxes = (self.box_head(normed) + clamped_odds_logit(reference)).sigmoid()
        logits = self.class_head(self.norm(normed), class_embed)
        return queries, boxes, logits, confidence_from_logits(logits)


def maskdino_anchors(shapes: Shapes, device: torch.device) -> tuple[Tensor, Tensor]:
    """MaskDINO's proposal anchors -> boxes [N, 4] cxcywh and valid [N] bool.

    Cell centres of every level in the given order, size 0.05 * 2^level (the level's index in
    `shapes`, not its stride); an anchor is valid when all four numbers lie in (0.01, 0.99).
    """
    centres = cell_centres(shapes, device)
    sizes = [
        torch.full((h * w, 2), 0.05 * 2.0**level, device=device)
        for level, (h, w) in enumerate(shapes)
    ]
    anchors = torch.cat([centres, torch.cat(sizes, dim=0)], dim=-1)
    valid = ((anchors > 0.01) & (anchors < 0.99)).all(dim=-1)
    return anchors, valid


def maskdino_decoder_from_glee(
    take: Callable[[str], Tensor], config: MobiusConfig
) -> dict[str, Tensor]:
    """GLEE's `predictor.*` -> our 'decoder.*' (MaskDINODecoder) and 'mask_embed.*' (MaskHead).

    GLEE's norms after self-attention, cross-attention and FFN are its norm2, norm1, norm3.
    The shared box head is read under `_bbox_embed`, the shared norm under `decoder_norm`.
    """
    ours: dict[str, Tensor] = {}

    def copy(src: str, dst: str, leaves: tuple[str, ...] = ('weight', 'bias')) -> None:
        for leaf in leaves:
            ours[f'{dst}.{leaf}'] = take(f'predictor.{src}.{leaf}')

    copy('enc_output', 'decoder.enc_output')
    copy('enc_output_norm', 'decoder.enc_norm')
    ours['decoder.class_head.proj.weight'] = take('predictor.category_embed').t().contiguous()
    for i in range(3):
        copy(f'_bbox_embed.layers.{i}', f'decoder.box_head.layers.{i}')
    for i in range(2):
        copy(f'decoder.ref_point_head.layers.{i}', f'decoder.ref_point_head.layers.{i}')
    copy('decoder_norm', 'decoder.norm')
    copy('decoder_norm', 'mask_embed.norm')
    for i in range(3):
        copy(f'mask_embed.layers.{i}', f'mask_embed.embed.layers.{i}')
    for layer in range(config.decoder.num_layers):
        src, dst = f'decoder.layers.{layer}', f'decoder.layers.{layer}'
        copy(f'{src}.self_attn', f'{dst}.self_attn', ('in_proj_weight', 'in_proj_bias'))
        copy(f'{src}.self_attn.out_proj', f'{dst}.self_attn.out_proj')
        copy(f'{src}.norm2', f'{dst}.norm1')
        for part in ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj'):
            copy(f'{src}.cross_attn.{part}', f'{dst}.cross_attn.{part}')
        copy(f'{src}.norm1', f'{dst}.norm2')
        copy(f'{src}.linear1', f'{dst}.ffn.linear1')
        copy(f'{src}.linear2', f'{dst}.ffn.linear2')
        copy(f'{src}.norm3', f'{dst}.ffn.norm')
    return ours
