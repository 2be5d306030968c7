"""`mobius build-engine --onnx-dir D`: build TensorRT engines ahead of time.

One engine per exported graph (encoder, decoder_layer_<l>, referring_decoder_layer_<l>,
mask_head, full, text_encoder), each with its JSON sidecar, in
`<--out>/<export_key>/<precision>/` — the folder and sidecar the runtime's `engine_plan` expects,
so with the same `--out` (default the node's `engine_dir`), precision and `--max-vocabulary`
(default the node's `max_vocabulary`) the node loads them without rebuilding. Run it on the
target machine (the Jetson): an engine only runs on the GPU and TensorRT version that built it.
With the default policy 'if_mismatched' only engines that are missing or stale are rebuilt;
`--force` rebuilds all. `--dry-run` prints the plan and works without TensorRT.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from mobius_ros.common.errors import SegmenterError
from mobius_ros.common.images import IMAGE_SUFFIXES, image_files
from mobius_ros.export import io_spec
from mobius_ros.export.engine_cache import (
    DEFAULT_ENGINE_ROOT,
    DEFAULT_MAX_VOCABULARY,
    DEFAULT_PRECISION,
    POLICIES,
    PRECISIONS,
    EnginePlan,
    engine_plan,
    file_sha256,
)


def _range(text: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(v) for v in text.split(':'))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'expected MIN:OPT:MAX, got {text!r}') from error
    if not 1 <= low <= opt <= high:
        raise argparse.ArgumentTypeError(f'need 1 <= MIN <= OPT <= MAX, got {text!r}')
    return low, opt, high


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--onnx-dir', type=Path, required=True, help='folder of `mobius export`')
    parser.add_argument(
        '--out',
        type=Path,
        default=Path(DEFAULT_ENGINE_ROOT),
        help='engine root; engines go to OUT/<export_key>/<precision>/ (default: the'
        f" node's engine_dir, {DEFAULT_ENGINE_ROOT})",
    )
    parser.add_argument('--precision', choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument(
        '--max-vocabulary',
        type=int,
        default=DEFAULT_MAX_VOCABULARY,
        help="largest vocabulary (K, P ranges); match the node's max_vocabulary parameter",
    )
    parser.add_argument('--calib', type=Path, help='calibration images (INT8 encoder)')
    parser.add_argument('--calib-count', type=int, default=64, help='images used for INT8')
    parser.add_argument('--graphs', nargs='+', metavar='NAME', help='only these graphs')
    # Explicit ranges replace the plan's defaults; the node plans the defaults, so it rebuilds
    # (or, with build_policy never, refuses) engines built with them.
    parser.add_argument('--queries', type=_range, metavar='MIN:OPT:MAX', help='query axis Q')
    parser.add_argument('--classes', type=_range, metavar='MIN:OPT:MAX', help='vocabulary K')
    parser.add_argument('--text-tokens', type=_range, metavar='MIN:OPT:MAX', help='tokens T')
    parser.add_argument('--phrases', type=_range, metavar='MIN:OPT:MAX', help='text batch P')
    parser.add_argument('--workspace-mb', type=int, default=2048)
    parser.add_argument('--policy', choices=POLICIES, default='if_mismatched')
    parser.add_argument('--force', action='store_true', help='rebuild every engine')
    parser.add_argument('--device', type=int, default=0, help='CUDA device ordinal')
    parser.add_argument('--dry-run', action='store_true', help='print the plan, build nothing')


def read_model_json(onnx_dir: Path) -> dict[str, object]:
    """The export's `model.json` (resolved model config, tokenizer, canvas)."""
    path = onnx_dir / io_spec.MODEL_JSON
    if not path.is_file():
        raise SegmenterError(f'{path} is missing: is {onnx_dir} the output of `mobius export`?')
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise SegmenterError(f'{path} is not a JSON object')
    return data


def graph_files(onnx_dir: Path, names: list[str] | None) -> list[Path]:
    """The .onnx files to build, in a stable order; unknown requested names are errors."""
    files = sorted(onnx_dir.glob('*.onnx'))
    if names:
        by_name = {f.stem: f for f in files}
        unknown = sorted(set(names) - set(by_name))
        if unknown:
            raise SegmenterError(f'no graphs {unknown} in {onnx_dir} (have {sorted(by_name)})')
        files = [by_name[n] for n in names]
    if not files:
        raise SegmenterError(f'no .onnx graphs in {onnx_dir}')
    return files


def plan_from_args(args: argparse.Namespace, model: Mapping[str, object]) -> EnginePlan:
    """The engine plan of this command: the runtime's `engine_plan` with the flags given."""
    given = {'Q': args.queries, 'K': args.classes, 'T': args.text_tokens, 'P': args.phrases}
    return engine_plan(
        args.onnx_dir,
        model,
        engine_root=args.out,
        precision=args.precision,
        max_vocabulary=args.max_vocabulary,
        ranges={k: v for k, v in given.items() if v is not None},
        workspace_mb=args.workspace_mb,
    )


def calibration_feeds(
    onnx_dir: Path, images: Path, count: int, model: Mapping[str, object]
) -> Iterator[dict[str, np.ndarray]]:
    """Encoder feeds for INT8 calibration: letterboxed images with the agnostic prompt's text.

    The text side comes from the exported text graph (ONNX Runtime), so calibration sees the
    same token features the robot feeds at run time.
    """
    import cv2

    from mobius_ros.common.tokenizer import load_tokenizer
    from mobius_ros.export.tensorrt_build import onnx_input_shapes
    from mobius_ros.ops.image import letterbox, normalize_image
    from mobius_ros.runtime.runner import OnnxRuntimeRunner

    height, width = onnx_input_shapes(onnx_dir / io_spec.ENCODER_SPEC.filename)['image'][2:]
    if not isinstance(height, int) or not isinstance(width, int):
        raise SegmenterError('the encoder graph has no fixed canvas; re-export with one')
    tokenizer = load_tokenizer(model['tokenizer'], onnx_dir)  # type: ignore[arg-type]
    with OnnxRuntimeRunner(onnx_dir / io_spec.TEXT_ENCODER_SPEC.filename) as text_graph:
        text = text_graph.infer({'token_ids': tokenizer(['object'])})
    mask = text['mask'][0]
    feeds_text = {
        io_spec.TEXT_TOKENS.name: text['tokens'][0][mask][None].astype(np.float32),
        io_spec.TEXT_MASK.name: np.ones((1, int(mask.sum())), bool),
        io_spec.CLASS_EMBED.name: text['pooled'][None].astype(np.float32),
    }
    files = image_files(images)
    if not files:
        raise SegmenterError(f'no calibration images ({", ".join(IMAGE_SUFFIXES)}) in {images}')
    for path in files[:count]:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        canvas, _, _ = letterbox(bgr[..., ::-1], (height, width))
        yield {io_spec.IMAGE.name: normalize_image(canvas)[None], **feeds_text}


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (SegmenterError, ValueError) as error:
        print(f'mobius build-engine: {error}', file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from mobius_ros.export.tensorrt_build import ensure_engine, plan_profiles

    model = read_model_json(args.onnx_dir)
    files = graph_files(args.onnx_dir, args.graphs)
    plan = plan_from_args(args, model)
    if args.dry_run:
        print(f'engines: {plan.directory}')
        for path in files:
            options = plan.graph_options(path.stem)
            print(f'{path.stem}: sha256 {file_sha256(path)[:16]} {options.precision}')
            for name, (low, opt, high) in plan_profiles(path, options.ranges).items():
                print(f'  {name}: min {low} opt {opt} max {high}')
        return 0
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError as error:
        print(
            f'mobius build-engine: TensorRT and pycuda are needed ({error}); install the'
            " 'jetson' extra on the target machine, or use --dry-run",
            file=sys.stderr,
        )
        return 2
    policy = 'if_mismatched' if args.force else args.policy
    for path in files:
        if args.force:
            plan.engine_path(path.stem).unlink(missing_ok=True)
        calibration: list = []
        if plan.graph_options(path.stem).precision == 'int8' and args.calib is not None:
            calibration = list(
                calibration_feeds(args.onnx_dir, args.calib, args.calib_count, model)
            )
        engine = ensure_engine(
            path, plan, policy=policy, calibration=calibration, device=args.device
        )
        print(f'{path.stem}: {engine}')
    return 0
