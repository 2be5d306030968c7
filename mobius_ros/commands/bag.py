"""`mobius bag IN OUT --image-topic T`: segment a rosbag2 recording offline into a new bag."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected HxW such as 384x512, got {text!r}') from error
    return height, width


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('input', type=Path, help='rosbag2 directory (mcap or sqlite3)')
    parser.add_argument('output', type=Path, help='new bag directory (must not exist)')
    parser.add_argument('--image-topic', required=True, help='Image or CompressedImage topic')
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        '--vocabulary', nargs='+', metavar='PHRASE', help="class phrases (default: the model's)"
    )
    what.add_argument('--agnostic', action='store_true', help="category-agnostic ('object')")
    what.add_argument('--expression', help='a referring expression: one best instance per frame')
    parser.add_argument('--checkpoint', help='model checkpoint (default: the embedded demo model)')
    parser.add_argument('--backend', default='onnxruntime', choices=['torch', 'onnxruntime',
                                                                     'tensorrt'])  # fmt: skip
    parser.add_argument('--input-size', type=_size, default=(384, 512), metavar='HxW')
    parser.add_argument('--score-threshold', type=float, default=0.3)
    parser.add_argument('--max-detections', type=int, default=100)
    parser.add_argument('--engine-dir', default='~/.cache/mobius_ros/engines')
    parser.add_argument('--cache-dir', default='~/.cache/mobius_ros/text', help='text cache')
    parser.add_argument('--namespace', default='/mobius', help='prefix of the output topics')
    parser.add_argument('--storage', choices=['mcap', 'sqlite3'], help='default: as the input')
    parser.add_argument('--masks', action='store_true', help='add per-instance cropped masks')
    parser.add_argument('--debug-image', action='store_true', help='add an overlay topic')
    parser.add_argument('--max-frames', type=int)
    parser.add_argument('--overwrite', action='store_true')
    parser.add_argument('--no-progress', action='store_true')


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mobius_ros.ros.bag import BagError, process_bag
    from mobius_ros.runtime.result import Prediction
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig, SegmenterError

    config = SegmenterConfig(
        checkpoint=args.checkpoint,
        backend=args.backend,
        engine_dir=args.engine_dir,
        cache_dir=args.cache_dir,
        input_size=args.input_size,
        score_threshold=args.score_threshold,
        max_detections=args.max_detections,
    )
    try:
        with Segmenter(config) as segmenter:
            if args.agnostic:
                segmenter.set_agnostic()
            elif args.vocabulary:
                segmenter.set_vocabulary(args.vocabulary)

            def segment(rgb: np.ndarray) -> Prediction:
                return segmenter.segment(rgb, expression=args.expression)

            summary = process_bag(
                args.input, args.output, segment,
                image_topic=args.image_topic, namespace=args.namespace, storage=args.storage,
                with_masks=args.masks, debug_image=args.debug_image, max_frames=args.max_frames,
                overwrite=args.overwrite, progress=not args.no_progress,
            )  # fmt: skip
    except (BagError, SegmenterError) as error:
        print(f'mobius bag: {error}', file=sys.stderr)
        return 2
    for line in summary.errors[:10]:
        print(f'skipped {line}', file=sys.stderr)
    print(
        f'wrote {summary.output} ({summary.storage}): {summary.frames} frames,'
        f' {summary.instances} instances, {summary.skipped} skipped,'
        f' {summary.frames / max(summary.seconds, 1e-9):.1f} frames/s'
    )
    return 0
