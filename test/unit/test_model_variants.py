"""Every named variant instantiates and runs; pixel decoder and decoder options; the baseline."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mobius_ros.model.config import MobiusConfig
from mobius_ros.model.text_encoder import TinyTextEncoder
from mobius_ros.model.variants import VARIANTS, build_model

SMALL = {
    'hidden_dim': 32,
    'pixel_decoder': {
        'num_layers': 1,
        'num_heads': 4,
        'num_points': 2,
        'ffn_dim': 64,
        'fusion_dim': 64,
        'fusion_heads': 2,
    },
    'decoder': {
        'num_queries': 10,
        'num_layers': 2,
        'num_heads': 4,
        'num_points': 2,
        'ffn_dim': 64,
    },
}
HEAVY = {
    'MOBIUS-R50',
    'GLEE-R50',
    'GLEE-Plus',
    'MOBIUS-MNv4-conv-M',
    'MOBIUS-MNv4-conv-L',
    'MOBIUS-MNv4-hybrid-M',
    'MOBIUS-MNv4-hybrid-L',
}
FASTERVIT = {'MOBIUS-0', 'MOBIUS-1', 'MOBIUS-2', 'MOBIUS-3'}
HAS_FASTERVIT = importlib.util.find_spec('fastervit') is not None


def _marks(name: str) -> list[pytest.MarkDecorator]:
    marks = []
    if name in HEAVY or name in FASTERVIT:
        marks.append(pytest.mark.slow)
    if name in FASTERVIT:
        marks.append(pytest.mark.skipif(not HAS_FASTERVIT, reason='fastervit extra missing'))
    return marks


def _run(model: torch.nn.Module, size: tuple[int, int] = (64, 96)) -> None:
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size), ['cat', 'dog'])
    q = out.final.logits.shape[1]
    assert out.final.logits.shape == (1, q, 2)
    assert out.final.masks.shape == (1, q, size[0] // 4, size[1] // 4)
    assert out.mask_features.shape == (1, 32, size[0] // 4, size[1] // 4)


@pytest.mark.parametrize(
    'name', [pytest.param(n, marks=_marks(n)) for n in VARIANTS if n != 'MOBIUS-tiny']
)
def test_every_variant_instantiates_and_runs(name: str) -> None:
    size = (64, 96)
    overrides = dict(SMALL)
    if name in FASTERVIT:
        # FasterViT's hierarchical attention fixes the input size at construction.
        overrides['backbone'] = {'image_size': size}
    model = build_model(
        name, text_encoder=TinyTextEncoder(width=16, heads=2, layers=1), **overrides
    )
    assert model.config.name == name
    assert model.config.backbone.name == VARIANTS[name].backbone.name
    _run(model, size)


def test_variant_table_follows_the_paper() -> None:
    assert [VARIANTS[f'MOBIUS-{i}'].backbone.name for i in range(4)] == [
        f'fastervit-{i}' for i in range(4)
    ]
    paper = [n for n in VARIANTS if n in FASTERVIT or 'MNv4' in n]
    assert len(paper) == 9
    for name in paper:
        config = VARIANTS[name]
        if True:
            assert (config.hidden_dim, config.decoder.num_layers) == (256, 6), name
            assert config.pixel_decoder.encoder_strides == (16,)
            assert config.decoder.num_queries == 300
            assert (config.pixel_decoder.fusion_dim, config.pixel_decoder.fusion_heads) == (
                2048,
                8,
            )
    assert VARIANTS['MOBIUS-R50'].decoder.num_layers == 9
    lite = VARIANTS['MOBIUS-mobile-lite']
    assert (lite.hidden_dim, lite.pixel_decoder.num_layers, lite.decoder.num_queries) == (
        128,
        3,
        100,
    )
    fast = VARIANTS['MOBIUS-mobile-fast']
    assert fast == lite.replace(
        name='MOBIUS-mobile-fast',
        pixel_decoder={'num_layers': 1, 'fpn_conv': 'separable'},
    )
    glee = VARIANTS['GLEE-R50']
    assert glee.pixel_decoder.encoder_strides == (8, 16, 32, 64)
    assert glee.decoder.multi_scale and glee.decoder.num_layers == 9


def test_unknown_variant_and_override_are_errors() -> None:
    with pytest.raises(ValueError, match='unknown variant'):
        build_model('MOBIUS-9')
    with pytest.raises(ValueError, match='unknown'):
        build_model('MOBIUS-tiny', hidden=64)
    with pytest.raises(ValueError, match='unknown'):
        build_model('MOBIUS-tiny', decoder={'queries': 5})


def _memory_tokens(config_overrides: dict, size: int = 64) -> tuple[int, tuple]:
    model = build_model('MOBIUS-tiny', **config_overrides).eval()
    text = model.encode_text(['cat'])
    tokens, mask, class_embed = model.text_inputs(text, 1, referring=False)
    with torch.no_grad():
        state = model.encode(torch.randn(1, 3, size, size), tokens, mask, class_embed)
        assert state.mask_features.shape == (1, 32, size // 4, size // 4)
    return state.memory.shape[1], state.memory_shapes


@pytest.mark.parametrize('stride', [8, 16, 32])
def test_bottleneck_stride(stride: int) -> None:
    n, shapes = _memory_tokens({'pixel_decoder': {'encoder_strides': (stride,)}})
    assert shapes == ((64 // stride, 64 // stride),)
    assert n == (64 // stride) ** 2


@pytest.mark.parametrize('self_attn', ['deformable', 'standard', 'none'])
@pytest.mark.parametrize('fusion', [True, False])
def test_pixel_decoder_options(self_attn: str, fusion: bool) -> None:
    model = build_model(
        'MOBIUS-tiny', pixel_decoder={'self_attn': self_attn, 'fusion': fusion, 'num_layers': 3}
    )
    assert len(model.pixel_decoder.layers) == 3
    assert (model.pixel_decoder.fusion is not None) == fusion
    _run(model)


def test_separable_fpn_computes_the_same_shapes_for_fewer_macs() -> None:
    from mobius_ros.model.flops.counter import count_macs

    macs = {}
    for kind in ('full', 'separable'):
        torch.manual_seed(0)
        model = build_model('MOBIUS-tiny', hidden_dim=64, pixel_decoder={'fpn_conv': kind})
        model.eval()
        images = torch.randn(1, 3, 64, 96)
        decoder = model.pixel_decoder
        report = count_macs(
            lambda m=model, x=images: m(x, ['cat']), {'fpn': list(decoder.output.values())}
        )
        macs[kind] = report.get('fpn')
        with torch.no_grad():
            out = model(images, ['cat'])
        assert out.mask_features.shape == (1, 64, 16, 24)
    # FPN outputs at strides 8 and 4 (bottleneck at 16): depthwise + pointwise is about 8x
    # cheaper than a dense 3x3 at C = 64.
    assert 0 < macs['separable'] < macs['full'] / 5


def test_invalid_fpn_conv_is_rejected() -> None:
    with pytest.raises(ValueError, match='fpn_conv'):
        build_model('MOBIUS-tiny', pixel_decoder={'fpn_conv': 'dilated'})


def test_batch_norm_option_replaces_every_pixel_decoder_group_norm() -> None:
    model = build_model('MOBIUS-tiny', pixel_decoder={'norm': 'batch'})
    norms = [m for m in model.pixel_decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.pixel_decoder.modules())
    model.train()
    out = model(torch.randn(2, 3, 64, 96), ['cat'])
    out.mask_features.sum().backward()  # trains: batch statistics, gradients through them
    assert all(int(m.num_batches_tracked) == 1 for m in norms)


@pytest.mark.parametrize(
    ('variant', 'norm', 'match'),
    [('MOBIUS-tiny', 'layer', 'norm must be one of'), ('GLEE-Lite', 'batch', "'maskdino' uses")],
)
def test_invalid_norm_is_rejected(variant: str, norm: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(variant, pixel_decoder={'norm': norm})


def test_invalid_self_attention_is_rejected() -> None:
    with pytest.raises(ValueError, match='self_attn'):
        build_model('MOBIUS-tiny', pixel_decoder={'self_attn': 'global'})


def test_multi_scale_decoder_memory() -> None:
    n, shapes = _memory_tokens({'decoder': {'multi_scale': True}})
    assert shapes == ((8, 8), (4, 4), (2, 2))
    assert n == 64 + 16 + 4


def test_glee_baseline_all_scale_encoder() -> None:
    n, shapes = _memory_tokens(
        {'pixel_decoder': {'encoder_strides': (8, 16, 32, 64)}, 'decoder': {'multi_scale': True}},
        size=128,
    )
    assert shapes == ((16, 16), (8, 8), (4, 4), (2, 2))
    assert n == 256 + 64 + 16 + 4


def test_glee_adds_a_stride_64_level() -> None:
    # GLEE's stride 64 comes from a 3x3 stride-2 conv on stride 32; the bottleneck has none.
    mobius = build_model('MOBIUS-tiny').pixel_decoder
    glee = build_model('MOBIUS-tiny', pixel_decoder={'encoder_strides': (8, 16, 32, 64)})
    assert mobius.encoder_strides == (16,)
    assert glee.pixel_decoder.encoder_strides == (8, 16, 32, 64)
    assert '64' in glee.pixel_decoder.input_proj and '64' not in mobius.input_proj


def test_config_carries_given_text_encoder() -> None:
    model = build_model('MOBIUS-tiny', text_encoder=TinyTextEncoder(width=16, heads=2, layers=1))
    assert model.config.text.name == 'tiny' and model.config.text.width == 16
    assert isinstance(MobiusConfig.from_dict(model.config.to_dict()), MobiusConfig)


@pytest.mark.slow
def test_full_width_mobile_variant_with_clip() -> None:
    model = build_model('MOBIUS-MNv4-conv-S')
    assert model.text_encoder.width == 512
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128), ['cat'])
    assert out.final.logits.shape == (1, 64, 1)  # Q capped by the 8 x 8 bottleneck tokens
