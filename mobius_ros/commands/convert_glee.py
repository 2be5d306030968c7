"""`mobius convert-glee CHECKPOINT -o OUT.safetensors`: GLEE's released weights -> our checkpoint.

Reads the file with `torch.load(weights_only=True)` only; every tensor is mapped or listed as
deliberately unused (see `mobius_ros.model.glee_checkpoint`), and a file that does not fit
writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('checkpoint', type=Path, help='GLEE .pth file, e.g. GLEE_Lite_joint.pth')
    parser.add_argument(
        '-o', '--out', type=Path, required=True, help='our checkpoint to write (.safetensors)'
    )
    parser.add_argument(
        '--variant',
        choices=('GLEE-Lite', 'GLEE-Plus'),
        help='the GLEE model the file holds (default: detected from its tensor names)',
    )
    parser.add_argument(
        '--list-unused', action='store_true', help='print every unused tensor and the reason'
    )


def run(args: argparse.Namespace) -> int:
    from mobius_ros.common.errors import ModelLoadError
    from mobius_ros.model.checkpoint import sidecar_path
    from mobius_ros.model.glee_checkpoint import convert_glee

    try:
        conversion = convert_glee(args.checkpoint, args.out, variant=args.variant)
    except (ModelLoadError, FileNotFoundError, ValueError) as error:
        print(f'mobius convert-glee: error: {error}', file=sys.stderr)
        return 2
    print(f'{args.checkpoint} -> {args.out} (+ {sidecar_path(args.out).name})')
    print(conversion.summary())
    print(f'sha256 of the source: {conversion.source["sha256"]}')
    if args.list_unused:
        for name, reason in conversion.unused.items():
            print(f'  unused {name}: {reason}')
    return 0
