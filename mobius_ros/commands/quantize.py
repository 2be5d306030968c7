"""`mobius quantize EXPORT_DIR --images FOLDER -o OUT`: an int8 copy of an export folder.

    mobius export --checkpoint model.safetensors --out model_onnx --input-size 384 512
    mobius quantize model_onnx --images calibration/ --vocabulary "cup,laptop" -o model_int8
    mobius eval --export model_int8        # what int8 costs in accuracy
    mobius segment photo.jpg --checkpoint model_int8

Calibration runs the float graphs on the images exactly as the runtime does and quantises each
graph statically (see `mobius_ros.export.quantize`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('export_dir', type=Path, help='export folder (`mobius export --out`)')
    parser.add_argument('-o', '--out', type=Path, required=True, help='int8 export folder')
    parser.add_argument('--images', type=Path, required=True, help='calibration image folder')
    parser.add_argument('--num', type=int, default=32, help='calibration images (default 32)')
    parser.add_argument(
        '--vocabulary',
        default='object',
        help='comma-separated phrases to calibrate with (default: the agnostic prompt)',
    )
    parser.add_argument('--expression', help='a referring expression for the referring graphs')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')


def run(args: argparse.Namespace) -> int:
    from mobius_ros.common.errors import ModelLoadError
    from mobius_ros.export.quantize import check_paths, load_images, quantize_export

    phrases = [p.strip() for p in args.vocabulary.split(',') if p.strip()]
    try:
        check_paths(args.export_dir, args.out, overwrite=args.overwrite)
        if args.num < 1:
            raise ValueError('--num must be at least 1')
        if not phrases:
            raise ValueError('--vocabulary has no phrases')
        images, unreadable = load_images(args.images, args.num)
        if not images:
            raise ValueError(f'none of the images in {args.images} could be read')
        meta = quantize_export(
            args.export_dir,
            args.out,
            images,
            phrases,
            expression=args.expression,
            overwrite=args.overwrite,
        )
    except (ModelLoadError, ValueError, FileNotFoundError) as error:
        print(f'mobius quantize: error: {error}', file=sys.stderr)
        return 2
    skipped = f', {unreadable} unreadable skipped' if unreadable else ''
    print(
        f'{args.export_dir} -> {args.out}: int8, calibrated on {len(images)} images{skipped}; '
        f'export key {meta["export_key"]}'
    )
    return 0
