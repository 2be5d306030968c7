"""GLEE-Plus's Swin trunk: our `D2Swin` against GLEE's own `D2SwinTransformer` at 1e-4.

The reduced trunk (window 7, every stage two blocks) runs on image sizes that are not
multiples of the patch, the window or two, so the patch padding, the window padding and
cropping, the shifted-window mask on a padded grid and patch merging of odd maps are all
exercised; the whole-model comparison is in test_glee_parity.py.
"""

from __future__ import annotations

import pytest
import torch

from mobius_ros.model.swin import D2Swin, d2_swin_from_glee, relative_position_index
from scripts.glee_reference import glee_src

REDUCED = {'embed_dim': 32, 'depths': (2, 2, 2, 2), 'num_heads': (1, 2, 4, 8), 'window': 7}
SIZES = [(64, 96), (61, 87), (33, 130), (100, 100), (17, 23)]


def test_output_sizes_follow_the_padded_strides():
    trunk = D2Swin(**REDUCED).eval()
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, 61, 87))
    height, breadth = -(-61 // 4), -(-87 // 4)  # the 4-pixel patch, the image padded
    for stride, width in trunk.channels.items():
        assert tuple(features[stride].shape) == (1, width, height, breadth)
        height, breadth = -(-height // 2), -(-breadth // 2)  # merging pads odd maps


def test_relative_position_index_covers_the_bias_table():
    index = relative_position_index(3)
    assert index.shape == (9, 9)
    assert int(index.min()) == 0 and int(index.max()) == 24  # (2*3 - 1)^2 - 1
    assert torch.equal(index.diagonal(), torch.full((9,), 12))  # offset (0, 0) is the centre


@pytest.mark.skipif(glee_src() is None, reason='GLEE source tree not present')
@pytest.mark.parametrize('size', SIZES, ids=lambda s: f'{s[0]}x{s[1]}')
def test_swin_matches_glee_d2_swin(glee_plus_trunk, size):
    theirs = glee_plus_trunk
    state = theirs.state_dict()
    ours = D2Swin(**REDUCED).eval()
    ours.load_state_dict(d2_swin_from_glee(lambda name: state[name[len('backbone.') :]], (2,) * 4))
    image = torch.randn((1, 3, *size), generator=torch.Generator().manual_seed(sum(size)))
    with torch.no_grad():
        expected, got = theirs(image), ours(image)
    for stride, name in zip((4, 8, 16, 32), ('res2', 'res3', 'res4', 'res5')):
        torch.testing.assert_close(got[stride], expected[name], atol=1e-4, rtol=0)


@pytest.fixture(scope='module')
def glee_plus_trunk():
    from scripts.glee_reference import build_reference

    model, _ = build_reference('GLEE-Plus', reduced=True, seed=5)
    return model.backbone
