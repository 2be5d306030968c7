"""A converted GLEE computes what GLEE's own code computes, end to end, at 1e-4 (float32).

The reduced GLEE-Lite and GLEE-Plus (Swin trunk) of `scripts.glee_reference` with
`seeded_state(manifest, 0)` weights are converted by our converter (`convert_state`) into our
'GLEE-Lite' / 'GLEE-Plus' configurations and compared,
boundary by boundary, with the tensors GLEE recorded (`python -m scripts.glee_record`,
test/fixtures/glee): trunk features, the text embeddings and fusion tokens, the encoder's
levels and mask features, the selected queries, every decoder layer and the final logits,
boxes and masks, for a category list, the class-agnostic prompt and a referring expression.
The same comparison runs live against GLEE's code on other inputs where its source is present.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mobius_ros.model.mobius import Mobius
from mobius_ros.ops.image import PIXEL_MEAN, PIXEL_STD
from scripts.glee_reference import converted_reduced, fixture_name, glee_src, seeded_state

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'glee'
ATOL = 1e-4
STRIDES = (4, 8, 16, 32)
VARIANTS = ('GLEE-Lite', 'GLEE-Plus')


def _convert(entries: list, seed: int, variant: str, buffers: dict[str, Tensor]) -> Mobius:
    model, conversion = converted_reduced(entries, seed, variant, buffers)
    floats = [e for e in entries if e[0] not in buffers]
    assert set(conversion.mapped) | set(conversion.unused) == set(
        seeded_state(floats, seed)
    ) | set(buffers)
    assert conversion.config.backbone.name == (
        'd2-swin' if variant == 'GLEE-Plus' else 'd2-resnet50'
    )
    return model


@pytest.fixture(scope='module', params=VARIANTS)
def recorded(request) -> tuple[Mobius, dict[str, Tensor], dict]:
    from safetensors.torch import load_file

    stem = FIXTURES / fixture_name(request.param)
    meta = json.loads(stem.with_suffix('.json').read_text())
    tensors = load_file(str(stem.with_suffix('.safetensors')))
    buffers = {k[len('buffer.') :]: v for k, v in tensors.items() if k.startswith('buffer.')}
    return _convert(meta['tensors'], meta['seed'], request.param, buffers), tensors, meta


class _Check:
    def __init__(self, expected: dict[str, Tensor], prefix: str) -> None:
        self.expected, self.prefix, self.worst = expected, prefix, 0.0

    def __call__(self, ours: Tensor, key: str) -> None:
        theirs = self.expected[self.prefix + key]
        torch.testing.assert_close(
            ours.float(), theirs, atol=ATOL, rtol=0, msg=lambda m: f'{self.prefix}{key}: {m}'
        )
        self.worst = max(self.worst, float((ours - theirs).abs().max()))

    def has(self, key: str) -> bool:
        return self.prefix + key in self.expected


def _run_and_compare(model: Mobius, image: Tensor, prompt: dict, check: _Check) -> None:
    """Every boundary of our model against GLEE's, for one prompt."""
    referring = prompt['task'] == 'grounding'
    phrases = [prompt['expression']] if referring else prompt['names']
    with torch.no_grad():
        features = model.backbone(image)
        if check.has('backbone.4'):
            for stride in STRIDES:
                check(features[stride], f'backbone.{stride}')
        text = model.encode_text(phrases)
        tokens, mask, class_embed = model.text_inputs(text, 1, referring=referring)
        check(model.text_proj(tokens), 'text.fusion_tokens')
        state = model.encode(image, tokens, mask, class_embed)
        if referring:
            check(state.class_embed_proj[:, 0], 'text.grounding_class')
            check(state.text_tokens.transpose(0, 1), 'text.grounding_tokens')
        else:
            check(state.class_embed_proj[0], 'text.class_embeddings')
        # Memory: GLEE's four levels, coarsest first (its decoder reverses its encoder's list).
        start = 0
        for (h, w), level in zip(state.memory_shapes, (3, 2, 1, 0)):
            chunk = state.memory[:, start : start + h * w].transpose(1, 2).reshape(1, -1, h, w)
            check(chunk, f'encoder.level{level}')
            start += h * w
        if check.has('encoder.mask_features'):
            check(state.mask_features, 'encoder.mask_features')
        check(state.queries, 'select.queries')
        check(state.reference_boxes, 'select.reference')
        check(state.proposals.logits, 'proposals.pred_logits')
        check(state.proposals.boxes, 'proposals.pred_boxes')
        # The whole forward pass: every layer's logits and boxes, the last layer's masks.
        out = model(image, phrases, referring=referring)
    depth = len(out.layers)
    for layer, result in enumerate(out.layers):
        key = 'final' if layer == depth - 1 else f'aux{layer + 1}'
        check(result.logits, f'{key}.pred_logits')
        check(result.boxes, f'{key}.pred_boxes')
        torch.testing.assert_close(result.confidence, result.logits.sigmoid().amax(-1))
    check(out.layers[-1].masks, 'final.pred_masks')


@pytest.mark.parametrize('prompt', ['category', 'agnostic', 'referring'])
def test_converted_glee_matches_recorded_glee(recorded, prompt: str) -> None:
    model, tensors, meta = recorded
    expected = dict(tensors)
    # The trunk is recorded once, with the category prompt.
    for stride in STRIDES:
        expected[f'{prompt}.backbone.{stride}'] = tensors[f'category.backbone.{stride}']
    check = _Check(expected, f'{prompt}.')
    _run_and_compare(model, tensors['input.image'], meta['prompts'][prompt], check)
    assert check.worst < ATOL


def test_recorded_inputs_are_what_the_model_sees(recorded) -> None:
    _, tensors, meta = recorded
    assert tuple(tensors['input.image'].shape[-2:]) == tuple(meta['image_size'])
    assert meta['prompts']['agnostic']['names'] == ['object']


LIVE = {
    'category': {'task': 'coco', 'names': ['a cup of coffee', 'laptop', 'cat']},
    'agnostic': {'task': 'coco', 'names': ['object']},
    'referring': {'task': 'grounding', 'expression': 'the small white mug next to the keyboard'},
}


@pytest.mark.skipif(glee_src() is None, reason='GLEE source tree not present')
@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('prompt', ['category', 'agnostic', 'referring'])
def test_converted_glee_matches_live_glee(prompt: str, variant: str) -> None:
    from scripts.glee_record import _run
    from scripts.glee_reference import build_reference, integer_buffers, state_dict_manifest

    glee, _ = build_reference(variant, reduced=True, seed=3)
    manifest = state_dict_manifest(glee)
    buffers = integer_buffers(glee)  # as GLEE's code computes them
    ours = _convert(manifest, 3, variant, buffers)
    # A real photo, normalised and padded as GLEE's app does (RGB, mean/std, multiple of 32).
    from skimage import data

    photo = torch.from_numpy(data.coffee()[:384:4, :512:4].copy()).permute(2, 0, 1).float()
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    image = ((photo - mean) / std)[None]
    recorded = {f'{prompt}.{k}': v for k, v in _run(glee, image, LIVE[prompt]).items()}
    check = _Check(recorded, f'{prompt}.')
    _run_and_compare(ours, image, LIVE[prompt], check)
