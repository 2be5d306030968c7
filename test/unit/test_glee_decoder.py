"""DecoderConfig.style 'maskdino': our MaskDINODecoder and heads against GLEE-Lite's own.

Three comparisons, all with GLEE's weights mapped by `maskdino_decoder_from_glee`:
the recorded fixtures (test/fixtures/glee, no GLEE code needed), the live reduced oracle at
128 x 160 (skipped without the GLEE source tree), and Mobius end to end with the decoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mobius_ros.model.config import DecoderConfig, MobiusConfig
from mobius_ros.model.heads import RenormMaskHead, build_mask_head
from mobius_ros.model.maskdino import (
    MaskDINODecoder,
    maskdino_anchors,
    maskdino_decoder_from_glee,
)
from mobius_ros.model.mobius import Mobius
from mobius_ros.model.pruning import PruningConfig
from mobius_ros.model.transformer_decoder import QueryDecoder, build_query_decoder
from mobius_ros.model.variants import build_model
from scripts.glee_reference import glee_src, seeded_state

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'glee'
ATOL = 1e-4
LAYERS, QUERIES, FFN = 3, 20, 128  # scripts.glee_reference.REDUCED


def _config() -> MobiusConfig:
    return MobiusConfig(
        decoder=DecoderConfig(
            style='maskdino', num_layers=LAYERS, num_queries=QUERIES, ffn_dim=FFN
        )
    )


def _build(state: dict[str, Tensor]) -> tuple[MaskDINODecoder, RenormMaskHead]:
    """Our decoder and mask head of the reduced GLEE-Lite, loaded from a GLEE state dict."""
    config = _config()
    decoder = build_query_decoder(config.decoder, 256, (8, 16, 32, 64))
    mask_head = build_mask_head(config.decoder, 256)
    assert isinstance(decoder, MaskDINODecoder) and isinstance(mask_head, RenormMaskHead)
    taken: set[str] = set()

    def take(name: str) -> Tensor:
        taken.add(name)
        return state[name]

    mapped = maskdino_decoder_from_glee(take, config)
    decoder.load_state_dict({k[8:]: v for k, v in mapped.items() if k.startswith('decoder.')})
    mask_head.load_state_dict(
        {k[11:]: v for k, v in mapped.items() if k.startswith('mask_embed.')}
    )
    assert all(k.startswith(('decoder.', 'mask_embed.')) for k in mapped)
    # Everything of the predictor is used except the heads named unused in the report.
    left = {n for n in state if n.startswith('predictor.')} - taken
    unused = ('label_enc.', 'bdd_det.', 'bdd_inst.', 'confidence_score.', 'bbox_embed.')
    assert all(
        any(u in n for u in unused) or n.startswith('predictor.decoder.norm.') for n in left
    )
    return decoder.eval(), mask_head.eval()


def _memory(levels: list[Tensor]) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """GLEE's multi-scale features (finest first) flattened as its decoder does it."""
    order = range(len(levels) - 1, -1, -1)
    memory = torch.cat([levels[i].flatten(2).transpose(1, 2) for i in order], dim=1)
    return memory, tuple(tuple(levels[i].shape[-2:]) for i in order)


def _compare(
    decoder: MaskDINODecoder,
    mask_head: RenormMaskHead,
    levels: list[Tensor],
    class_embed: Tensor,
    expected: dict[str, Tensor],
    extra: dict[str, Tensor],
    mask_features: Tensor | None,
) -> float:
    """Run our decoder; assert every boundary matches GLEE's; return the max abs error."""
    memory, shapes = _memory(levels)
    worst = 0.0

    def check(ours: Tensor, key: str) -> None:
        nonlocal worst
        torch.testing.assert_close(ours, expected[key], atol=ATOL, rtol=0, msg=key)
        worst = max(worst, float((ours - expected[key]).abs().max()))

    with torch.no_grad():
        queries, boxes, logits, proposal_boxes, _ = decoder.select(memory, shapes, class_embed)
        check(queries, 'select.queries')
        check(boxes, 'select.reference')
        check(logits, 'proposals.pred_logits')
        check(proposal_boxes, 'proposals.pred_boxes')
        for layer in range(LAYERS):
            check(decoder.reference(layer, queries, boxes), f'decoder.reference{layer}')
            queries, boxes, logits, confidence = decoder.layer(
                layer, queries, boxes, memory, class_embed, shapes, **extra
            )
            check(decoder.norm(queries), f'decoder.hidden{layer}')
            # aux0 is GLEE's initial prediction (= the proposals); aux l+1 is layer l.
            key = 'final' if layer == LAYERS - 1 else f'aux{layer + 1}'
            check(boxes, f'{key}.pred_boxes')
            check(logits, f'{key}.pred_logits')
            torch.testing.assert_close(confidence, logits.sigmoid().amax(-1))
        if mask_features is not None:
            check(mask_head(queries, mask_features), 'final.pred_masks')
    return worst


def _fixture_case(tensors: dict[str, Tensor], prompt: str) -> tuple:
    p = f'{prompt}.'
    levels = [tensors[f'{p}encoder.level{i}'] for i in range(4)]
    expected = {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}
    if prompt == 'referring':
        class_embed = tensors[f'{p}text.grounding_class'][:, None]
        extra = {
            'extra_tokens': tensors[f'{p}text.grounding_tokens'].transpose(0, 1),
            'extra_mask': tensors[f'{p}text.grounding_nonzero_mask'] == 0,
        }
    else:
        class_embed, extra = tensors[f'{p}text.class_embeddings'][None], {}
    # Mask features are recorded for the category prompt only.
    mask_features = tensors.get(f'{p}encoder.mask_features')
    return levels, class_embed, expected, extra, mask_features


@pytest.mark.parametrize('prompt', ['category', 'agnostic', 'referring'])
def test_matches_recorded_glee(prompt: str) -> None:
    from safetensors.torch import load_file

    meta = json.loads((FIXTURES / 'reference.json').read_text())
    tensors = load_file(str(FIXTURES / 'reference.safetensors'))
    decoder, mask_head = _build(seeded_state(meta['tensors'], meta['seed']))
    _compare(decoder, mask_head, *_fixture_case(tensors, prompt))


@pytest.fixture(scope='module')
def oracle():
    if glee_src() is None:
        pytest.skip('GLEE source tree not present')
    from scripts.glee_reference import build_reference

    model, _ = build_reference('GLEE-Lite', reduced=True, seed=0)
    return model


def _run_oracle(model, image: Tensor, prompt: dict) -> tuple:
    """GLEE forward with hooks on its predictor -> the inputs and outputs of our boundary."""
    got: dict = {}
    hooks = [
        model.predictor.register_forward_hook(
            lambda m, a, kw, out: got.update(args=a, kwargs=kw, out=out[0]), with_kwargs=True
        ),
        model.predictor.decoder.register_forward_pre_hook(
            lambda m, a, kw: got.__setitem__('decoder_in', kw), with_kwargs=True
        ),
        model.predictor.decoder.register_forward_hook(
            lambda m, a, kw, out: got.__setitem__('decoder_out', out), with_kwargs=True
        ),
        model.text_encoder.register_forward_hook(
            lambda m, a, out: got.__setitem__('text', (a, out['last_hidden_state']))
        ),
    ]
    try:
        with torch.no_grad():
            if 'expression' in prompt:
                model(
                    image,
                    {'grounding': [prompt['expression']]},
                    task='grounding',
                    batch_name_list=[],
                    is_train=False,
                )
            else:
                model(
                    image, [], task=prompt['task'], batch_name_list=prompt['names'], is_train=False
                )
    finally:
        for hook in hooks:
            hook.remove()
    levels, mask_features = list(got['args'][0]), got['args'][1]
    extra, out = got['kwargs']['extra'], got['out']
    expected = {
        'select.queries': got['decoder_in']['tgt'].transpose(0, 1),
        'select.reference': got['decoder_in']['refpoints_unsigmoid'].transpose(0, 1).sigmoid(),
        'proposals.pred_logits': out['interm_outputs']['pred_logits'],
        'proposals.pred_boxes': out['interm_outputs']['pred_boxes'],
    }
    hidden, references = got['decoder_out'][0], got['decoder_out'][1]
    for layer in range(LAYERS):
        expected[f'decoder.hidden{layer}'] = hidden[layer]
        expected[f'decoder.reference{layer}'] = references[layer]
    for index, aux in enumerate(out['aux_outputs']):
        for key in ('pred_logits', 'pred_boxes'):
            expected[f'aux{index}.{key}'] = aux[key]
    for key in ('pred_logits', 'pred_boxes', 'pred_masks'):
        expected[f'final.{key}'] = out[key]
    if 'expression' in prompt:
        class_embed = extra['grounding_class'][:, None]
        tokens = {
            'extra_tokens': extra['grounding_tokens'].transpose(0, 1),
            'extra_mask': ~extra['grounding_nonzero_mask'],
        }
    else:
        class_embed, tokens = extra['class_embeddings'][None], {}
    return levels, class_embed, expected, tokens, mask_features, got['text'], extra


PROMPTS = {
    'category': {'task': 'coco', 'names': ['person', 'red car', 'dog, sitting']},
    # GLEE's category-agnostic task: the single category 'object' (GLEE.py, task 'sa1b').
    'agnostic': {'task': 'sa1b', 'names': ['object']},
    'referring': {'expression': 'the man on the left'},
}


@pytest.mark.parametrize('prompt', sorted(PROMPTS))
def test_matches_live_glee(oracle, prompt: str) -> None:
    image = torch.randn((1, 3, 128, 160), generator=torch.Generator().manual_seed(0))
    *case, text, extra = _run_oracle(oracle, image, PROMPTS[prompt])
    decoder, mask_head = _build(oracle.state_dict())
    _compare(decoder, mask_head, *case)
    # Our Mobius.text_proj: nn.Linear(width, C) with weight lang_projection^T and bias 0,
    # applied to the pooled tokens, gives GLEE's mean of projected tokens.
    (_, attention), tokens = text
    proj = torch.nn.Linear(tokens.shape[-1], 256)
    with torch.no_grad():
        proj.weight.copy_(oracle.lang_projection.t())
        proj.bias.zero_()
        valid = attention.bool()[..., None]
        pooled = (tokens * valid).sum(1) / valid.sum(1)
        key = 'grounding_class' if 'expression' in PROMPTS[prompt] else 'class_embeddings'
        torch.testing.assert_close(proj(pooled), extra[key], atol=1e-5, rtol=0)


def test_anchors_follow_maskdino() -> None:
    anchors, valid = maskdino_anchors(((1, 2), (2, 3)), torch.device('cpu'))
    expected = torch.tensor(
        [[0.25, 0.5, 0.05, 0.05], [0.75, 0.5, 0.05, 0.05]]
        + [[(x + 0.5) / 3, (y + 0.5) / 2, 0.1, 0.1] for y in range(2) for x in range(3)]
    )
    torch.testing.assert_close(anchors, expected)
    assert valid.all()
    _, valid = maskdino_anchors(((64, 64),), torch.device('cpu'))
    assert not valid[0] and valid[65]  # centre 0.5 / 64 < 0.01 leaves the image


def test_mobius_runs_a_maskdino_decoder_end_to_end() -> None:
    torch.manual_seed(0)
    base = build_model(
        'MOBIUS-tiny',
        pixel_decoder={'encoder_strides': (8, 16, 32, 64)},
        decoder={'multi_scale': True},
    )
    config = DecoderConfig(
        style='maskdino', num_queries=12, num_layers=2, num_heads=4, num_points=2, ffn_dim=64
    )
    strides = base.pixel_decoder.memory_strides
    decoder = build_query_decoder(config, 32, strides)
    model = Mobius(
        base.backbone, base.text_encoder, base.pixel_decoder, decoder, build_mask_head(config, 32)
    ).eval()
    images = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        vocab = model(images, ['cat', 'dog', 'traffic light'])
        referring = model(images, ['the red cup', 'dog'], referring=True)
        pruned = model(images[:1], ['cat', 'dog'], pruning=PruningConfig(min_keep=3))
    assert vocab.final.logits.shape == (2, 12, 3) and vocab.final.masks.shape == (2, 12, 24, 32)
    assert referring.final.logits.shape == (2, 12, 1)
    for out in (vocab, referring, pruned):
        for layer in out.layers:
            assert torch.isfinite(layer.logits).all() and torch.isfinite(layer.boxes).all()
            torch.testing.assert_close(layer.confidence, layer.logits.sigmoid().amax(-1))
    assert len(pruned.layers) == 2


def test_mobius_style_is_unchanged() -> None:
    config = DecoderConfig(num_queries=7, num_layers=2, num_heads=4, num_points=2, ffn_dim=64)
    decoder = build_query_decoder(config, 32, (16,))
    assert (
        type(decoder) is QueryDecoder and type(build_mask_head(config, 32)).__name__ == 'MaskHead'
    )
    with pytest.raises(ValueError, match='style'):
        build_query_decoder(DecoderConfig(style='detr'), 32, (16,))
