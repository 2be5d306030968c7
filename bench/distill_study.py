"""The distillation study: student vs teacher latency on ONNX Runtime and accuracy ratios.

    python -m bench.distill_study --teacher mobius_ros/assets/demo/mobius-demo.safetensors \\
        --student runs/distilled/model.safetensors --size 160 --threads 1 \\
        --eval teacher=teacher.eval.json --eval distilled=distilled.eval.json \\
        --eval control=control.eval.json --run distilled=runs/distilled \\
        --run control=runs/control --out docs/studies/distill.json

Latency: both checkpoints are exported to split ONNX graphs and run through the project's
predictor (pre-processing, encoder, decoder layers, mask head, post-processing) on the same
synthetic test image with the shape vocabulary, interleaved round by round so that the ratio is
taken under the same load. Accuracy comes from `mobius eval` JSON files; every model's mask AP,
agnostic mask AR@100 and referring P@0.5 are reported with their ratio to the teacher's.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.common import TimingConfig, environment, fix_threads, paired_ratio, time_interleaved

METRICS = {
    'mask_ap': 'segm/AP',
    'mask_ap_one_label': 'one_label/segm/AP',
    'agnostic_mask_ar100': 'agnostic/segm/AR100',
    'referring_p_at_0.5': 'referring/all/P@0.5',
}


def _predict_case(checkpoint: Path, size: tuple[int, int], threads: int, workdir: Path) -> Any:
    """A callable running one full frame of `checkpoint` through ONNX Runtime."""
    import torch

    from bench.onnx_model import runner_factory
    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.checkpoint import load_checkpoint
    from mobius_ros.runtime.exported import ExportedModel
    from mobius_ros.runtime.predictor import Predictor, TextInputs
    from mobius_ros.runtime.vocabulary import TextBatch
    from mobius_ros.train.data.synthetic import SHAPES, SynthConfig, generate_scene, scene_rng

    model = load_checkpoint(checkpoint)
    directory = workdir / checkpoint.stem
    options = ExportOptions(input_size=size, referring=False, full=False, text_encoder=False)
    export_model(model, directory, options)
    with torch.no_grad():
        features = model.encode_text(SHAPES)
    text = TextInputs.from_batch(
        TextBatch(
            tokens=features.tokens.numpy().astype('float32'),
            mask=features.mask.numpy().astype(bool),
            pooled=features.pooled.numpy().astype('float32'),
        )
    )
    exported = ExportedModel.open(directory)
    predictor = Predictor(exported.runners(runner_factory(threads=threads, spinning=False)),
                          input_size=size)  # fmt: skip
    image = generate_scene(
        scene_rng(0, 'test', 0), split='test', config=SynthConfig(image_hw=size)
    ).image

    def run() -> object:
        return predictor.predict(image, text, phrases=SHAPES)

    return run


def _run_info(directory: Path) -> dict[str, Any]:
    """Steps and minutes of a training or distillation run (from its metrics.csv)."""
    with open(directory / 'metrics.csv') as handle:
        rows = list(csv.DictReader(handle))
    info: dict[str, Any] = {
        'steps': int(rows[-1]['step']),
        'student_minutes': round(float(rows[-1]['seconds']) / 60, 2),
        'final_logged_loss': round(float(rows[-1]['loss']), 3),
    }
    report = directory / 'distill.json'
    if report.is_file():
        data = json.loads(report.read_text())
        info['images'] = data['images']
        info['teacher_seconds_this_run'] = data['teacher_seconds']
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--teacher', type=Path, required=True)
    parser.add_argument('--student', type=Path, required=True)
    parser.add_argument('--size', type=int, default=160)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=40)
    parser.add_argument('--eval', action='append', default=[], help='NAME=eval.json')
    parser.add_argument('--run', action='append', default=[], help='NAME=run directory')
    parser.add_argument('--note', action='append', default=[], help='free text for the JSON')
    parser.add_argument('--out', type=Path, required=True)
    args = parser.parse_args(argv)
    fix_threads(args.threads)
    config = TimingConfig(warmup=5, repeats=args.repeats, threads=args.threads)
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as workdir:
        cases = {
            'teacher': _predict_case(args.teacher, size, args.threads, Path(workdir)),
            'student': _predict_case(args.student, size, args.threads, Path(workdir)),
        }
        timings = time_interleaved(cases, config)
    latency = {
        name: {'median_ms': round(t.median_ms, 2), 'p95_ms': round(t.p95_ms, 2)}
        for name, t in timings.items()
    }
    latency['student_over_teacher'] = round(
        paired_ratio(timings['student'], timings['teacher']), 3
    )
    evals = dict(item.split('=', 1) for item in args.eval)
    if 'teacher' not in evals:
        raise SystemExit('--eval teacher=FILE is needed for the ratios')
    metrics = {}
    for name, path in evals.items():
        data = json.loads(Path(path).read_text())
        metrics[name] = {key: data.get(source) for key, source in METRICS.items()}
        metrics[name]['eval_data'] = data.get('data')
    teacher = metrics['teacher']
    ratios = {
        name: {
            key: round(values[key] / teacher[key], 3) if teacher[key] else None
            for key in METRICS
            if values.get(key) is not None
        }
        for name, values in metrics.items()
        if name != 'teacher'
    }
    payload = {
        'teacher': str(args.teacher),
        'student': str(args.student),
        'input_size': list(size),
        'latency_onnxruntime': latency,
        'metrics': metrics,
        'ratio_to_teacher': ratios,
        'runs': {
            name: _run_info(Path(path)) for name, path in (r.split('=', 1) for r in args.run)
        },
        'targets': {'student_over_teacher_latency_max': 0.6, 'mask_ap_ratio_min': 0.85},
        'notes': args.note,
        'environment': environment(config),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, sort_keys=True) + '\n')
    print(json.dumps({'latency': latency, 'ratio_to_teacher': ratios}, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
