"""nn.Module wrappers, one per exported graph: plain tensors in, plain tuples out (STYLE 5, 6).

Each wrapper calls the model's own stage (`Mobius.encode`, `decoder_layer`, `mask_head`), so
the ONNX graphs and the PyTorch backend (`TorchRunner` over these same wrappers) compute the
same thing; their inputs and outputs are named in `export.io_spec`, in the same order.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobius_ros.model.mobius import Mobius
from mobius_ros.model.text_encoder import HfClipTextEncoder, MiniLMTextEncoder, masked_mean

Shapes = tuple[tuple[int, int], ...]


def memory_shapes(model: Mobius, input_size: tuple[int, int]) -> Shapes:
    """The (H, W) of each memory level for a fixed canvas (static inside exported graphs)."""
    h, w = input_size
    strides = model.pixel_decoder.memory_strides
    return tuple((-(-h // s), -(-w // s)) for s in strides)


class EncoderGraph(nn.Module):
    """image + text -> everything the decoder layers and the mask head need."""

    def __init__(self, model: Mobius) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, image: Tensor, text_tokens: Tensor, text_mask: Tensor, class_embed: Tensor
    ) -> tuple[Tensor, ...]:
        """image [1, 3, H, W], text_tokens [1, T, D], text_mask [1, T], class_embed [1, K, D]
        -> memory [1, N, C], mask_features [1, C, H/4, W/4], queries [1, Q, C],
        reference_boxes [1, Q, 4], class_embed_proj [1, K, C], text_memory [1, T, C],
        proposal_logits [1, Q, K], proposal_boxes [1, Q, 4].
        """
        state = self.model.encode(image, text_tokens, text_mask, class_embed)
        return (
            state.memory,
            state.mask_features,
            state.queries,
            state.reference_boxes,
            state.class_embed_proj,
            state.text_tokens,
            state.proposals.logits,
            state.proposals.boxes,
        )


class DecoderLayerGraph(nn.Module):
    """Decoder layer `layer` with a dynamic query axis (vocabulary or referring mode)."""

    def __init__(self, model: Mobius, layer: int, shapes: Shapes, *, referring: bool) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.shapes = shapes
        self.referring = referring

    def forward(
        self,
        queries: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        class_embed_proj: Tensor,
        text_memory: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """queries [1, Q, C], reference_boxes [1, Q, 4], memory [1, N, C], class_embed_proj
        [1, K, C] (+ text_memory [1, T, C], text_mask [1, T] when referring)
        -> next_queries [1, Q, C], next_reference_boxes [1, Q, 4], logits [1, Q, K],
        confidence [1, Q].
        """
        extra = {'text_tokens': text_memory, 'text_mask': text_mask} if self.referring else {}
        return self.model.decoder_layer(
            self.layer, queries, reference_boxes, memory, class_embed_proj, self.shapes, **extra
        )


class MaskHeadGraph(nn.Module):
    """queries [1, Q, C], mask_features [1, C, H/4, W/4] -> mask logits [1, Q, H/4, W/4]."""

    def __init__(self, model: Mobius) -> None:
        super().__init__()
        self.model = model

    def forward(self, queries: Tensor, mask_features: Tensor) -> Tensor:
        return self.model.mask_head(queries, mask_features)


class FullGraph(nn.Module):
    """The whole network without pruning, for comparison with the split graphs."""

    def __init__(self, model: Mobius, shapes: Shapes) -> None:
        super().__init__()
        self.model = model
        self.shapes = shapes

    def forward(
        self, image: Tensor, text_tokens: Tensor, text_mask: Tensor, class_embed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encoder inputs -> final logits [1, Q, K], boxes [1, Q, 4], confidence [1, Q],
        masks [1, Q, H/4, W/4].
        """
        state = self.model.encode(image, text_tokens, text_mask, class_embed)
        queries, boxes = state.queries, state.reference_boxes
        for layer in range(self.model.num_layers):
            queries, boxes, logits, confidence = self.model.decoder_layer(
                layer, queries, boxes, state.memory, state.class_embed_proj, self.shapes
            )
        return logits, boxes, confidence, self.model.mask_head(queries, state.mask_features)


class TextEncoderGraph(nn.Module):
    """token_ids [P, L] int64 (0 = padding) -> tokens [P, L, D], mask [P, L], pooled [P, D].

    Replays the text encoder's `encode` after tokenization, so a torch-free runtime can encode
    new phrases: CLIP-style towers (causal, so trailing padding changes nothing) and MiniLM
    (padding masked out of the attention).
    """

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, token_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.text_encoder, HfClipTextEncoder):
            # GLEE's tokenizer pads with the end token: a position is valid up to and including
            # the first end token.
            end = (token_ids == self.text_encoder.tokenizer.eot).long()
            mask = (end.cumsum(dim=1) - end) == 0
            tokens = self.text_encoder(token_ids, mask).float()
            return tokens, mask, masked_mean(tokens, mask)
        # Both other tokenizers pad with id 0 and no real token has id 0 after the start token.
        mask = token_ids != 0
        if isinstance(self.text_encoder, MiniLMTextEncoder):
            tokens = self.text_encoder.model(
                input_ids=token_ids,
                attention_mask=mask.long(),
                token_type_ids=torch.zeros_like(token_ids),
            ).last_hidden_state.float()
        else:
            tower = self.text_encoder.text.tower
            length = token_ids.shape[1]
            x = tower.token_embedding(token_ids) + tower.positional_embedding[:length]
            x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
            tokens = tower.ln_final(x).float()
        return tokens, mask, masked_mean(tokens, mask)
