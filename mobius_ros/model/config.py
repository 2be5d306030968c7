"""Frozen configuration dataclasses of the model; serialise to/from plain dicts.

Checkpoints, exports and engines carry the resolved `MobiusConfig.to_dict()`; `from_dict`
rejects unknown keys so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BackboneConfig:
    """Vision encoder.

    Attributes:
        name: 'tiny', 'fastervit-0'..'3', a timm model name ('resnet50',
            'mobilenetv4_conv_small', ...), or 'd2-resnet50' (a ResNet-50 laid out and
            computed as detectron2 builds it for GLEE: frozen batch norm, stride in the 3x3),
            or 'd2-swin' (the Swin Transformer GLEE-Plus runs, detectron2's D2SwinTransformer).
        tiny_width: stride-4 width of the 'tiny' backbone.
        image_size: (H, W) input canvas; only FasterViT fixes it at construction.
        d2_stem_width, d2_width_per_group, d2_res2_out: 'd2-resnet50' widths (stem output,
            bottleneck width of the first stage, output width of the first stage); the
            defaults are ResNet-50's, narrower values build reduced test models.
        swin_embed_dim, swin_depths, swin_heads, swin_window: 'd2-swin' stride-4 width,
            blocks and attention heads per stage, and window side; the defaults are Swin-L's
            (GLEE-Plus).
    """

    name: str = 'tiny'
    tiny_width: int = 16
    image_size: tuple[int, int] = (384, 512)
    d2_stem_width: int = 64
    d2_width_per_group: int = 64
    d2_res2_out: int = 256
    swin_embed_dim: int = 192
    swin_depths: tuple[int, ...] = (2, 2, 18, 2)
    swin_heads: tuple[int, ...] = (6, 12, 24, 48)
    swin_window: int = 12


@dataclass(frozen=True)
class TextConfig:
    """Text encoder.

    Attributes:
        name: 'clip' (open_clip ViT-B/32), 'minilm', 'tiny', or 'hf-clip': CLIP's text
            transformer in the Hugging Face layout GLEE uses (its token features, not the
            pooled projection), with CLIP's tokenizer.
        width: token width for 'tiny' and 'hf-clip'.
        layers, heads, ffn_dim, context_length, vocab_size: 'hf-clip' only; the defaults are
            CLIP ViT-B/32's text tower.
    """

    name: str = 'clip'
    width: int = 32
    layers: int = 12
    heads: int = 8
    ffn_dim: int = 2048
    context_length: int = 77
    vocab_size: int = 49408


@dataclass(frozen=True)
class PixelDecoderConfig:
    """Bottleneck pixel decoder (DESIGN §4.5).

    Attributes:
        encoder_strides: scales the layers update; (16,) is the stride-16 bottleneck
            (8 and 32 selectable), (8, 16, 32, 64) is GLEE's all-scale encoder.
        num_layers: transformer layers N.
        self_attn: 'deformable', 'standard' or 'none'.
        num_heads, num_points: attention heads and deformable sampling points per level.
        ffn_dim: FFN hidden width.
        fusion: early bi-attention fusion; fusion_dim, fusion_heads its inner width and heads.
        fpn_conv: the 3x3 output convolutions of the FPN back to stride 4: 'full' (the
            paper's) or 'separable' (depthwise 3x3 then pointwise 1x1, about 8x fewer MACs at
            C = 128; the stride-4 convolution is the costliest node of the mobile graphs).
        norm: the norm of the bottleneck decoder's projections and FPN convolutions: 'group'
            (the paper's GroupNorm(32)) or 'batch' (BatchNorm, folded into the convolutions at
            export, where GroupNorm stays as InstanceNormalization between reshapes).
        style: 'bottleneck' (MOBIUS, DESIGN §4.5) or 'maskdino': GLEE's MaskDINO encoder
            (input projections with group norm, an extra stride-64 level, early fusion before
            the deformable layers, an FPN step to stride 4), computed as GLEE computes it.
    """

    style: str = 'bottleneck'
    encoder_strides: tuple[int, ...] = (16,)
    num_layers: int = 6
    self_attn: str = 'deformable'
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 2048
    fusion: bool = True
    fusion_dim: int = 2048
    fusion_heads: int = 8
    fpn_conv: str = 'full'
    norm: str = 'group'


@dataclass(frozen=True)
class DecoderConfig:
    """Query decoder (DESIGN §4.6).

    Attributes:
        num_queries: Q.
        num_layers: L.
        multi_scale: cross-attend to all projected scales instead of the bottleneck only.
        num_heads, num_points, ffn_dim: attention heads, deformable points, FFN width.
        referring_pooling: how a referring expression becomes the class embedding the
            decoder's class head scores queries against: 'mean' of its projected tokens (the
            paper's, as for class names) or 'attention', a learned softmax weighting of them
            that can favour the expression's subject over the objects it relates to.
        style: 'mobius' (DESIGN §4.6) or 'maskdino': GLEE's MaskDINO decoder at inference
            (query selection from the encoder, box refinement, its heads). Both rank queries
            for pruning by their best class probability, max_k sigmoid(logit); MOBIUS trains
            it with the calibration loss to predict mask quality, GLEE only as a class score.
    """

    style: str = 'mobius'
    num_queries: int = 300
    num_layers: int = 6
    multi_scale: bool = False
    num_heads: int = 8
    num_points: int = 4
    ffn_dim: int = 2048
    referring_pooling: str = 'mean'


@dataclass(frozen=True)
class MobiusConfig:
    """A whole MOBIUS model; `name` is the variant it was derived from."""

    name: str = 'custom'
    hidden_dim: int = 256
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    text: TextConfig = field(default_factory=TextConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MobiusConfig:
        """Inverse of `to_dict`; unknown keys at any level raise ValueError."""
        return _from_dict(cls, data)

    def replace(self, **overrides: Any) -> MobiusConfig:
        """A copy with fields replaced; nested configs accept dicts of their own fields."""
        merged = self.to_dict()
        for key, value in overrides.items():
            if key not in merged:
                raise ValueError(f'unknown MobiusConfig field {key!r}')
            if isinstance(merged[key], dict) and isinstance(value, dict):
                unknown = set(value) - set(merged[key])
                if unknown:
                    raise ValueError(f'unknown {key} fields: {sorted(unknown)}')
                merged[key] = {**merged[key], **value}
            elif dataclasses.is_dataclass(value):
                merged[key] = dataclasses.asdict(value)
            else:
                merged[key] = value
        return MobiusConfig.from_dict(merged)


_NESTED = {
    'backbone': BackboneConfig,
    'text': TextConfig,
    'pixel_decoder': PixelDecoderConfig,
    'decoder': DecoderConfig,
}


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f'{cls.__name__} expects a dict, got {type(data).__name__}')
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f'unknown {cls.__name__} keys: {sorted(unknown)}')
    values = {}
    for key, value in data.items():
        if cls is MobiusConfig and key in _NESTED:
            value = _from_dict(_NESTED[key], value)
        elif isinstance(value, list):
            # JSON has no tuples; every sequence field of the configs is a tuple.
            value = tuple(value)
        values[key] = value
    return cls(**values)
