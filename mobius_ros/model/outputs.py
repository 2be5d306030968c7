"""What the model returns: per-layer predictions, proposals and the encoder's state."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class LayerOutput:
    """Predictions of one decoder layer (or of the two-stage proposals).

    Attributes:
        logits: [B, Q, K] class logits (sigmoid, no softmax, no no-object class).
        boxes: [B, Q, 4] cx, cy, w, h normalised to the input tensor's W, H.
        confidence: [B, Q] max_k sigmoid(logits), the language-guided confidence.
        masks: [B, Q, H/4, W/4] mask logits, or None (at inference only the last executed
            layer has masks).
        query_index: [B, Q'] indices of these queries into the initial Q (after pruning).
    """

    logits: Tensor
    boxes: Tensor
    confidence: Tensor
    masks: Tensor | None = None
    query_index: Tensor | None = None


@dataclass
class MobiusOutput:
    """Everything one forward pass produces.

    Attributes:
        layers: one LayerOutput per executed decoder layer; layers[-1] is the final one.
        proposals: two-stage proposals from the encoder tokens (deep supervision).
        mask_features: [B, C, H/4, W/4].
    """

    layers: list[LayerOutput]
    proposals: LayerOutput
    mask_features: Tensor

    @property
    def final(self) -> LayerOutput:
        """The last executed layer."""
        return self.layers[-1]

    @property
    def queries_kept(self) -> tuple[int, ...]:
        """Queries that survived each executed layer (batch element 0)."""
        return tuple(int(layer.confidence.shape[1]) for layer in self.layers)


@dataclass
class EncoderState:
    """Plain-tensor output of `Mobius.encode` (the input of the decoder layers).

    Attributes:
        memory: [B, N, C] tokens the decoder cross-attends to.
        memory_shapes: ((H_l, W_l), ...) of the memory's levels, N = sum H_l W_l.
        mask_features: [B, C, H/4, W/4].
        queries: [B, Q, C] initial query content (two-stage selection).
        reference_boxes: [B, Q, 4] initial boxes, cxcywh normalised.
        class_embed_proj: [B, K, C] projected class (phrase) embeddings.
        proposals: the two-stage proposals of the selected tokens.
        text_tokens: [B, T, C] projected text tokens (the referring decoder attends to them).
        text_mask: [B, T] bool, True on valid tokens.
    """

    memory: Tensor
    memory_shapes: tuple[tuple[int, int], ...]
    mask_features: Tensor
    queries: Tensor
    reference_boxes: Tensor
    class_embed_proj: Tensor
    proposals: LayerOutput
    text_tokens: Tensor
    text_mask: Tensor
