"""The paper's component table of a `Mobius`: stage-wise (meta) and real-forward counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mobius_ros.model.flops.counter import UNATTRIBUTED, MacReport, count_macs, giga

# Rows of the paper's component tables (Tab. 10 / Tab. 12), in print order.
VISION_ENCODER = 'vision encoder'
PIXEL_DECODER = 'pixel decoder'
FUSION = 'fusion'
DECODER = 'transformer decoder'
TEXT_PROJECTION = 'text projection'
COMPONENTS = (VISION_ENCODER, PIXEL_DECODER, FUSION, DECODER)


@dataclass(frozen=True)
class ModelMacs:
    """Per-frame MACs of a model by component (text encoder excluded), dead work, queries kept."""

    components: dict[str, int]
    dead: dict[str, int]
    queries_per_layer: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def giga(self) -> dict[str, float]:
        """Components and total in G (10^9 MACs)."""
        return {**{k: giga(v) for k, v in self.components.items()}, 'total': giga(self.total)}


def model_components(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The paper's component split of a `Mobius`.

    The whole model is registered as the decoder, so two-stage selection, heads and the pruning
    loop (code outside the other components) count there, as Tab. 10 does.
    """
    pixel_decoder = model.pixel_decoder
    fusion = getattr(pixel_decoder, 'fusion', None)
    return {
        DECODER: [model],
        VISION_ENCODER: [model.backbone],
        PIXEL_DECODER: [pixel_decoder],
        FUSION: [fusion] if fusion is not None else [],
        TEXT_PROJECTION: [model.text_proj],
        'text encoder': [model.text_encoder],
    }


def _split(report: MacReport, queries: Sequence[int]) -> ModelMacs:
    components = {name: report.get(name) for name in COMPONENTS}
    components[DECODER] += report.get(UNATTRIBUTED)
    for name, macs in report.by_component.items():
        if name not in components and name != UNATTRIBUTED:
            components[name] = macs
    return ModelMacs(components, dict(report.dead_by_component), tuple(queries))


def count_model_stages(
    model: nn.Module,
    *,
    size: tuple[int, int],
    text_tokens: int,
    classes: int,
    layers: int | None = None,
    fused_attention: bool = True,
) -> ModelMacs:
    """MACs of one unpruned frame through the deployed stages (encode, L decoder layers, masks).

    Runs on whatever device the model is on; on `meta` it is shape-only and takes a second.
    Vocabulary mode with `text_tokens` packed valid tokens T of `classes` phrases K; what
    inference keeps is the final layer's logits, boxes, confidence and masks.
    """
    device = next(model.parameters()).device
    width = model.text_encoder.width
    images = torch.zeros(1, 3, *size, device=device)
    tokens = torch.zeros(1, text_tokens, width, device=device)
    mask = torch.ones(1, text_tokens, dtype=torch.bool, device=device)
    class_embed = torch.zeros(1, classes, width, device=device)
    depth = min(layers or model.num_layers, model.num_layers)

    def run() -> tuple[Tensor, ...]:
        state = model.encode(images, tokens, mask, class_embed)
        queries, boxes = state.queries, state.reference_boxes
        for layer in range(depth):
            queries, boxes, logits, confidence = model.decoder_layer(
                layer, queries, boxes, state.memory, state.class_embed_proj, state.memory_shapes
            )
        return logits, boxes, confidence, model.mask_head(queries, state.mask_features)

    report = count_macs(run, model_components(model), fused_attention=fused_attention)
    queries = model.decoder.num_queries if hasattr(model.decoder, 'num_queries') else 0
    return _split(report, [queries] * depth)


def count_model_forward(
    model: nn.Module, images: Tensor, text: Any, **forward_kwargs: Any
) -> ModelMacs:
    """MACs of a real `model(images, text, **forward_kwargs)` call (e.g. with pruning).

    Counts only work reaching the final layer's outputs, so pruned queries stop costing from
    the layer that drops them. The text encoder is not run here: pass TextFeatures.
    """
    holder: dict[str, Any] = {}

    def run() -> Any:
        holder['out'] = model(images, text, **forward_kwargs)
        return holder['out']

    report = count_macs(run, model_components(model), outputs=lambda out: out.layers[-1])
    kept = tuple(layer.logits.shape[1] for layer in holder['out'].layers)
    return _split(report, kept)


def clip_text_tower_macs(phrases: int, *, context: int = 77) -> int:
    """MACs of CLIP ViT-B/32's text tower over `phrases` full `context`-token sequences.

    GLEE (and the paper's 239 G for the 80 COCO names) run every phrase through all 77
    positions; our encoder cuts trailing padding, which `model.encode_text` counts directly.
    """
    from open_clip.transformer import TextTransformer

    with torch.device('meta'):
        tower = TextTransformer(context_length=context, width=512, heads=8, layers=12)
    ids = torch.zeros(phrases, context, dtype=torch.long, device='meta')
    return count_macs(lambda: tower(ids)).total
