"""`mobius segment IMAGE|DIR`: segment images with a vocabulary, 'object', or an expression.

Writes one overlay PNG per image and `results.json` (COCO RLE masks, boxes in original pixels,
scores, phrases, timings and queries kept per decoder layer) into `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mobius_ros.common.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from mobius_ros.runtime.result import Prediction


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('input', type=Path, help='an image or a folder of images')
    task = parser.add_mutually_exclusive_group()
    task.add_argument('--vocabulary', help='comma-separated class phrases, e.g. "cup,red mug"')
    task.add_argument('--agnostic', action='store_true', help='segment every object')
    task.add_argument('--expression', help='a referring expression (one best instance)')
    parser.add_argument('--checkpoint', help='checkpoint or export folder (default: demo model)')
    parser.add_argument(
        '--backend', choices=('torch', 'onnxruntime', 'tensorrt'), default='onnxruntime'
    )
    parser.add_argument('--budget-ms', type=float, help='latency budget per image')
    parser.add_argument('--out', type=Path, default=Path('mobius_out'), help='output folder')
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        default=(384, 512),
        metavar=('H', 'W'),
        help='letterbox canvas, multiples of 32',
    )
    parser.add_argument('--score-threshold', type=float, default=0.3)
    parser.add_argument('--max-detections', type=int, default=100)
    parser.add_argument('--engine-dir', default='~/.cache/mobius_ros/engines')
    parser.add_argument('--cache-dir', default='~/.cache/mobius_ros/text', help='text cache')
    parser.add_argument('--device', default='cpu')


def list_images(path: Path) -> list[Path]:
    """`path` itself, or the images directly inside the folder `path` (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


def run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from mobius_ros.common.errors import SegmenterError
    from mobius_ros.runtime.overlay import draw_prediction
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    images = list_images(args.input)
    if not args.input.exists() or not images:
        print(f'mobius segment: no images at {args.input}', file=sys.stderr)
        return 2
    try:
        config = SegmenterConfig(
            checkpoint=args.checkpoint,
            backend=args.backend,
            engine_dir=args.engine_dir,
            cache_dir=args.cache_dir,
            input_size=(int(args.input_size[0]), int(args.input_size[1])),
            score_threshold=args.score_threshold,
            max_detections=args.max_detections,
            latency_budget_ms=args.budget_ms,
            device=args.device,
        )
    except ValueError as error:
        print(f'mobius segment: {error}', file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        with Segmenter(config) as segmenter:
            if args.vocabulary is not None:
                segmenter.set_vocabulary([p for p in args.vocabulary.split(',') if p.strip()])
            for path in images:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    print(f'skipping {path}: not a readable image', file=sys.stderr)
                    continue
                rgb = np.ascontiguousarray(bgr[..., ::-1])
                prediction = segmenter.segment(
                    rgb, expression=args.expression, agnostic=args.agnostic
                )
                overlay = draw_prediction(rgb, prediction)
                cv2.imwrite(str(args.out / f'{path.stem}.png'), overlay[..., ::-1])
                results.append(_record(path, prediction))
                print(
                    f'{path.name}: {len(prediction)} instances'
                    f' ({", ".join(prediction.labels[:5])}) in'
                    f' {prediction.timings_ms["total"]:.1f} ms, queries {prediction.queries_kept}'
                )
    except SegmenterError as error:
        print(f'mobius segment: {error}', file=sys.stderr)
        return 1
    (args.out / 'results.json').write_text(json.dumps(results, indent=1) + '\n')
    print(f'wrote {len(results)} overlays and results.json to {args.out}')
    return 0


def _record(path: Path, prediction: Prediction) -> dict[str, object]:
    """One image's JSON entry; boxes as COCO [x, y, w, h] in original pixels."""
    from mobius_ros.ops.masks import rle_encode

    instances = []
    for n in range(len(prediction)):
        x1, y1, x2, y2 = (float(v) for v in prediction.boxes[n])
        instances.append(
            {
                'label': prediction.labels[n],
                'class_id': int(prediction.class_ids[n]),
                'score': round(float(prediction.scores[n]), 5),
                'bbox': [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                'segmentation': rle_encode(prediction.masks[n]),
            }
        )
    return {
        'file': str(path),
        'image_size': list(prediction.image_size),
        'task': prediction.task.value,
        'phrases': list(prediction.phrases),
        'vocabulary_version': prediction.vocabulary_version,
        'queries_kept': list(prediction.queries_kept),
        'timings_ms': {k: round(v, 3) for k, v in prediction.timings_ms.items()},
        'budget': dict(prediction.budget),
        'instances': instances,
    }
