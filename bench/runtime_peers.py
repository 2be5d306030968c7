"""MOBIUS and YOLO-seg on the same runtime: ONNX graphs on ONNX Runtime, interleaved rounds.

The robot runs exported graphs, not PyTorch modules, so the comparison a robot team makes is
graph against graph on one runtime. Every model is random-initialised (speed does not depend
on the weight values) and exported here: YOLOv8n-seg and YOLO11n-seg from the ultralytics
yamls with BatchNorm fused and the head in its export layout (what `yolo export format=onnx`
writes), MOBIUS through `mobius_ros.export` (its single full graph, and the split graphs the
node runs with the host keep rule between decoder layers). Every session gets the same
intra-op thread count, spinning off, full graph optimisation (ONNX Runtime's default).

What is timed is one `[1, 3, H, W]` forward (no pre/post-processing, no NMS); MOBIUS uses the
80 COCO names as cached text. `--profile` adds ONNX Runtime's per-node profile of one MOBIUS
graph: the share of kernel time per operator type and per model part.

    python -m bench.runtime_peers --size 384x512 --repeats 30      # -> results/runtime_peers.json
    python -m bench.runtime_peers --profile MOBIUS-mobile-lite     # + results/runtime_profile.json
    python -m bench.runtime_peers --ours 'MOBIUS-mobile-lite@pixel_decoder.fpn_conv=separable'
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Skipped,
    TimingConfig,
    environment,
    fix_threads,
    paired_ratio,
    parse_size,
    skipped_entry,
    time_interleaved,
    write_results,
)
from bench.peers import Case, build_cases

for _var, _value in (('YOLO_OFFLINE', '1'), ('YOLO_VERBOSE', 'False')):
    os.environ.setdefault(_var, _value)

YOLO_PEERS = {'YOLOv8n-seg': 'yolov8n-seg.yaml', 'YOLO11n-seg': 'yolo11n-seg.yaml'}
EXPORTS = Path(tempfile.gettempdir()) / 'mobius-bench-exports'


def ort_session(path: Path, threads: int, profile: bool = False) -> Any:
    """An ONNX Runtime CPU session as the project's runner opens one (spinning off)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    options.enable_profiling = profile
    if profile:
        options.profile_file_prefix = str(path.with_suffix(''))
    return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def export_yolo(name: str, size: tuple[int, int], directory: Path = EXPORTS) -> Path:
    """YOLO-seg from its yaml, fused, head in export mode, as one ONNX graph (cached)."""
    import torch
    from ultralytics import YOLO

    path = directory / f'{name}-{size[0]}x{size[1]}.onnx'
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = YOLO(YOLO_PEERS[name]).model.eval().fuse(verbose=False)
    for module in model.modules():
        if hasattr(module, 'export'):  # Detect / Segment heads: the deployed output layout
            module.export, module.format = True, 'onnx'
    image = torch.rand(1, 3, *size)
    with torch.no_grad():
        model(image)  # builds the anchor grid for this size
        torch.onnx.export(
            model,
            (image,),
            str(path.with_suffix('.tmp')),
            input_names=['images'],
            output_names=['output0', 'output1'],
            opset_version=17,
            dynamo=False,
        )
    path.with_suffix('.tmp').rename(path)
    return path


def quantize_yolo(path: Path, size: tuple[int, int], calibration: Path) -> Path:
    """The YOLO graph quantised as ours are (QDQ, per-channel int8 weights, uint8
    activations, Conv/MatMul/Gemm) on letterboxed calibration images scaled to [0, 1]."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from mobius_ros.export.quantize import QUANTIZED_OPS, load_images
    from mobius_ros.ops.image import letterbox

    target = path.with_name(path.stem + '-int8.onnx')
    if target.exists():
        return target
    images, _ = load_images(calibration, 16)
    feeds = iter(
        [{'images': (letterbox(i, size)[0].transpose(2, 0, 1)[None] / 255.0).astype('float32')}
         for i in images]
    )  # fmt: skip

    class Reader:
        def get_next(self) -> dict | None:
            return next(feeds, None)

    quantize_static(
        str(path),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=list(QUANTIZED_OPS),
    )
    return target


def yolo_case(
    name: str, size: tuple[int, int], threads: int, calibration: Path | None = None
) -> Case:
    path, label = export_yolo(name, size), name
    if calibration is not None:
        path, label = quantize_yolo(path, size, calibration), f'{name} int8'
    session = ort_session(path, threads)
    feeds = {'images': np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)}
    return Case(
        label,
        lambda: session.run(None, feeds),
        {
            'source': f'ultralytics {YOLO_PEERS[name]}, fused, ONNX export',
            'text': 'closed-set (80 classes)',
            'graph_mb': round(path.stat().st_size / 1e6, 2),
        },
    )


def parse_ours(spec: str) -> tuple[str, dict[str, Any]]:
    """'VARIANT' or 'VARIANT@part.field=value,...' -> (variant, build_model overrides).

    E.g. 'MOBIUS-mobile-lite@pixel_decoder.fpn_conv=separable'; values are parsed as JSON
    where they can be ('3', 'true', '[8]'), else kept as strings.
    """
    variant, _, rest = spec.partition('@')
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(',')):
        key, eq, text = item.partition('=')
        if not eq or key.count('.') != 1:
            raise ValueError(f'{spec!r}: overrides are part.field=value, got {item!r}')
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        part, field = key.split('.')
        overrides.setdefault(part, {})[field] = value
    return variant, overrides


def int8_copy(exported: Any, calibration: Path, threads: int) -> Any:
    """`mobius quantize` of a bench export (calibrated on real images, cached beside it)."""
    from bench.onnx_model import ExportedVariant, runner_factory
    from mobius_ros.export.quantize import load_images, quantize_export
    from mobius_ros.ops.coco_classes import COCO_CLASSES
    from mobius_ros.runtime.exported import ExportedModel

    target = exported.directory.with_name(exported.directory.name + '-int8')
    if not (target / 'model.json').exists():
        images, _ = load_images(calibration, 16)
        quantize_export(
            exported.directory, target, images, COCO_CLASSES, text=exported.text, overwrite=True
        )
    opened = ExportedModel.open(target)
    factory = runner_factory(threads=threads, spinning=False)
    return ExportedVariant(
        variant=exported.variant + ' int8',
        directory=target,
        runners=opened.runners(factory),
        full=factory('full', opened.graph_path('full')),
        text=exported.text,
        input_size=exported.input_size,
        num_queries=exported.num_queries,
        num_layers=exported.num_layers,
    )


def mobius_cases(
    spec: str, size: tuple[int, int], threads: int, calibration: Path | None = None
) -> list[Case]:
    """The full graph (no pruning) and the split path the node runs (default thresholds);
    with `calibration`, the same for the int8 copy."""
    from bench.onnx_model import export_variant

    variant, overrides = parse_ours(spec)
    exported = export_variant(
        variant, size, threads=threads, stand_in_text=True, overrides=overrides
    )
    cases = _cases_of(spec, exported)
    if calibration is not None:
        cases += _cases_of(spec + ' int8', int8_copy(exported, calibration, threads))
    return cases


def _cases_of(variant: str, exported: Any) -> list[Case]:
    from bench.onnx_model import full_runner, split_runner
    from mobius_ros.model.pruning import PruningConfig

    graph_mb = sum(p.stat().st_size for p in exported.directory.glob('*.onnx')) / 1e6
    info = {
        'source': 'mobius_ros export (ONNX Runtime, random weights, cached 80-phrase text)',
        'text': 'open vocabulary, cached',
        'graph_mb': round(graph_mb, 2),
        'queries': exported.num_queries,
        'decoder_layers': exported.num_layers,
    }
    return [
        Case(f'{variant} (full graph)', full_runner(exported), dict(info, path='full graph')),
        Case(
            f'{variant} (split, pruning)',
            split_runner(exported, PruningConfig()),
            dict(info, path='split graphs, default pruning thresholds'),
        ),
    ]


def run(
    *,
    size: tuple[int, int],
    timing: TimingConfig,
    ours: list[str],
    peers: list[str],
    calibration: Path | None = None,
) -> dict[str, Any]:
    fix_threads(timing.threads)
    env = environment(timing)
    cases, skipped = build_cases(peers, lambda n: yolo_case(n, size, timing.threads))
    reference = cases[0].name if cases else None
    if calibration is not None:
        more, failed = build_cases(
            peers, lambda n: yolo_case(n, size, timing.threads, calibration)
        )
        cases, skipped = cases + more, skipped + failed
    for variant in ours:
        try:
            cases += mobius_cases(variant, size, timing.threads, calibration)
        except Exception as error:  # a variant that cannot be exported is a recorded result
            skipped.append(Skipped(variant, f'{type(error).__name__}: {error}'[:500]))
    timings = time_interleaved({c.name: c.run for c in cases}, timing)
    entries = []
    for case in cases:
        entry = {'name': case.name, 'status': 'ok', **case.info, **timings[case.name].summary()}
        if reference is not None:
            ref = timings[reference]
            entry['ratio_to_reference'] = round(paired_ratio(timings[case.name], ref), 3)
            entry['ratio_min_to_reference'] = round(timings[case.name].min_ms / ref.min_ms, 3)
        entries.append(entry)
    entries += [skipped_entry(s) for s in skipped]
    return {
        'benchmark': 'runtime_peers',
        'description': 'ONNX graph against ONNX graph on ONNX Runtime (CPU), batch 1, random '
        'weights, interleaved rounds; ratio_to_reference = median over rounds of (case / '
        'reference) in the same round.',
        'runtime': 'onnxruntime CPUExecutionProvider',
        'input_hw': list(size),
        'reference': reference,
        'environment': env,
        'results': entries,
    }


def profile_graph(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> dict:
    """Kernel time per operator type and per model part from ONNX Runtime's profiler."""
    session = ort_session(path, threads, profile=True)
    for _ in range(runs):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    by_op: dict[str, float] = defaultdict(float)
    by_part: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get('cat') != 'Node' or not event['name'].endswith('_kernel_time'):
            continue
        node = event['name'][: -len('_kernel_time')]
        by_op[event['args']['op_name']] += event['dur']
        by_part[_part(node)] += event['dur']
        by_node[node] += event['dur']
    total = sum(by_op.values()) or 1.0

    def shares(values: dict[str, float], top: int | None = None) -> list[list]:
        ranked = sorted(values.items(), key=lambda kv: -kv[1])[:top]
        return [[k, round(100 * v / total, 1)] for k, v in ranked]

    return {
        'graph': path.name,
        'runs': runs,
        'kernel_ms_per_run': round(total / runs / 1000, 2),
        'percent_by_op_type': shares(by_op),
        'percent_by_part': shares(by_part),
        'top_nodes_percent': shares(by_node, 25),
    }


def _part(node: str) -> str:
    """The model part of an exported node name ('/model/pixel_decoder/...' -> 'pixel_decoder')."""
    pieces = [p for p in node.split('/') if p and p not in ('model', 'graph')]
    if len(pieces) < 2:
        return 'other'
    head = pieces[0]
    if head == 'pixel_decoder' and len(pieces) > 2:
        return f'pixel_decoder/{pieces[1].split(".")[0]}'
    return head


def run_profile(spec: str, size: tuple[int, int], threads: int, runs: int) -> dict:
    from bench.onnx_model import export_variant

    variant, overrides = parse_ours(spec)
    exported = export_variant(
        variant, size, threads=threads, stand_in_text=True, overrides=overrides
    )
    graph = exported.directory / 'full.onnx'
    return {
        'variant': spec,
        'input_hw': list(size),
        'threads': threads,
        **profile_graph(graph, exported.feeds(), threads, runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='384x512', help='input HxW (default 384x512)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument(
        '--ours',
        nargs='*',
        default=[
            'MOBIUS-mobile-lite',
            'MOBIUS-mobile-fast',
            'MOBIUS-MNv4-conv-S',
        ],
        help="variants, optionally with overrides: 'VARIANT@part.field=value,...'",
    )
    parser.add_argument('--peers', nargs='*', default=list(YOLO_PEERS), choices=list(YOLO_PEERS))
    parser.add_argument(
        '--profile', nargs='*', default=[], metavar='VARIANT', help='also profile these variants'
    )
    parser.add_argument('--profile-runs', type=int, default=10)
    parser.add_argument(
        '--int8-calibration',
        type=Path,
        metavar='FOLDER',
        help='also time int8 copies of our graphs (`mobius quantize`, 16 images of FOLDER)',
    )
    parser.add_argument('--output', default='runtime_peers', help='results/<output>.json')
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    timing = TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    payload = run(
        size=size,
        timing=timing,
        ours=args.ours,
        peers=args.peers,
        calibration=args.int8_calibration,
    )
    print(f'wrote {write_results(args.output, payload)}')
    for entry in payload['results']:
        if entry['status'] == 'ok':
            print(
                f'{entry["name"]:>36}: median {entry["median_ms"]:8.1f} ms  '
                f'ratio {entry.get("ratio_to_reference")}'
            )
        else:
            print(f'{entry["name"]:>36}: skipped ({entry["reason"]})')
    if args.profile:
        profiles = [run_profile(v, size, args.threads, args.profile_runs) for v in args.profile]
        doc = {'benchmark': 'runtime_profile', 'profiles': profiles}
        print(f'wrote {write_results("runtime_profile", doc)}')
        for profile in profiles:
            print(f'{profile["variant"]}: {profile["kernel_ms_per_run"]} ms of kernels per run')
            for part, share in profile['percent_by_part'][:8]:
                print(f'{part:>36}: {share:5.1f} %')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
