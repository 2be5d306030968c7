"""MaskDINOPixelDecoder against GLEE's own MaskDINO encoder (reduced GLEE-Lite, seeded weights).

The trunk features and the fusion tokens that reach GLEE's pixel decoder are captured from a
full GLEE forward; ours runs on the same inputs with the converted weights.
"""

from __future__ import annotations

import pytest
import torch

from mobius_ros.model.config import PixelDecoderConfig
from mobius_ros.model.maskdino import MaskDINOPixelDecoder, maskdino_encoder_from_glee
from mobius_ros.model.pixel_decoder import build_pixel_decoder
from scripts.glee_reference import glee_src

pytestmark = pytest.mark.skipif(glee_src() is None, reason='GLEE source tree not present')

IMAGE_SIZE = (128, 160)
CONFIG = PixelDecoderConfig(
    style='maskdino', encoder_strides=(8, 16, 32, 64), num_layers=2, ffn_dim=128
)
PROMPTS = {
    'category': {'task': 'coco', 'names': ['person', 'red car', 'dog, sitting']},
    'grounding': {'task': 'grounding', 'expression': 'the man on the left'},
}


@pytest.fixture(scope='module')
def glee():
    from scripts.glee_reference import build_reference

    model, _ = build_reference('GLEE-Lite', reduced=True, seed=0)
    return model


def _capture(model, prompt: dict) -> dict:
    """GLEE's pixel-decoder inputs (before its fusion overwrites them) and outputs."""
    got: dict = {}
    pixel = model.pixel_decoder
    original = pixel.forward_features

    def forward_features(features, masks, early_fusion=None):
        got['features'] = dict(features)
        got['text'] = early_fusion['hidden'].clone()
        got['mask'] = early_fusion['masks'].clone()
        got['out'] = original(features, masks, early_fusion=early_fusion)
        return got['out']

    torch.manual_seed(0)
    image = torch.randn(1, 3, *IMAGE_SIZE)
    pixel.forward_features = forward_features
    try:
        with torch.no_grad():
            if prompt['task'] == 'grounding':
                model(
                    image,
                    {'grounding': [prompt['expression']]},
                    task='grounding',
                    batch_name_list=[],
                    is_train=False,
                )
            else:
                model(image, [], task='coco', batch_name_list=prompt['names'], is_train=False)
    finally:
        del pixel.forward_features
    return got


def _ours(model) -> MaskDINOPixelDecoder:
    state = model.state_dict()
    channels = {4: 64, 8: 128, 16: 256, 32: 512}
    ours = build_pixel_decoder(CONFIG, channels, 256)
    used = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return state[name]

    mapped = maskdino_encoder_from_glee(take, CONFIG)
    ours.load_state_dict(mapped, strict=True)
    leftover = {k for k in state if k.startswith('pixel_decoder.')} - used
    assert not leftover, sorted(leftover)
    return ours.eval()


@pytest.mark.parametrize('case', sorted(PROMPTS))
def test_matches_glee_encoder(glee, case: str) -> None:
    got = _capture(glee, PROMPTS[case])
    ours = _ours(glee)
    features = {s: got['features'][f'res{i}'] for i, s in enumerate((4, 8, 16, 32), start=2)}
    text, mask = got['text'], got['mask']
    if case == 'grounding':
        # Padded to 77 with the pads marked invalid: GLEE's fusion attends to them all the same.
        assert text.shape[1] == 77 and not mask.all()
    else:
        assert mask.all()
    with torch.no_grad():
        memory, shapes, mask_features, _ = ours(features, text, mask)
    glee_mask_features, _, multi_scale, _ = got['out']
    # GLEE's decoder flattens its multi-scale input from the coarsest level down.
    expected = torch.cat([f.flatten(2).transpose(1, 2) for f in multi_scale[::-1]], dim=1)
    assert shapes == tuple(tuple(f.shape[-2:]) for f in multi_scale[::-1])
    # The stride-64 level is a 3x3 stride-2 conv of stride 32: ceil(H / 64).
    assert shapes[0] == (-(-IMAGE_SIZE[0] // 64), -(-IMAGE_SIZE[1] // 64))
    assert ours.memory_strides == (64, 32, 16, 8)
    assert memory.shape == expected.shape
    torch.testing.assert_close(memory, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(mask_features, glee_mask_features, atol=1e-4, rtol=0)
