"""MOBIUS, composed top-down like the paper's figure:

    images -> vision encoder -> bottleneck pixel decoder (+ early text fusion)
           -> two-stage query selection -> decoder layers (pruned between layers) -> heads

The three stages `encode`, `decoder_layer` and `mask_head` take and return plain tensors, so
export can wrap each as its own graph and a host loop can prune between layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mobius_ros.model.heads import MaskHead, confidence_from_logits
from mobius_ros.model.maskdino import MaskDINODecoder
from mobius_ros.model.outputs import EncoderState, LayerOutput, MobiusOutput
from mobius_ros.model.pixel_decoder import BottleneckPixelDecoder
from mobius_ros.model.pruning import PruningConfig, threshold
from mobius_ros.model.text_encoder import TextFeatures, pack_tokens
from mobius_ros.model.transformer_decoder import QueryDecoder, keep_topk

NO_PRUNING = PruningConfig(trajectory='none')


class Mobius(nn.Module):
    """Open-vocabulary instance segmentation.

    Args:
        backbone: images [B, 3, H, W] -> {stride: [B, C_s, H/s, W/s]} for strides 4..32.
        text_encoder: a `TextEncoder` (phrases -> TextFeatures of width D).
        pixel_decoder: the pixel decoder of width C (the bottleneck one, or GLEE's MaskDINO
            encoder: any module with `dim` and the bottleneck decoder's call contract).
        decoder: the query decoder of width C (`QueryDecoder`, or `MaskDINODecoder` for a
            GLEE-style model; both have the same `select` / `layer` interface).
        mask_head: query -> mask embedding head (`RenormMaskHead` with `MaskDINODecoder`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        text_encoder: nn.Module,
        pixel_decoder: BottleneckPixelDecoder | nn.Module,
        decoder: QueryDecoder | MaskDINODecoder,
        mask_head: MaskHead,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.text_encoder = text_encoder
        dim = pixel_decoder.dim
        # GLEE's text path: a learned D -> C matrix on the token features; the class embedding
        # is the projection of the pooled tokens (= mean of the projected tokens).
        self.text_proj = nn.Linear(text_encoder.width, dim)
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.mask_embed = mask_head
        self.pruning: PruningConfig = NO_PRUNING

    @property
    def num_layers(self) -> int:
        """Decoder layers L."""
        return self.decoder.num_layers

    def encode_text(self, phrases: Sequence[str]) -> TextFeatures:
        """Phrases -> TextFeatures (the vocabulary cache stores these)."""
        return self.text_encoder.encode(list(phrases))

    def forward(
        self,
        images: Tensor,
        text: Sequence[str] | TextFeatures,
        *,
        referring: bool = False,
        pruning: PruningConfig | None = None,
        max_layers: int | None = None,
    ) -> MobiusOutput:
        """Segment the images with a vocabulary or referring expressions.

        Args:
            images: [B, 3, H, W] normalised (ops.image.PIXEL_MEAN/STD), H, W % 32 == 0.
            text: phrases or their TextFeatures. Vocabulary mode: K phrases shared by all
                images. Referring mode: exactly B expressions, expression b for image b.
            referring: referring mode (K = 1 per image; the expression's tokens also join the
                decoder's query self-attention).
            pruning: overrides `self.pruning` (inference only; batch must be 1 when enabled).
            max_layers: early exit after this many decoder layers.

        Returns:
            MobiusOutput; layers[l].logits [B, Q_l, K], masks [B, Q, H/4, W/4] on every layer
            in training, on the last executed layer only in eval mode.
        """
        if len(text) == 0:
            raise ValueError('empty vocabulary: give at least one phrase')
        if max_layers is not None and max_layers < 1:
            raise ValueError(f'max_layers must be >= 1 or None, got {max_layers}')
        features = text if isinstance(text, TextFeatures) else self.encode_text(text)
        tokens, mask, class_embed = self.text_inputs(
            features, images.shape[0], referring=referring
        )
        state = self.encode(images, tokens, mask, class_embed)

        pruning = pruning if pruning is not None else self.pruning
        if self.training and pruning.enabled:
            raise ValueError('pruning is for inference; call model.eval() first')
        if pruning.enabled and images.shape[0] != 1:
            raise ValueError('pruning keeps different queries per image: use batch size 1')
        depth = min(self.num_layers, max_layers or self.num_layers)
        depth = min(depth, pruning.max_layers or depth)

        # The first layer must not push gradients into the token selection (two-stage as in
        # DINO / MaskDINO); the proposals' own losses train the encoder output instead.
        queries, boxes = state.queries.detach(), state.reference_boxes
        B, Q = queries.shape[:2]
        query_index = torch.arange(Q, device=images.device).expand(B, Q)
        extra = (
            {'text_tokens': state.text_tokens, 'text_mask': state.text_mask} if referring else {}
        )
        layers, layer_queries = [], []
        for layer in range(depth):
            queries, boxes, logits, confidence = self.decoder_layer(
                layer,
                queries,
                boxes,
                state.memory,
                state.class_embed_proj,
                state.memory_shapes,
                **extra,
            )
            if pruning.enabled:
                thr = threshold(layer, self.num_layers, pruning)
                keep = keep_topk(confidence[0], thr, pruning.min_keep)[None]  # [1, Q']
                queries, boxes, logits, confidence, query_index = (
                    _take(t, keep) for t in (queries, boxes, logits, confidence, query_index)
                )
            layers.append(LayerOutput(logits, boxes, confidence, None, query_index))
            layer_queries.append(queries)

        # Masks: every layer for deep supervision in training, only the survivors of the
        # last executed layer at inference.
        with_masks = range(depth) if self.training else [depth - 1]
        for layer in with_masks:
            layers[layer].masks = self.mask_head(layer_queries[layer], state.mask_features)
        proposals = state.proposals
        if self.training:
            proposals.masks = self.mask_head(state.queries, state.mask_features)
        return MobiusOutput(layers, proposals, state.mask_features)

    def text_inputs(
        self, features: TextFeatures, batch: int, *, referring: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """TextFeatures -> the encoder's text inputs for a batch.

        Vocabulary mode packs the valid tokens of all K phrases (shared by the batch);
        referring mode keeps expression b's tokens for image b.

        Returns:
            text_tokens [B, T, D], text_mask [B, T] bool, class_embed [B, K, D] (K = 1 when
            referring).
        """
        if referring:
            if len(features) != batch:
                raise ValueError(f'referring mode needs {batch} expressions, got {len(features)}')
            return features.tokens, features.mask, features.pooled[:, None]
        if len(features) == 0:
            raise ValueError('empty vocabulary')
        packed, _ = pack_tokens(features)
        tokens = packed[None].expand(batch, -1, -1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, mask, features.pooled[None].expand(batch, -1, -1)

    def encode(
        self, images: Tensor, text_tokens: Tensor, text_mask: Tensor, class_embed: Tensor
    ) -> EncoderState:
        """Vision encoder, pixel decoder with fusion, and two-stage query selection.

        Args:
            images: [B, 3, H, W] normalised.
            text_tokens: [B, T, D] text token features (before projection).
            text_mask: [B, T] bool, True on valid tokens.
            class_embed: [B, K, D] pooled phrase features.

        Returns:
            EncoderState (memory [B, N, C], mask_features [B, C, H/4, W/4], queries [B, Q, C],
            reference_boxes [B, Q, 4], class_embed_proj [B, K, C], proposals, ...).
        """
        features = self.backbone(images)
        text = self.text_proj(text_tokens)
        class_embed_proj = self.text_proj(class_embed)
        memory, shapes, mask_features, _ = self.pixel_decoder(features, text, text_mask)
        queries, boxes, logits, proposal_boxes, _ = self.decoder.select(
            memory, shapes, class_embed_proj
        )
        proposals = LayerOutput(
            logits,
            proposal_boxes,
            confidence_from_logits(logits),
            None,
            torch.arange(queries.shape[1], device=images.device).expand(queries.shape[:2]),
        )
        return EncoderState(
            memory=memory,
            memory_shapes=shapes,
            mask_features=mask_features,
            queries=queries,
            reference_boxes=boxes,
            class_embed_proj=class_embed_proj,
            proposals=proposals,
            text_tokens=text,
            text_mask=text_mask,
        )

    def decoder_layer(
        self,
        layer: int,
        queries: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        class_embed_proj: Tensor,
        memory_shapes: tuple[tuple[int, int], ...],
        *,
        text_tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decoder layer `layer` and its heads.

        Args:
            queries: [B, Q, C]; reference_boxes: [B, Q, 4] cxcywh normalised.
            memory: [B, N, C]; class_embed_proj: [B, K, C]; memory_shapes: levels' (H, W).
            text_tokens, text_mask: referring mode only, [B, T, C] projected expression tokens
                and [B, T] bool; they join the query self-attention.

        Returns:
            queries [B, Q, C], reference_boxes [B, Q, 4], logits [B, Q, K], confidence [B, Q].
        """
        return self.decoder.layer(
            layer,
            queries,
            reference_boxes,
            memory,
            class_embed_proj,
            memory_shapes,
            extra_tokens=text_tokens,
            extra_mask=text_mask,
        )

    def mask_head(self, queries: Tensor, mask_features: Tensor) -> Tensor:
        """queries [B, Q, C], mask_features [B, C, H/4, W/4] -> mask logits [B, Q, H/4, W/4]."""
        return self.mask_embed(queries, mask_features)


def _take(x: Tensor, index: Tensor) -> Tensor:
    """Gather along the query axis: x [B, Q, ...], index [B, Q'] -> [B, Q', ...]."""
    shape = index.shape + x.shape[2:]
    expanded = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(shape)
    return torch.gather(x, 1, expanded)
