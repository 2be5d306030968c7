"""`mobius render-eval`: an evaluation set from the independent renderer (COCO + referring).

    mobius render-eval --out data/eval_independent --num 200 --size 160 --seed 0
    mobius eval --annotations data/eval_independent/instances.json \\
        --images data/eval_independent/images --referring data/eval_independent/referring.json
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, required=True, help='output folder')
    parser.add_argument('--num', type=int, default=200, help='images (default 200)')
    parser.add_argument('--size', type=int, default=160, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from mobius_ros.evalrender.coco import write_set

    if args.num < 1 or args.size < 32:
        raise SystemExit('--num must be >= 1 and --size >= 32')
    paths = write_set(args.out, num=args.num, size=args.size, seed=args.seed)
    for name, path in paths.items():
        print(f'{name}: {path}')
    return 0
