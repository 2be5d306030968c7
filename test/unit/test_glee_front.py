"""GLEE-Lite's front end: d2 ResNet-50, CLIP text tower (HF layout) and CLIP tokenizer.

Parity tests run GLEE's own model (reduced, seeded weights) and compare the tensors at its
backbone and text-encoder boundaries; they skip without the GLEE source tree. The others run
anywhere (token ids recorded from GLEE's CLIPTokenizer, shapes, frozen batch norm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobius_ros.common.tokenizer import CLIP_BPE_FILE, HfClipTokenizer
from mobius_ros.model.backbone import (
    D2ResNet50,
    FrozenBatchNorm2d,
    build_backbone,
    d2_resnet_from_glee,
)
from mobius_ros.model.config import BackboneConfig, TextConfig
from mobius_ros.model.text_encoder import (
    HfClipTextEncoder,
    TextEncoder,
    build_text_encoder,
    hf_clip_from_glee,
)
from scripts.glee_reference import glee_src

oracle = pytest.mark.skipif(glee_src() is None, reason='GLEE source tree not present')

REDUCED_BACKBONE = BackboneConfig(
    name='d2-resnet50', d2_stem_width=16, d2_width_per_group=16, d2_res2_out=64
)
REDUCED_TEXT = TextConfig(name='hf-clip', width=64, layers=2, heads=4, ffn_dim=128)
NAMES = ['person', 'red car', 'traffic light', 'Hot-Dog!']
EXPRESSION = 'the man on the left, wearing a blue   shirt'
TRICKY = [
    'person',
    'Traffic Light',
    '  extra   white\tspace\n',
    "the dog's ball, isn't it?!",
    'café crème brûlée',
    'cafe\u0301',
    '東京タワー',
    '강아지',
    'dog 🐶 with 👍🏽 emoji',
    'R2-D2 & C-3PO (1977)',
    '&amp; html',
    'ΟΔΟΣ',
    'İstanbul',
    '<|endoftext|> and <|ENDOFTEXT|>',
    'word ' * 100,
]
# GLEE's CLIPTokenizer (transformers 5.25, projects/GLEE/clip_vit_base_patch32) on these phrases,
# recorded by test_tokenizer_matches_glee: the valid ids, start and end tokens included.
KNOWN_IDS = {
    'Traffic Light': [49406, 3399, 1395, 49407],
    "the dog's ball, isn't it?!": [49406, 518, 1929, 568, 1069, 267, 2923, 713, 585, 2835, 49407],
    'café crème brûlée': [49406, 15304, 1075, 12138, 614, 711, 127, 119, 75, 13489, 49407],
    '東京タワー': [49406, 48338, 21078, 105, 34941, 2429, 107, 30391, 49407],
    'dog 🐶 with 👍🏽 emoji': [49406, 1929, 10631, 593, 43722, 16327, 49407],
    '&amp; html': [49406, 261, 6259, 282, 18231, 49407],
    '<|endoftext|> and <|ENDOFTEXT|>': [49406, 49407, 537, 27, 347, 40786, 4160, 91, 285, 49407],
}


def _ids(tokenizer: HfClipTokenizer, phrase: str) -> list[int]:
    ids, mask = tokenizer.with_mask([phrase])
    return ids[0][mask[0]].tolist()


@pytest.fixture(scope='module')
def tokenizer() -> HfClipTokenizer:
    return HfClipTokenizer()


def test_tokenizer_known_ids(tokenizer: HfClipTokenizer) -> None:
    for phrase, expected in KNOWN_IDS.items():
        assert _ids(tokenizer, phrase) == expected, phrase


def test_tokenizer_pads_with_end_token_and_truncates(tokenizer: HfClipTokenizer) -> None:
    ids, mask = tokenizer.with_mask(['cat', 'word ' * 100])
    assert ids.shape == mask.shape == (2, 77) and ids.dtype == np.int64
    assert ids[0, :3].tolist() == [49406, 2368, 49407] and (ids[0, 3:] == 49407).all()
    assert mask[0].sum() == 3 and mask[1].all()
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407 and (ids[1, 1:-1] == 2653).all()
    assert (tokenizer(['cat']) == ids[:1]).all()
    assert CLIP_BPE_FILE.is_file()


def test_frozen_batch_norm_is_scale_and_shift() -> None:
    torch.manual_seed(0)
    norm = FrozenBatchNorm2d(5)
    for name in ('weight', 'bias', 'running_mean'):
        getattr(norm, name).copy_(torch.randn(5))
    norm.running_var.copy_(torch.rand(5) + 0.5)
    assert set(norm.state_dict()) == {'weight', 'bias', 'running_mean', 'running_var'}
    assert not list(norm.parameters())
    x = torch.randn(2, 5, 3, 4, requires_grad=True)
    expected = torch.nn.functional.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, training=False, eps=1e-5
    )
    norm.train()  # frozen: training mode changes nothing
    torch.testing.assert_close(norm(x), expected)


def test_d2_resnet_shapes_and_mapping_names() -> None:
    backbone = build_backbone(
        'd2-resnet50', image_size=(64, 96), d2_stem_width=16, d2_width_per_group=16, d2_res2_out=64
    )
    assert isinstance(backbone, D2ResNet50)
    assert backbone.channels == {4: 64, 8: 128, 16: 256, 32: 512}
    features = backbone(torch.randn(1, 3, 64, 96))
    assert {s: tuple(f.shape) for s, f in features.items()} == {
        4: (1, 64, 16, 24),
        8: (1, 128, 8, 12),
        16: (1, 256, 4, 6),
        32: (1, 512, 2, 3),
    }
    state = backbone.state_dict()
    mapped = d2_resnet_from_glee(lambda name: torch.zeros(0), REDUCED_BACKBONE)
    assert set(mapped) == set(state)
    with pytest.raises(ValueError, match='GLEE checkpoint'):
        build_backbone('d2-resnet50', image_size=(64, 96), pretrained=True)


def test_hf_clip_encoder_shapes_and_mapping_names() -> None:
    torch.manual_seed(0)
    encoder = build_text_encoder(
        'hf-clip', width=64, layers=2, heads=4, ffn_dim=128, context_length=77
    )
    assert isinstance(encoder, HfClipTextEncoder) and isinstance(encoder, TextEncoder)
    assert encoder.config == REDUCED_TEXT and encoder.width == 64
    features = encoder.encode(['cat', 'traffic light'])
    # All 77 positions, as GLEE keeps them (its fusion sees an expression's padding).
    assert features.tokens.shape == (2, 77, 64)
    assert features.mask.sum(1).tolist() == [3, 4]
    alone = encoder.encode(['cat'])
    torch.testing.assert_close(alone.tokens[0], features.tokens[0])
    mapped = hf_clip_from_glee(lambda name: torch.zeros(0), REDUCED_TEXT)
    assert set(mapped) == set(encoder.state_dict())
    assert encoder.identity.startswith('hf-clip/')


# --- parity with GLEE's own model --------------------------------------------------------


@pytest.fixture(scope='module')
def glee():
    """Reduced GLEE-Lite with seeded weights and the tensors at its front-end boundaries."""
    from scripts.glee_reference import build_reference

    model, _ = build_reference('GLEE-Lite', reduced=True, seed=0)
    captured: dict[str, list] = {'backbone': [], 'text': []}
    hooks = [
        model.backbone.register_forward_hook(
            lambda m, args, out: captured['backbone'].append((args[0], out))
        ),
        model.text_encoder.register_forward_hook(
            lambda m, args, out: captured['text'].append((args, out['last_hidden_state'])),
        ),
    ]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        model(x, [], task='coco', batch_name_list=NAMES, is_train=False)
        model(x, {'grounding': [EXPRESSION]}, task='grounding', batch_name_list=[], is_train=False)
    for hook in hooks:
        hook.remove()
    return model, model.state_dict(), captured


def _taker(state):
    def take(name: str) -> torch.Tensor:
        return state[name]

    return take


@oracle
def test_backbone_matches_glee(glee) -> None:
    _, state, captured = glee
    ours = D2ResNet50(stem_width=16, width_per_group=16, res2_out=64)
    mapped = d2_resnet_from_glee(_taker(state), REDUCED_BACKBONE)
    ours.load_state_dict(mapped)
    assert not any('num_batches_tracked' in k for k in state if k.startswith('backbone.'))
    images, theirs = captured['backbone'][0]
    with torch.no_grad():
        features = ours(images)
    for stride, name in zip((4, 8, 16, 32), ('res2', 'res3', 'res4', 'res5')):
        torch.testing.assert_close(features[stride], theirs[name], atol=1e-4, rtol=1e-4)


@oracle
def test_backbone_mapping_takes_every_glee_backbone_tensor(glee) -> None:
    _, state, _ = glee
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return state[name]

    d2_resnet_from_glee(take, REDUCED_BACKBONE)
    assert used == {k for k in state if k.startswith('backbone.')}


def _our_text(state) -> HfClipTextEncoder:
    ours = HfClipTextEncoder(width=64, layers=2, heads=4, ffn_dim=128)
    ours.load_state_dict(hf_clip_from_glee(_taker(state), REDUCED_TEXT))
    return ours.eval()


@oracle
def test_text_tokens_mask_and_class_embedding_match_glee(glee) -> None:
    _, state, captured = glee
    ours = _our_text(state)
    (ids, mask), hidden = captured['text'][0]
    mine_ids, mine_mask = ours.tokenizer.with_mask(NAMES)
    assert (torch.from_numpy(mine_ids) == ids).all()
    assert (torch.from_numpy(mine_mask) == mask.bool()).all()
    with torch.no_grad():
        features = ours.encode(NAMES)
    valid = mask.bool()
    assert (features.mask == valid).all()
    torch.testing.assert_close(features.tokens, hidden, atol=1e-4, rtol=1e-4)
    # GLEE pools after its projection: mean(tokens @ P) == mean(tokens) @ P.
    lang = state['lang_projection']
    weights = valid.float()[..., None]
    theirs = ((hidden @ lang) * weights).sum(1) / weights.sum(1)
    torch.testing.assert_close(features.pooled @ lang, theirs, atol=1e-4, rtol=1e-4)


@oracle
def test_grounding_tokens_match_glee(glee) -> None:
    _, state, captured = glee
    ours = _our_text(state)
    (ids, mask), hidden = captured['text'][1]
    assert ids.shape == (1, 77)
    with torch.no_grad():
        features = ours.encode([EXPRESSION])
    assert (features.mask == mask.bool()).all()
    assert (torch.from_numpy(ours.tokenizer([EXPRESSION])) == ids).all()
    # Every one of GLEE's 77 positions, the padding ones included (its fusion reads them).
    torch.testing.assert_close(features.tokens, hidden, atol=1e-4, rtol=1e-4)


@oracle
def test_tokenizer_matches_glee(tokenizer: HfClipTokenizer) -> None:
    from scripts.glee_reference import CLIP_DIR, import_glee

    ns = import_glee()
    theirs = ns.CLIPTokenizer.from_pretrained(str(ns.src / CLIP_DIR))
    theirs.add_special_tokens({'cls_token': theirs.eos_token})
    batch = theirs(
        TRICKY, max_length=77, padding='max_length', truncation=True, return_tensors='np'
    )
    ids, mask = tokenizer.with_mask(TRICKY)
    assert (ids == batch['input_ids']).all()
    assert (mask == batch['attention_mask'].astype(bool)).all()
    for phrase, expected in KNOWN_IDS.items():
        assert _ids(tokenizer, phrase) == expected
