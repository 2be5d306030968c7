"""Query decoder (DESIGN §4.6): two-stage query selection, then L layers of
self-attention, deformable cross-attention to the memory, FFN and box refinement, with heads
after every layer. Also the torch twin of the pruning keep rule.

`QueryDecoder` is MOBIUS's decoder (DecoderConfig.style 'mobius'); `MaskDINODecoder` computes
what GLEE's MaskDINO decoder computes at inference (style 'maskdino'), behind the same
`select` / `layer` interface; `build_query_decoder` picks one from a DecoderConfig.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from mobius_ros.model.config import DecoderConfig, MobiusConfig
from mobius_ros.model.deformable_attention import MSDeformAttn
from mobius_ros.model.heads import (
    MLP,
    BoxHead,
    ClassHead,
    DotClassHead,
    clamped_odds_logit,
    confidence_from_logits,
    inverse_sigmoid,
)
from mobius_ros.model.pixel_decoder import FeedForward
from mobius_ros.model.position import cell_centres, sine_box_embed
from mobius_ros.model.text_encoder import masked_mean

Shapes = tuple[tuple[int, int], ...]
REFERRING_POOLING = ('mean', 'attention')
STYLES = ('mobius', 'maskdino')


def keep_topk(confidence: Tensor, threshold: float, min_keep: int) -> Tensor:
    """Torch twin of `pruning.keep_indices`: [Q] -> [Q'] int64, sorted by confidence desc.

    A query survives if confidence >= threshold; the top `min_keep` always survive.
    """
    order = torch.sort(confidence, descending=True, stable=True).indices
    count = max(int((confidence >= threshold).sum()), min(min_keep, confidence.shape[0]))
    return order[:count]


class DecoderLayer(nn.Module):
    """Query self-attention (+ optional extra keys), deformable cross-attention, FFN."""

    def __init__(
        self, dim: int, *, num_heads: int, num_levels: int, num_points: int, ffn_dim: int
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(
        self,
        queries: Tensor,
        query_pos: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        memory_shapes: Shapes,
        *,
        extra_tokens: Tensor | None = None,
        extra_mask: Tensor | None = None,
        extra_pos: Tensor | None = None,
    ) -> Tensor:
        """Update the queries.

        Args:
            queries, query_pos: [B, Q, C].
            reference_boxes: [B, Q, 4] cxcywh in [0, 1].
            memory: [B, N, C]; memory_shapes: its levels' (H, W).
            extra_tokens: optional [B, T, C] extra keys/values of the self-attention (the
                referring expression's tokens); extra_mask [B, T] bool, True on valid tokens.
            extra_pos: optional [B, T, C] added to the extra tokens' keys only.

        Returns:
            [B, Q, C].
        """
        q = queries + query_pos
        k, v, padding = q, queries, None
        if extra_tokens is not None:
            keys = extra_tokens if extra_pos is None else extra_tokens + extra_pos
            k = torch.cat([q, keys], dim=1)
            v = torch.cat([queries, extra_tokens], dim=1)
            valid = torch.ones(queries.shape[:2], dtype=torch.bool, device=queries.device)
            padding = ~torch.cat([valid, extra_mask], dim=1)
        attn = self.self_attn(q, k, v, key_padding_mask=padding, need_weights=False)[0]
        x = self.norm1(queries + attn)
        x = self.norm2(x + self.cross_attn(x + query_pos, reference_boxes, memory, memory_shapes))
        return self.ffn(x)


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
        queries = _gather(features, index)
        sel_logits, sel_boxes = _gather(logits, index), _gather(boxes, index)
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
        queries, sel_boxes = _gather(features, index), _gather(boxes, index)
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


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, D], index [B, Q] -> [B, Q, D]."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
