"""Record GLEE's own tensors at every boundary, for the parity test without GLEE's code.

    python -m scripts.glee_record [--variant GLEE-Plus]   # writes test/fixtures/glee/
    python -m scripts.glee_reference record [--variant ...]  # the same

Builds the reduced GLEE-Lite or GLEE-Plus (`scripts.glee_reference.REDUCED`, `REDUCED_SWIN`)
with `seeded_state(manifest, SEED)` weights, runs it on a seeded image for a category list,
the class-agnostic prompt (GLEE's own: the single category 'object') and a referring
expression, and stores what crosses each boundary: trunk features, the text embeddings and
fusion tokens, the encoder's multi-scale output and mask features, the selected queries and
reference boxes, every decoder layer's hidden state, logits, boxes and masks, and the final
predictions. The weights are not stored: the test regenerates them from the committed manifest
and seed (GLEE-Plus's integer buffers, Swin's relative position indices, are stored as
`buffer.*`).
"""

from __future__ import annotations

import json
from pathlib import Path

from scripts.glee_reference import (
    REDUCED,
    REDUCED_SWIN,
    REDUCED_TEXT,
    REPO,
    build_reference,
    fixture_name,
    integer_buffers,
    seeded_state,
    state_dict_manifest,
)

FIXTURES = REPO / 'test' / 'fixtures' / 'glee'
SEED = 0
IMAGE_SIZE = (64, 96)
PROMPTS = {
    'category': {'task': 'coco', 'names': ['person', 'red car', 'dog, sitting', 'traffic light']},
    'agnostic': {'task': 'coco', 'names': ['object']},
    'referring': {'task': 'grounding', 'expression': 'the man in a blue shirt on the left'},
}


def _run(model, image, prompt: dict) -> dict:
    """One GLEE forward with hooks; returns {boundary: tensor}."""
    import torch

    got: dict = {}
    hooks = [
        model.backbone.register_forward_hook(lambda m, a, out: got.__setitem__('backbone', out)),
        model.predictor.register_forward_hook(
            lambda m, a, kw, out: got.update(predictor_in=kw, predictor_out=out), with_kwargs=True
        ),
        model.predictor.decoder.register_forward_pre_hook(
            lambda m, a, kw: got.__setitem__('decoder_in', kw), with_kwargs=True
        ),
        model.predictor.decoder.register_forward_hook(
            lambda m, a, kw, out: got.__setitem__('decoder_out', out), with_kwargs=True
        ),
    ]
    pixel = model.pixel_decoder
    original = pixel.forward_features

    def forward_features(*args, **kwargs):
        # GLEE's fusion overwrites its text input in place: copy it first.
        fusion = kwargs.get('early_fusion')
        got['fusion_in'] = {k: v.clone() for k, v in fusion.items()}
        out = original(*args, **kwargs)
        got['pixel_out'] = out
        return out

    pixel.forward_features = forward_features
    try:
        with torch.no_grad():
            if prompt['task'] == 'grounding':
                result = model(
                    image,
                    {'grounding': [prompt['expression']]},
                    task='grounding',
                    batch_name_list=[],
                    is_train=False,
                )
            else:
                result = model(
                    image, [], task='coco', batch_name_list=prompt['names'], is_train=False
                )
    finally:
        del pixel.forward_features
        for hook in hooks:
            hook.remove()
    outputs = result[0][0]
    record = {}
    for stride, name in zip((4, 8, 16, 32), ('res2', 'res3', 'res4', 'res5')):
        record[f'backbone.{stride}'] = got['backbone'][name]
    fusion = got['fusion_in']
    record['text.fusion_tokens'] = fusion['hidden']
    record['text.fusion_mask'] = fusion['masks'].to(torch.uint8)
    for key, value in got['predictor_in']['extra'].items():
        if isinstance(value, torch.Tensor):
            record[f'text.{key}'] = value if value.is_floating_point() else value.to(torch.uint8)
    mask_features, _, multi_scale, _ = got['pixel_out']
    record['encoder.mask_features'] = mask_features
    for level, feature in enumerate(multi_scale):
        record[f'encoder.level{level}'] = feature
    decoder_in = got['decoder_in']
    record['select.queries'] = decoder_in['tgt'].transpose(0, 1)
    record['select.reference'] = decoder_in['refpoints_unsigmoid'].transpose(0, 1).sigmoid()
    # Batch-first: the decoder's hidden states after each layer, and its reference boxes
    # before the first layer and after each.
    hidden, references = got['decoder_out'][0], got['decoder_out'][1]
    for layer, state in enumerate(hidden):
        record[f'decoder.hidden{layer}'] = state
    for layer, reference in enumerate(references):
        record[f'decoder.reference{layer}'] = reference
    interm = outputs['interm_outputs']
    for key in ('pred_logits', 'pred_scores', 'pred_boxes'):
        record[f'proposals.{key}'] = interm[key]
    for index, aux in enumerate(outputs['aux_outputs']):
        for key in ('pred_logits', 'pred_scores', 'pred_boxes', 'pred_masks'):
            record[f'aux{index}.{key}'] = aux[key]
    for key in ('pred_logits', 'pred_scores', 'pred_boxes', 'pred_masks'):
        record[f'final.{key}'] = outputs[key]
    return record


def record(out: Path = FIXTURES, variant: str = 'GLEE-Lite') -> int:
    import torch
    from safetensors.torch import save_file

    model, _ = build_reference(variant, reduced=True, seed=SEED)
    manifest = state_dict_manifest(model)
    buffers = integer_buffers(model)
    floats = [e for e in manifest if e[0] not in buffers]
    model.load_state_dict({**seeded_state(floats, SEED), **buffers})
    generator = torch.Generator().manual_seed(SEED)
    image = torch.randn((1, 3, *IMAGE_SIZE), generator=generator)
    tensors = {'input.image': image}
    tensors.update({f'buffer.{k}': v.contiguous() for k, v in buffers.items()})
    for name, prompt in PROMPTS.items():
        for key, value in _run(model, image, prompt).items():
            # The trunk does not see the prompt: store it once.
            if key.startswith('backbone.') and name != 'category':
                continue
            # Mask features are 256 x H/4 x W/4: one prompt's copy keeps the fixtures small.
            if key == 'encoder.mask_features' and name != 'category':
                continue
            if value is None:  # GLEE leaves some heads out for some tasks
                print(f'{name}.{key}: None in GLEE, not recorded')
                continue
            tensors[f'{name}.{key}'] = value.detach().float().contiguous().clone()
    stem = out / fixture_name(variant)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(stem.with_suffix('.safetensors')))
    meta = {
        'source': 'GLEE commit 6f5a19d35b1f732715c8a33e091c6729367b75a5 (GLEE_Model, reduced)',
        'variant': variant,
        'recorded_by': 'python -m scripts.glee_record',
        'seed': SEED,
        'image_size': list(IMAGE_SIZE),
        'prompts': PROMPTS,
        'reduced_config': {**REDUCED, **(REDUCED_SWIN if variant == 'GLEE-Plus' else {})},
        'reduced_text_config': REDUCED_TEXT,
        'tensors': manifest,
    }
    stem.with_suffix('.json').write_text(json.dumps(meta, indent=1) + '\n')
    size = sum(stem.with_suffix(x).stat().st_size for x in ('.json', '.safetensors'))
    print(f'{stem}.*: {len(tensors)} tensors, {size / 1e6:.2f} MB')
    return 0


if __name__ == '__main__':
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--variant', default='GLEE-Lite', choices=('GLEE-Lite', 'GLEE-Plus'))
    raise SystemExit(record(variant=parser.parse_args().variant))
