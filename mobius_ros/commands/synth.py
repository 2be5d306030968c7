"""`mobius synth --out DIR --split train --num 500 --size 128 --seed 0`: synthetic scenes.

`--randomised` draws domain-randomised scenes, `--sizes 160 320 640` native mixed sizes.

Writes COCO instances JSON, RefCOCO-style referring JSON and PNG images (see
`mobius_ros/train/data/synthetic.py`); the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    try:
        values = [int(v) for v in text.lower().split('x')]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected N or HxW, got {text!r}') from error
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 32:
        raise argparse.ArgumentTypeError(f'expected N or HxW with sides >= 32, got {text!r}')
    return values[0], values[1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, required=True, help='output folder')
    parser.add_argument(
        '--split',
        nargs='+',
        default=['train'],
        choices=['train', 'val', 'test'],
        help='split(s); the test split holds the held-out synonyms and combinations',
    )
    parser.add_argument('--num', type=int, default=500, help='images per split')
    parser.add_argument('--size', type=_size, default=(128, 128), metavar='N|HxW')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-objects', type=int, default=6)
    parser.add_argument(
        '--background-photos',
        type=Path,
        default=None,
        metavar='DIR',
        help='folder of photos (e.g. <data-root>/coco128/train2017): half the scenes get a'
        ' random crop of one, flipped at random, as background',
    )
    parser.add_argument(
        '--colour-sampling',
        choices=['fixed', 'hsv'],
        default='fixed',
        help="'fixed': one RGB value per colour name (the default scenes); 'hsv': uniform over"
        ' the HSV region each name covers (COLOUR_REGIONS in mobius_ros/train/data/synthetic.py)',
    )
    parser.add_argument(
        '--randomised',
        action='store_true',
        help='domain-randomised scenes (SynthConfig.randomised: size, aspect, rotation, rounded'
        ' corners, outlines, truncation, anti-aliasing, shading, lighting, noise, blur, JPEG;'
        ' HSV colours)',
    )
    parser.add_argument(
        '--sizes',
        type=int,
        nargs='+',
        default=None,
        metavar='N',
        help='draw each image natively at one of these square sides (overrides --size)',
    )
    parser.add_argument(
        '--size-weights',
        type=float,
        nargs='+',
        default=None,
        metavar='W',
        help='relative weight of each of --sizes (default: uniform)',
    )


def _photos(folder: Path | None) -> tuple[str, ...]:
    if folder is None:
        return ()
    from mobius_ros.common.images import IMAGE_SUFFIXES, image_files

    if not folder.is_dir():
        raise ValueError(f'--background-photos {folder} is not a folder')
    photos = tuple(str(p) for p in image_files(folder))
    if not photos:
        raise ValueError(
            f'--background-photos {folder}: no image files ({", ".join(IMAGE_SUFFIXES)}) there'
        )
    return photos


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mobius_ros.train.data.synthetic import SynthConfig, write_split

    if args.num < 1 or args.max_objects < 1:
        print('mobius synth: --num and --max-objects must be >= 1')
        return 2
    try:
        photos = _photos(args.background_photos)
    except (OSError, ValueError) as error:
        print(f'mobius synth: {error}')
        return 2
    sizes = tuple(args.sizes or ())
    weights = tuple(args.size_weights or ())
    if any(side < 32 for side in sizes):
        print('mobius synth: --sizes must all be >= 32')
        return 2
    if weights and (len(weights) != len(sizes) or min(weights) < 0 or sum(weights) <= 0):
        print('mobius synth: --size-weights needs one weight >= 0 per --sizes entry, sum > 0')
        return 2
    if args.randomised:
        config = SynthConfig.randomised(image_hw=args.size, background_photos=photos)
        config = replace(config, max_objects=args.max_objects)
    else:
        config = SynthConfig(
            image_hw=args.size,
            max_objects=args.max_objects,
            colour_sampling=args.colour_sampling,
            background_photos=photos,
        )
    for split in args.split:
        start = time.perf_counter()
        paths = write_split(
            args.out,
            split=split,
            num=args.num,
            seed=args.seed,
            config=config,
            sizes=sizes,
            size_weights=weights,
        )
        seconds = time.perf_counter() - start
        counts = json.loads(paths['instances'].read_text())
        refs = json.loads(paths['refs'].read_text())['refs']
        print(
            f'{split}: {args.num} images, {len(counts["annotations"])} instances, {len(refs)}'
            f' expressions in {seconds:.1f} s -> {paths["instances"]}, {paths["refs"]}'
        )
    return 0
