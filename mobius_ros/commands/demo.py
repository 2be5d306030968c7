"""`mobius demo`: the node on a live ROS 2 graph, a simulated camera and a service client.

Builds the interface packages if needed (cached), starts the node (ONNX Runtime, the bundled
demo model unless `--checkpoint`), plays synthetic test scenes and a few bundled photos as a
camera, sets a vocabulary, asks a referring expression, switches to "object" mode, prints one
line per frame and writes `overlays/*.png`, `session_mcap/` (rosbag2, mcap) and `summary.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder')
    parser.add_argument('--frames', type=int, default=24, help='camera frames to play (>= 2)')
    parser.add_argument(
        '--checkpoint', help='checkpoint or export folder (default: the bundled demo model)'
    )
    parser.add_argument('--backend', choices=('onnxruntime', 'torch'), default='onnxruntime')
    parser.add_argument(
        '--budget-ms',
        type=float,
        help='latency budget (p95 target) set partway through; default: halfway between the'
        " node's feasible floor and the unbudgeted median",
    )
    parser.add_argument('--rate', type=float, default=2.0, help='camera frame rate (Hz)')
    parser.add_argument(
        '--input-size',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="letterbox canvas (multiples of 32); default: the export's own, else 160 224",
    )
    parser.add_argument('--score-threshold', type=float, default=0.3)
    parser.add_argument('--engine-dir', default='~/.cache/mobius_ros/engines')
    parser.add_argument('--cache-dir', default='~/.cache/mobius_ros/text', help='text cache')
    parser.add_argument('--domain-id', type=int, help='ROS_DOMAIN_ID (default: a private one)')
    parser.add_argument('--seed', type=int, default=0, help='which synthetic scenes to play')
    parser.add_argument(
        '--start-timeout', type=float, default=300.0, help='seconds to wait for the node'
    )


def run(args: argparse.Namespace) -> int:
    from mobius_ros.demo.session import DemoError, DemoOptions, run_demo

    try:
        options = DemoOptions(
            out=args.out,
            frames=args.frames,
            checkpoint=args.checkpoint,
            backend=args.backend,
            budget_ms=args.budget_ms,
            input_size=tuple(args.input_size) if args.input_size else None,
            rate_hz=args.rate,
            score_threshold=args.score_threshold,
            engine_dir=args.engine_dir,
            cache_dir=args.cache_dir,
            domain_id=args.domain_id,
            seed=args.seed,
            start_timeout_s=args.start_timeout,
        )
    except ValueError as error:
        print(f'mobius demo: {error}', file=sys.stderr)
        return 2
    try:
        import rclpy  # noqa: F401
    except ImportError as error:
        print(
            f'mobius demo: rclpy is not importable ({error}); install the ROS extra'
            " (`pip install -e '.[ros]'`, or `make venv`) or source a ROS 2 Jazzy install",
            file=sys.stderr,
        )
        return 2
    try:
        summary = run_demo(options, echo=lambda line: print(line, flush=True))
    except DemoError as error:
        print(f'mobius demo: FAILED: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('mobius demo: interrupted; the node was stopped', file=sys.stderr)
        return 130
    frames, budget = summary['frames'], summary['budget']
    latency = summary['latency_ms']
    iou = summary['referring'].get('iou_with_target')
    if budget['accepted']:
        budgeted = f'met on {budget["met"]}/{budget["frames"]} frames'
    else:
        budgeted = 'refused'
    print(
        f'mobius demo: {frames["processed"]}/{frames["published"]} frames processed'
        f' ({frames["dropped"]} dropped, summary.json frames.dropped_why says why; p50'
        f' {latency.get("p50_ms", float("nan")):.1f} ms, p95'
        f' {latency.get("p95_ms", float("nan")):.1f} ms); latency budget'
        f' {budget["budget_ms"]:.1f} ms {budgeted}; referring query answered:'
        f' {summary["referring"]["success"]}'
        f'{"" if iou is None else f" (IoU with the true instance {iou:.2f})"}; wrote'
        f' {args.out}/summary.json, {args.out}/latency.png, {args.out}/overlays/,'
        f' {summary["recording"]["path"]} in {summary["seconds"]:.0f} s'
    )
    return 0
