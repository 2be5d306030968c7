"""`mobius export --checkpoint P --out DIR`: split ONNX graphs, the full graph, the text encoder.

Without `--checkpoint`, `--variant NAME` exports a randomly initialised variant (for engine
builds and benchmarks of architectures without trained weights). Needs torch; the folder it
writes is what the torch-free runtime (`--backend onnxruntime|tensorrt`) and
`mobius build-engine` read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', type=Path, help='.safetensors checkpoint (JSON beside)')
    source.add_argument('--variant', help='random-init variant name, e.g. MOBIUS-mobile-lite')
    parser.add_argument('--out', type=Path, required=True, help='output folder (replaced)')
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        default=(384, 512),
        metavar=('H', 'W'),
        help='fixed letterbox canvas, multiples of 32 (default 384 512)',
    )
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--no-referring', action='store_true', help='skip referring layers')
    parser.add_argument('--no-full', action='store_true', help='skip the unpruned full graph')
    parser.add_argument('--no-text', action='store_true', help='skip the text encoder graph')


def run(args: argparse.Namespace) -> int:
    from mobius_ros.export.onnx import ExportOptions, export_model

    try:
        options = ExportOptions(
            input_size=(int(args.input_size[0]), int(args.input_size[1])),
            opset=args.opset,
            referring=not args.no_referring,
            full=not args.no_full,
            text_encoder=not args.no_text,
        )
    except ValueError as error:
        print(f'mobius export: {error}', file=sys.stderr)
        return 2
    try:
        if args.checkpoint is not None:
            from mobius_ros.model.checkpoint import load_checkpoint

            model = load_checkpoint(args.checkpoint)
        else:
            from mobius_ros.model.variants import build_model

            model = build_model(args.variant).eval()
    except (OSError, ValueError, ImportError) as error:
        print(f'mobius export: cannot load the model: {error}', file=sys.stderr)
        return 2
    start = time.perf_counter()
    path = export_model(model, args.out, options)
    meta = json.loads(path.read_text())
    seconds = time.perf_counter() - start
    print(f'exported {meta["variant"]} at {options.input_size} to {args.out} in {seconds:.1f} s')
    for _, graph in sorted(meta['graphs'].items()):
        size = (args.out / graph['file']).stat().st_size / 1e6
        print(f'  {graph["file"]:<36} {size:8.2f} MB')
    return 0
