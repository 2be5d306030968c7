"""Reproduce the paper's FLOPs tables (Tab. 10, 11, 12 and the pruned decoder of Tab. 14/15).

    .venv/bin/python -m bench.flops_table            # writes bench/results/flops.{json,md}

Every number is multiply-accumulates in G (fvcore convention, see docs/flops.md), counted with
`mobius_ros.model.flops` on random-init models (weights do not change MACs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, package_versions

# Tab. 11: vision encoder alone at 800 short side (G), our backbone names.
TAB11 = {
    'mobilenetv4_conv_small': 3.0,
    'mobilenetv4_conv_medium': 15.0,
    'mobilenetv4_conv_large': 38.0,
    'mobilenetv4_hybrid_medium': 17.0,
    'mobilenetv4_hybrid_large': 44.0,
    'fastervit-0': 66.0,
    'fastervit-1': 105.0,
    'fastervit-2': 170.0,
    'fastervit-3': 358.0,
}
TAB11_SIZES = ((800, 800), (800, 1088), (800, 1344))

# (variant, size, decoder layers) -> paper targets (G) per component; 'pixel decoder + fusion'
# is Tab. 12's "w/o" column, which already includes fusion (DESIGN 4.1).
MODEL_TARGETS: list[tuple[str, tuple[int, int], int, dict[str, float]]] = [
    (
        'MOBIUS-R50',
        (800, 800),
        9,
        {
            'vision encoder': 52.4,
            'pixel decoder': 61.4,
            'fusion': 5.6,
            'transformer decoder': 10.0,
            'total': 129.8,
        },
    ),
    (
        'GLEE-R50',
        (800, 800),
        9,
        {
            'vision encoder': 52.4,
            'pixel decoder': 138.0,
            'fusion': 28.2,
            'transformer decoder': 20.1,
            'total': 238.9,
        },
    ),
    (
        'GLEE-R50',
        (384, 512),
        9,
        {
            'vision encoder': 16.1,
            'pixel decoder + fusion': 50.0,
            'transformer decoder': 9.9,
        },
    ),
    (
        'MOBIUS-0',
        (384, 512),
        6,
        {
            'vision encoder': 16.7,
            'pixel decoder + fusion': 18.6,
            'transformer decoder': 4.9,
        },
    ),
    (
        'MOBIUS-1',
        (384, 512),
        6,
        {
            'vision encoder': 29.0,
            'pixel decoder + fusion': 18.7,
            'transformer decoder': 4.9,
        },
    ),
    (
        'MOBIUS-2',
        (384, 512),
        6,
        {
            'vision encoder': 43.1,
            'pixel decoder + fusion': 19.7,
            'transformer decoder': 4.9,
        },
    ),
    (
        'MOBIUS-3',
        (384, 512),
        6,
        {
            'vision encoder': 90.5,
            'pixel decoder + fusion': 19.8,
            'transformer decoder': 4.9,
        },
    ),
]
TEXT_ENCODER_TARGET = 239.0  # Tab. 12, CLIP text tower for the 80 COCO names
PRUNED = [('MOBIUS-0', (384, 512), 6), ('MOBIUS-R50', (800, 800), 6)]


def encoder_macs(name: str, size: tuple[int, int], *, fused_attention: bool) -> float:
    """G MACs of a backbone (`model.backbone`'s builder) at `size`, counted shape-only."""
    import torch

    from mobius_ros.model.backbone import build_backbone
    from mobius_ros.model.flops import count_macs, giga

    # FasterViT calls .item() while building, so build on the CPU and move to meta after.
    backbone = build_backbone(name, image_size=size).eval().to('meta')
    images = torch.empty(1, 3, *size, device='meta')
    return giga(count_macs(lambda: backbone(images), fused_attention=fused_attention).total)


def tab11() -> list[dict[str, Any]]:
    rows = []
    for name, target in TAB11.items():
        row: dict[str, Any] = {'encoder': name, 'paper': target}
        for size in TAB11_SIZES:
            key = f'{size[0]}x{size[1]}'
            row[key] = encoder_macs(name, size, fused_attention=True)
            row[key + ' fvcore'] = encoder_macs(name, size, fused_attention=False)
        rows.append(row)
        print(f'tab11 {name}: {row}', flush=True)
    return rows


def models(pruned: Sequence[tuple[str, tuple[int, int], int]]) -> list[dict[str, Any]]:
    from mobius_ros.commands.flops import FlopsRequest, count_request

    rows = []
    for variant, size, layers, targets in MODEL_TARGETS:
        row = count_request(FlopsRequest(variant, size, 80, layers))
        got = dict(row['components'])
        got['pixel decoder + fusion'] = got['pixel decoder'] + got['fusion']
        row['paper'] = targets
        row['relative_error'] = {k: got[k] / v - 1 for k, v in targets.items()}
        rows.append(row)
        print(f'{variant} {size} L={layers}: {row["relative_error"]}', flush=True)
    for variant, size, layers in pruned:
        row = count_request(FlopsRequest(variant, size, 80, layers), pruned=True)
        rows.append({**row, 'paper': {}, 'relative_error': {}})
        print(f'{variant} {size} pruned: {row["pruned"]}', flush=True)
    return rows


def markdown(tab11_rows: list[dict[str, Any]], model_rows: list[dict[str, Any]]) -> str:
    sizes = [f'{h}x{w}' for h, w in TAB11_SIZES]
    lines = [
        '### Tab. 11: vision encoders at 800 short side (G MACs; "fvcore" = fused attention'
        ' not counted)',
        '',
        '| encoder | paper | ' + ' | '.join(f'{s} | {s} fvcore' for s in sizes) + ' |',
        '| --- | --- |' + ' --- | --- |' * len(sizes),
    ]
    for r in tab11_rows:
        values = ' | '.join(f'{r[s]:.1f} | {r[s + " fvcore"]:.1f}' for s in sizes)
        lines.append(f'| {r["encoder"]} | {r["paper"]:.0f} | {values} |')
    lines += [
        '',
        '### Tab. 10 / Tab. 12: components (G MACs, ours vs paper)',
        '',
        '| model | size | L | vision enc. | pixel dec. | fusion | pix. dec. + fusion | decoder'
        ' | total | text (77 tok.) |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for r in model_rows:
        if 'pruned' in r:
            continue
        c, p = r['components'], r['paper']

        def cell(key: str, value: float, p: dict[str, float] = p) -> str:
            return f'{value:.1f} ({p[key]:g})' if key in p else f'{value:.1f}'

        lines.append(
            f'| {r["variant"]} | {r["size"][0]}x{r["size"][1]} | {r["layers"]} | '
            f'{cell("vision encoder", c["vision encoder"])} | '
            f'{cell("pixel decoder", c["pixel decoder"])} | {cell("fusion", c["fusion"])} | '
            f'{cell("pixel decoder + fusion", c["pixel decoder"] + c["fusion"])} | '
            f'{cell("transformer decoder", c["transformer decoder"])} | '
            f'{cell("total", c["total"])} | {r["text_encoder_clip77"]:.1f} '
            f'({TEXT_ENCODER_TARGET:g}) |'
        )
    lines += ['', '### Pruned decoder (Tab. 14 defaults: sigmoid, 0.05..0.2, min_keep 100)', '']
    lines += ['| model | size | L | decoder unpruned | decoder pruned | queries kept per layer |']
    lines += ['| --- | --- | --- | --- | --- | --- |']
    for r in model_rows:
        if 'pruned' in r:
            p = r['pruned']
            lines.append(
                f'| {r["variant"]} | {r["size"][0]}x{r["size"][1]} | {r["layers"]} | '
                f'{p["decoder_unpruned"]:.2f} | {p["decoder"]:.2f} | {p["queries_per_layer"]} |'
            )
    return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', type=Path, default=RESULTS_DIR)
    parser.add_argument('--no-pruned', action='store_true', help='skip the real pruned passes')
    args = parser.parse_args(argv)
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    start = time.time()
    tab11_rows = tab11()
    model_rows = models([] if args.no_pruned else PRUNED)
    payload = {
        'unit': 'G multiply-accumulates (fvcore convention)',
        'tab11_encoders': tab11_rows,
        'models': model_rows,
        'text_encoder_paper': TEXT_ENCODER_TARGET,
        'packages': package_versions(),
        'seconds': round(time.time() - start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'flops.json').write_text(json.dumps(payload, indent=2, sort_keys=True) + '\n')
    (args.out / 'flops.md').write_text(markdown(tab11_rows, model_rows))
    print(f'wrote {args.out / "flops.json"} and flops.md in {payload["seconds"]} s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
