"""Cost curves on ONNX Runtime: latency against input size, vocabulary, queries kept and
instances, peak memory against input size; MOBIUS beside YOLOv8n-seg where the axis applies.

Every point is a median of interleaved rounds (`bench.common`), the same threads and session
options for every graph (`bench.runtime_peers.ort_session`); random weights, so what is
measured is cost, not accuracy.

- size: the full graph of MOBIUS and YOLOv8n-seg at each canvas (H x 4H/3, multiples of 32),
  timed in the same rounds; the ratio per size says whose cost grows faster.
- vocabulary: MOBIUS's full graph at one canvas with 1 to 1203 phrases (LVIS's size) as
  cached text features, T = 3.2 tokens per phrase as for the COCO names (YOLO is closed-set).
- queries: the split path the node runs, with the decoder's survivors forced to n queries
  after the first layer (every later layer and the mask head run on n).
- instances: the host post-processing (scores, top-k, boxes and masks pasted back to a
  480x640 image) for n instances above the threshold.
- memory: peak resident memory of a fresh process that opens the graph and runs one frame,
  minus the same process before it opened the graph.

    python -m bench.cost_curves                  # -> results/cost_curves.json + cost_curves.png
    python -m bench.cost_curves --axes size vocabulary --repeats 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    TimingConfig,
    environment,
    fix_threads,
    paired_ratio,
    time_interleaved,
    write_results,
)

VARIANT = 'MOBIUS-mobile-lite'
SIZES = (160, 320, 480, 640, 800)  # short side; canvases are H x 4H/3
VOCABULARIES = (1, 80, 400, 1203)
QUERIES = (10, 25, 50, 100)
INSTANCES = (0, 1, 5, 20, 50, 100)
TOKENS_PER_PHRASE = 257 / 80  # the 80 COCO names through the MiniLM tokenizer


def canvas(short: int) -> tuple[int, int]:
    return short, round(short * 4 / 3 / 32) * 32


def _mobius(size: tuple[int, int], threads: int) -> Any:
    from bench.onnx_model import export_variant

    return export_variant(VARIANT, size, threads=threads, stand_in_text=True)


def text_feeds(count: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Cached-text inputs for `count` phrases: random features with the real token count."""
    from mobius_ros.export import io_spec

    rng = np.random.default_rng(seed)
    tokens = max(1, round(count * TOKENS_PER_PHRASE))
    return {
        io_spec.TEXT_TOKENS.name: rng.standard_normal((1, tokens, width), dtype=np.float32),
        io_spec.TEXT_MASK.name: np.ones((1, tokens), dtype=bool),
        io_spec.CLASS_EMBED.name: rng.standard_normal((1, count, width), dtype=np.float32),
    }


def size_axis(timing: TimingConfig) -> list[dict]:
    from bench.runtime_peers import export_yolo, ort_session

    points = []
    for short in SIZES:
        size = canvas(short)
        ours = _mobius(size, timing.threads)
        yolo = ort_session(export_yolo('YOLOv8n-seg', size), timing.threads)
        image = {'images': np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)}
        feeds = ours.feeds()
        timings = time_interleaved(
            {
                'mobius': lambda o=ours, f=feeds: o.full.infer(f),
                'yolo': lambda s=yolo, f=image: s.run(None, f),
            },
            timing,
        )
        points.append(
            {
                'input_hw': list(size),
                'pixels': size[0] * size[1],
                'mobius_ms': round(timings['mobius'].median_ms, 2),
                'yolo_ms': round(timings['yolo'].median_ms, 2),
                'ratio': round(paired_ratio(timings['mobius'], timings['yolo']), 3),
            }
        )
        ours.close()
        print(f'[size] {size}: {points[-1]}')
    return points


def vocabulary_axis(timing: TimingConfig, size: tuple[int, int]) -> list[dict]:
    from mobius_ros.export import io_spec

    ours = _mobius(size, timing.threads)
    width = ours.text.text_tokens.shape[-1]
    image = ours.feeds()[io_spec.IMAGE.name]
    cases = {}
    for count in VOCABULARIES:
        feeds = {io_spec.IMAGE.name: image, **text_feeds(count, width)}
        cases[str(count)] = lambda f=feeds: ours.full.infer(f)
    timings = time_interleaved(cases, timing)
    base = timings[str(VOCABULARIES[0])]
    points = [
        {
            'phrases': count,
            'tokens': max(1, round(count * TOKENS_PER_PHRASE)),
            'mobius_ms': round(timings[str(count)].median_ms, 2),
            'ratio_to_one_phrase': round(paired_ratio(timings[str(count)], base), 3),
        }
        for count in VOCABULARIES
    ]
    ours.close()
    print(f'[vocabulary] {points}')
    return points


def queries_axis(timing: TimingConfig, size: tuple[int, int]) -> list[dict]:
    from bench.onnx_model import split_runner
    from mobius_ros.model.pruning import PruningConfig

    ours = _mobius(size, timing.threads)
    cases = {}
    for count in (q for q in QUERIES if q <= ours.num_queries):
        # Thresholds pinned above any probability: exactly `min_keep` queries survive.
        forced = PruningConfig(min_keep=count, upper=1.0, lower=1.0, trajectory='sigmoid')
        cases[str(count)] = split_runner(ours, forced)
    kept = {name: run() for name, run in cases.items()}
    timings = time_interleaved(cases, timing)
    points = [
        {
            'queries': int(name),
            'kept_per_layer': list(kept[name]),
            'mobius_ms': round(timings[name].median_ms, 2),
        }
        for name in cases
    ]
    ours.close()
    print(f'[queries] {points}')
    return points


def instances_axis(timing: TimingConfig, size: tuple[int, int]) -> list[dict]:
    from mobius_ros.runtime.predictor import DecoderResult, Predictor
    from mobius_ros.runtime.result import Task

    ours = _mobius(size, timing.threads)
    predictor = Predictor(ours.runners, input_size=size)
    rng = np.random.default_rng(0)
    image_hw, scale = (480, 640), min(size[0] / 480, size[1] / 640)
    pad = (0, 0)
    cases = {}
    for count in INSTANCES:
        boxes = np.concatenate(
            [rng.uniform(0.2, 0.8, (count, 2)), rng.uniform(0.05, 0.3, (count, 2))], 1
        )
        logits = np.full((count, 80), -6.0, np.float32)
        logits[np.arange(count), np.arange(count) % 80] = 4.0  # one confident class each
        result = DecoderResult(
            logits=logits,
            boxes=boxes.astype(np.float32),
            confidence=np.full(count, 0.98, np.float32),
            masks=rng.standard_normal((count, size[0] // 4, size[1] // 4)).astype(np.float32) + 2,
            query_index=np.arange(count),
            queries_kept=(count,),
        )
        kwargs = dict(
            image_size=image_hw, scale=scale, pad=pad, phrases=tuple(f'c{i}' for i in range(80)),
            task=Task.VOCABULARY, score_threshold=0.3,
        )  # fmt: skip
        cases[str(count)] = lambda r=result, k=kwargs: predictor.postprocess(r, **k)
    found = {name: len(run().scores) for name, run in cases.items()}
    timings = time_interleaved(cases, timing)
    points = [
        {'instances': found[str(n)], 'postprocess_ms': round(timings[str(n)].median_ms, 3)}
        for n in INSTANCES
    ]
    ours.close()
    print(f'[instances] {points}')
    return points


# Runs in a fresh interpreter with only numpy and onnxruntime imported. VmHWM (the peak of this
# process image) and not ru_maxrss, which Linux carries over from the parent across exec.
_MEMORY_PROBE = """
import json, numpy as np, onnxruntime as ort
def status(key):
    with open('/proc/self/status') as f:
        line = next(l for l in f if l.startswith(key + ':'))
    return int(line.split()[1]) / 1e3
before = status('VmRSS')
options = ort.SessionOptions()
options.intra_op_num_threads = {threads}
options.inter_op_num_threads = 1
options.add_session_config_entry('session.intra_op.allow_spinning', '0')
session = ort.InferenceSession({path!r}, options, providers=['CPUExecutionProvider'])
feeds = json.loads({feeds!r})
session.run(None, {{k: np.zeros(v[0], dtype=v[1]) for k, v in feeds.items()}})
peak = status('VmHWM')
print(json.dumps({{'before_mb': before, 'peak_mb': peak, 'delta_mb': peak - before}}))
"""


def _probe(path: Path, feeds: dict[str, np.ndarray], threads: int) -> dict:
    shapes = json.dumps({k: [list(v.shape), str(v.dtype)] for k, v in feeds.items()})
    code = _MEMORY_PROBE.format(
        root=str(Path(__file__).resolve().parents[1]),
        path=str(path),
        threads=threads,
        feeds=shapes,
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_axis(timing: TimingConfig) -> list[dict]:
    from bench.runtime_peers import export_yolo

    points = []
    for short in SIZES:
        size = canvas(short)
        ours = _mobius(size, timing.threads)
        mobius = _probe(ours.directory / 'full.onnx', ours.feeds(), timing.threads)
        image = {'images': np.zeros((1, 3, *size), np.float32)}
        yolo = _probe(export_yolo('YOLOv8n-seg', size), image, timing.threads)
        ours.close()
        points.append(
            {
                'input_hw': list(size),
                'mobius_peak_delta_mb': round(mobius['delta_mb'], 1),
                'yolo_peak_delta_mb': round(yolo['delta_mb'], 1),
            }
        )
        print(f'[memory] {points[-1]}')
    return points


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    axes = payload['axes']
    fig, grid = plt.subplots(1, len(axes), figsize=(4.2 * len(axes), 3.6), squeeze=False)
    for ax, (name, points) in zip(grid[0], axes.items()):
        if name == 'size':
            x = [p['pixels'] / 1e3 for p in points]
            ax.plot(x, [p['mobius_ms'] for p in points], 'o-', label=VARIANT)
            ax.plot(x, [p['yolo_ms'] for p in points], 's-', label='YOLOv8n-seg')
            ax.set_xlabel('input pixels (thousands)')
        elif name == 'vocabulary':
            ax.plot([p['phrases'] for p in points], [p['mobius_ms'] for p in points], 'o-')
            ax.set_xscale('log')
            ax.set_xlabel('phrases (cached text)')
        elif name == 'queries':
            ax.plot([p['queries'] for p in points], [p['mobius_ms'] for p in points], 'o-')
            ax.set_xlabel('queries kept after layer 1')
        elif name == 'instances':
            ax.plot([p['instances'] for p in points], [p['postprocess_ms'] for p in points], 'o-')
            ax.set_xlabel('instances (post-processing only)')
        elif name == 'memory':
            x = [p['input_hw'][0] for p in points]
            ax.plot(x, [p['mobius_peak_delta_mb'] for p in points], 'o-', label=VARIANT)
            ax.plot(x, [p['yolo_peak_delta_mb'] for p in points], 's-', label='YOLOv8n-seg')
            ax.set_xlabel('input height (W = 4H/3)')
        ax.set_ylabel('peak MB over baseline' if name == 'memory' else 'ms (median)')
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name in ('size', 'memory'):
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = ('size', 'vocabulary', 'queries', 'instances', 'memory')
    parser.add_argument('--axes', nargs='*', default=list(choices), choices=choices)
    parser.add_argument('--size', type=int, default=384, help='short side for the fixed axes')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    args = parser.parse_args(argv)
    timing = TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    fix_threads(args.threads)
    size = canvas(args.size)
    payload: dict[str, Any] = {
        'benchmark': 'cost_curves',
        'variant': VARIANT,
        'runtime': 'onnxruntime CPUExecutionProvider',
        'fixed_input_hw': list(size),
        'environment': environment(timing),
        'axes': {},
    }
    runs = {
        'size': lambda: size_axis(timing),
        'vocabulary': lambda: vocabulary_axis(timing, size),
        'queries': lambda: queries_axis(timing, size),
        'instances': lambda: instances_axis(timing, size),
        'memory': lambda: memory_axis(timing),
    }
    previous = RESULTS_DIR / 'cost_curves.json'
    if previous.exists():  # axes not rerun keep their last measurement
        payload['axes'].update(json.loads(previous.read_text()).get('axes', {}))
    for axis in args.axes:
        payload['axes'][axis] = runs[axis]()
    print(f'wrote {write_results("cost_curves", payload)}')
    plot(payload, RESULTS_DIR / 'cost_curves.png')
    print(f'wrote {RESULTS_DIR / "cost_curves.png"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
