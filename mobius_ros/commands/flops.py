"""`mobius flops`: per-component MACs of a variant, the paper's Tab. 10 / Tab. 12 breakdown.

    mobius flops --variant MOBIUS-R50 --size 800x800 --classes 80 --layers 9 --baseline glee

Counts are multiply-accumulates ("FLOPs" in the paper, fvcore style) of one frame, text encoder
excluded from the total and shown separately. The unpruned count runs shape-only on the `meta`
device; `--pruned` adds a real forward pass on a real photo with Tab. 14's pruning defaults.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINES = {'glee': 'GLEE-R50'}


@dataclass(frozen=True)
class FlopsRequest:
    """What to count: a variant at an input size with a vocabulary of the first K COCO names."""

    variant: str
    size: tuple[int, int]
    classes: int = 80
    layers: int | None = None


def parse_size(text: str) -> tuple[int, int]:
    """'384x512' -> (384, 512) as (H, W); both must be multiples of 32."""
    try:
        height, width = (int(part) for part in text.lower().split('x'))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'size must look like 384x512, got {text!r}') from exc
    if height % 32 or width % 32 or height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f'H and W must be positive multiples of 32: {text!r}')
    return height, width


def vocabulary(classes: int) -> list[str]:
    """The first `classes` COCO names (cycled with a suffix beyond 80)."""
    from mobius_ros.ops.coco_classes import COCO_CLASSES

    names = list(COCO_CLASSES)
    return [names[i % 80] + (f' {i // 80}' if i >= 80 else '') for i in range(classes)]


def build_for_count(request: FlopsRequest) -> Any:
    """Random-init model (weights never matter for MACs), in eval mode, on the CPU."""
    from mobius_ros.model.variants import build_model

    overrides: dict[str, Any] = {'backbone': {'image_size': request.size}}
    if request.layers is not None:
        overrides['decoder'] = {'num_layers': request.layers}
    return build_model(request.variant, **overrides).eval()


def count_request(request: FlopsRequest, *, pruned: bool = False) -> dict[str, Any]:
    """The table row(s) of one request as plain data (G MACs)."""
    import torch

    from mobius_ros.model.flops import (
        clip_text_tower_macs,
        count_macs,
        count_model_stages,
        giga,
    )

    model = build_for_count(request)
    phrases = vocabulary(request.classes)
    text_report = count_macs(lambda: model.encode_text(phrases))
    with torch.no_grad():
        features = model.encode_text(phrases)
    text_tokens = int(features.mask.sum())
    row: dict[str, Any] = {
        'variant': request.variant,
        'size': list(request.size),
        'classes': request.classes,
        'text_tokens': text_tokens,
        'layers': request.layers or model.num_layers,
        'text_encoder_ours': giga(text_report.total),
        'text_encoder_clip77': giga(clip_text_tower_macs(request.classes)),
    }
    if pruned:
        row['pruned'] = count_pruned(model, request, features)
    meta = model.to('meta')
    stages = count_model_stages(
        meta,
        size=request.size,
        text_tokens=text_tokens,
        classes=request.classes,
        layers=request.layers,
    )
    row['components'] = stages.giga()
    row['dead'] = {k: giga(v) for k, v in stages.dead.items()}
    return row


def count_pruned(model: Any, request: FlopsRequest, features: Any) -> dict[str, Any]:
    """Decoder MACs of a real pruned forward pass (Tab. 14 defaults) on a real photo.

    The photo is scikit-image's `coffee` (a 400x600 camera image), letterboxed to the size.
    The model is random-init, but its class head starts at the focal-loss prior (confidence
    around 0.01), so the 0.05 threshold of layer 0 already prunes to `min_keep` - the regime of a
    trained model on the many background queries. Reported with the survivors per layer.
    """
    import torch
    from skimage import data

    from mobius_ros.model.flops import DECODER, count_model_forward, giga
    from mobius_ros.model.pruning import PruningConfig
    from mobius_ros.ops.image import letterbox, normalize_image

    canvas, _, _ = letterbox(data.coffee(), request.size)
    images = torch.from_numpy(normalize_image(canvas))[None]
    config = PruningConfig(trajectory='sigmoid', lower=0.05, upper=0.2, min_keep=100)
    with torch.no_grad():
        pruned = count_model_forward(model, images, features, pruning=config)
        full = count_model_forward(model, images, features)
    return {
        'config': {'trajectory': 'sigmoid', 'lower': 0.05, 'upper': 0.2, 'min_keep': 100},
        'image': 'skimage.data.coffee letterboxed',
        'queries_per_layer': list(pruned.queries_per_layer),
        'decoder': giga(pruned.components[DECODER]),
        'decoder_unpruned': giga(full.components[DECODER]),
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one column per counted model, components in G MACs."""
    from mobius_ros.model.flops import COMPONENTS, TEXT_PROJECTION

    header = ['component (G MACs)'] + [
        f'{r["variant"]} {r["size"][0]}x{r["size"][1]} L={r["layers"]}' for r in rows
    ]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
    labels = [*COMPONENTS, TEXT_PROJECTION, 'total']
    for label in labels:
        values = [f'{r["components"].get(label, 0.0):.2f}' for r in rows]
        lines.append(f'| {label} | ' + ' | '.join(values) + ' |')
    lines.append(
        '| pixel decoder + fusion | '
        + ' | '.join(
            f'{r["components"]["pixel decoder"] + r["components"]["fusion"]:.2f}' for r in rows
        )
        + ' |'
    )
    lines.append(
        '| text encoder, CLIP 77-token context (excluded) | '
        + ' | '.join(f'{r["text_encoder_clip77"]:.1f}' for r in rows)
        + ' |'
    )
    lines.append(
        '| text encoder, ours: padding cut (excluded) | '
        + ' | '.join(f'{r["text_encoder_ours"]:.1f}' for r in rows)
        + ' |'
    )
    for r in rows:
        if 'pruned' in r:
            p = r['pruned']
            lines.append(
                f'\n{r["variant"]} pruned (sigmoid 0.05-0.2, min_keep 100): decoder '
                f'{p["decoder"]:.2f} G vs {p["decoder_unpruned"]:.2f} G unpruned; queries kept '
                f'after each layer {p["queries_per_layer"]}'
            )
    return '\n'.join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--variant', default='MOBIUS-R50', help='a name from model.variants')
    parser.add_argument('--size', type=parse_size, default=(800, 800), help='HxW, e.g. 384x512')
    parser.add_argument('--classes', type=int, default=80, help='vocabulary of K COCO names')
    parser.add_argument('--layers', type=int, default=None, help='decoder layers (override)')
    parser.add_argument('--baseline', choices=sorted(BASELINES), help='also count this baseline')
    parser.add_argument('--pruned', action='store_true', help='add a real pruned forward pass')
    parser.add_argument('--json', type=Path, help='write the rows as JSON here')
    parser.add_argument('--markdown', type=Path, help='write the table as Markdown here')


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    if args.classes < 1:
        raise SystemExit('--classes must be >= 1')
    requests = [FlopsRequest(args.variant, args.size, args.classes, args.layers)]
    if args.baseline:
        requests.append(FlopsRequest(BASELINES[args.baseline], args.size, args.classes))
    rows = [count_request(r, pruned=args.pruned and i == 0) for i, r in enumerate(requests)]
    table = format_rows(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + '\n')
    if args.markdown:
        args.markdown.write_text(table + '\n')
    return 0
