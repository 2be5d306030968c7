"""Query decoder (DESIGN §4.6): two-stage query selection, then L layers of
self-attention, deformable cross-attention to the memory, FFN and box refinement, with heads
after every layer. Also the torch twin of the pruning keep rule.

`QueryDecoder` is MOBIUS's decoder (DecoderConfig.style 'mobius'); `MaskDINODecoder`
(`maskdino.py`) computes what GLEE's MaskDINO decoder computes at inference (style 'maskdino'),
behind the same `select` / `layer` interface; `build_query_decoder` picks one from a
DecoderConfig.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobius_ros.model.config import DecoderConfig
from mobius_ros.model.heads import (
    MLP,
    BoxHead,
    ClassHead,
    confidence_from_logits,
)
from mobius_ros.model.layers import DecoderLayer, Shapes, gather_rows
from mobius_ros.model.maskdino import MaskDINODecoder
from mobius_ros.model.position import cell_centres, sine_box_embed
from mobius_ros.model.text_encoder import masked_mean

REFERRING_POOLING = ('mean', 'attention')
STYLES = ('mobius', 'maskdino')


def keep_topk(confidence: Tensor, threshold: float, min_keep: int) -> Tensor:
    """Torch twin of `pruning.keep_indices`: [Q] -> [Q'] int64, sorted by confidence desc.

    A query survives if confidence >= threshold; the top `min_keep` always survive.
    """
    order = torch.sort(confidence, descending=True, stable=True).indices
    count = max(int((confidence >= threshold).sum()), min(min_keep, confidence.shape[0]))
    return order[:count]


class QueryDecoder(nn.Module):
    """Two-stage query selection and the decoder layers with their heads.

    Args:
        dim: hidden width C.
        num_queries: Q (capped by the number of memory tokens).
        num_layers: L.
        memory_strides: stride of each memory level (sets the proposal anchor sizes).
        num_heads, num_points, ffn_dim: attention heads, deformable points, FFN width.
        referring_pooling: 'mean' or 'attention' (see `DecoderConfig.referring_pooling`).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_queries: int = 300,
        num_layers: int = 6,
        memory_strides: tuple[int, ...] = (16,),
        num_heads: int = 8,
        num_points: int = 4,
        ffn_dim: int = 2048,
        referring_pooling: str = 'mean',
    ) -> None:
        super().__init__()
        if referring_pooling not in REFERRING_POOLING:
            raise ValueError(
                f'referring_pooling must be one of {REFERRING_POOLING}, got {referring_pooling!r}'
            )
        self.num_queries, self.num_layers = num_queries, num_layers
        self.memory_strides = memory_strides
        self.dim = dim
        # Two-stage: memory -> proposal features (linear + LN), scored against the text.
        self.enc_output = nn.Linear(dim, dim)
        self.enc_norm = nn.LayerNorm(dim)
        self.enc_box = BoxHead(dim)
        self.layers = nn.ModuleList(
            DecoderLayer(
                dim,
                num_heads=num_heads,
                num_levels=len(memory_strides),
                num_points=num_points,
                ffn_dim=ffn_dim,
            )
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * dim, dim, dim, 2)
        self.norm = nn.LayerNorm(dim)
        self.class_head = ClassHead(dim)
        self.box_heads = nn.ModuleList(BoxHead(dim) for _ in range(num_layers))
        # A token scorer for referring expressions; its last layer starts at zero, so the
        # weights start uniform and the pooling starts as the mean.
        self.referring_pool: nn.Sequential | None = None
        if referring_pooling == 'attention':
            self.referring_pool = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
            nn.init.zeros_(self.referring_pool[-1].weight)
            nn.init.zeros_(self.referring_pool[-1].bias)

    def select(
        self, memory: Tensor, memory_shapes: Shapes, class_embed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Two-stage query selection: the top-Q memory tokens by text score.

        Args:
            memory: [B, N, C]; memory_shapes: its levels' (H, W).
            class_embed: [B, K, C] projected class embeddings.

        Returns:
            queries [B, Q, C] (content; the caller detaches it for the decoder),
            reference_boxes [B, Q, 4] (detached),
            proposal logits [B, Q, K], proposal boxes [B, Q, 4], token index [B, Q].
        """
        B = memory.shape[0]
        features = self.enc_norm(self.enc_output(memory))
        logits = self.class_head(features, class_embed)  # [B, N, K]
        centres = cell_centres(memory_shapes, memory.device)  # [N, 2]
        # Anchor size 0.05 at stride 8, doubling per octave (Deformable DETR's two-stage).
        sizes = [
            torch.full((h * w, 2), 0.05 * s / 8, device=memory.device)
            for (h, w), s in zip(memory_shapes, self.memory_strides)
        ]
        anchors = torch.cat([centres, torch.cat(sizes, dim=0)], dim=-1)[None].expand(B, -1, -1)
        boxes = self.enc_box(features, anchors)
        k = min(self.num_queries, memory.shape[1])
        index = confidence_from_logits(logits).topk(k, dim=1).indices  # [B, Q]
        queries = gather_rows(features, index)
        sel_logits, sel_boxes = gather_rows(logits, index), gather_rows(boxes, index)
        return queries, sel_boxes.detach(), sel_logits, sel_boxes, index

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
        """One decoder layer and its heads.

        Args:
            index: layer l in 0..L-1.
            queries: [B, Q, C]; reference_boxes: [B, Q, 4] cxcywh.
            memory: [B, N, C]; class_embed: [B, K, C]; memory_shapes: levels' (H, W).
            extra_tokens, extra_mask: referring expression tokens [B, T, C] and mask [B, T].

        Returns:
            queries [B, Q, C], refined boxes [B, Q, 4], logits [B, Q, K], confidence [B, Q].
        """
        # Boxes are refined iteratively, but gradients stop at each layer's input reference
        # (Deformable DETR), which also keeps every layer a stateless stage.
        reference = reference_boxes.detach()
        query_pos = self.ref_point_head(sine_box_embed(reference, self.dim))
        queries = self.layers[index](
            queries,
            query_pos,
            reference,
            memory,
            memory_shapes,
            extra_tokens=extra_tokens,
            extra_mask=extra_mask,
        )
        normed = self.norm(queries)
        boxes = self.box_heads[index](normed, reference)
        pooling = self.referring_pool is not None and extra_tokens is not None
        if pooling and extra_mask is not None:
            # class_embed is the projected mean of the tokens (the projection is affine), so
            # mean + (attention pooling - mean) is the attention pooling; written this way the
            # layer keeps the same inputs in every runtime, the exported graphs included.
            mean = masked_mean(extra_tokens, extra_mask)[:, None]
            class_embed = class_embed + self.pool_expression(extra_tokens, extra_mask) - mean
        logits = self.class_head(normed, class_embed)
        return queries, boxes, logits, confidence_from_logits(logits)

    def pool_expression(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Attention pooling of referring tokens [B, T, C] (mask [B, T] bool) -> [B, 1, C].

        In "the star right of the triangle" both nouns weigh the same in a mean, so the
        triangle scores as well as the star; a learned per-token score lets the subject lead.
        """
        assert self.referring_pool is not None
        scores = self.referring_pool(tokens).squeeze(-1)  # [B, T]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1)
        return (weights[..., None] * tokens).sum(dim=1, keepdim=True)


def build_query_decoder(
    config: DecoderConfig, dim: int, memory_strides: tuple[int, ...]
) -> QueryDecoder | MaskDINODecoder:
    """The query decoder of `config.style` for memory levels of these strides."""
    if config.style not in STYLES:
        raise ValueError(f'decoder style must be one of {STYLES}, got {config.style!r}')
    if config.style == 'maskdino':
        return MaskDINODecoder(
            dim,
            num_queries=config.num_queries,
            num_layers=config.num_layers,
            num_levels=len(memory_strides),
            num_heads=config.num_heads,
            num_points=config.num_points,
            ffn_dim=config.ffn_dim,
        )
    return QueryDecoder(
        dim,
        num_queries=config.num_queries,
        num_layers=config.num_layers,
        memory_strides=memory_strides,
        num_heads=config.num_heads,
        num_points=config.num_points,
        ffn_dim=config.ffn_dim,
        referring_pooling=config.referring_pooling,
    )
