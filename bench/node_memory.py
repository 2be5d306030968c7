"""Resident memory and start-up time of the `mobius` node with the demo model on ONNX Runtime.

Starts `python -m mobius_ros.ros.node` exactly as `mobius demo` does (its own process, a
private localhost graph, the bundled demo model, canvas 160x224) and measures, per start:

- `seconds_to_active`: from just before the process is spawned to the node's "active:
  listening" log line (configure + activate, the model loaded, the vocabulary encoded);
- `rss_active_mb`: resident memory (VmRSS) once active;
- `rss_mb` and `peak_rss_mb` (VmHWM) after it has segmented `--frames` camera frames;
- `torch_mapped`: whether libtorch was loaded into the process at all.

The first start runs on empty export and text caches (fresh folders unless `--engine-dir` /
`--cache-dir` are given): it exports the ONNX graphs from the checkpoint, what a robot does once
on its first boot, and is reported apart (`first_start`). The other starts find the caches
filled, as every later boot does; their medians are the figures. Writes
`bench/results/node_memory.json`:

    python -m bench.node_memory                    # 3 starts, 10 frames each
    python -m bench.node_memory --starts 5 --frames 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import TimingConfig, environment, node_environment, write_results

TARGETS = {'rss_mb': 400.0, 'seconds_to_active': 5.0}
NAMESPACE = '/mobius_bench'


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of process `pid` in MB (1e6 bytes)."""
    values: dict[str, float] = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, rest = line.partition(':')
        if key in ('VmRSS', 'VmHWM'):
            values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values


def libtorch_mapped(pid: int) -> bool:
    return 'libtorch' in Path(f'/proc/{pid}/maps').read_text()


def one_start(
    environment_: dict[str, str], parameters: dict[str, Any], frames: int, log_dir: Path
) -> dict[str, Any]:
    """Start the node, wait for active, feed `frames` frames, measure, stop it."""
    from mobius_ros.demo.camera import demo_frames
    from mobius_ros.demo.client import DemoClient
    from mobius_ros.demo.launcher import READY_TEXT, start_node

    started = time.monotonic()
    node = start_node(
        environment=environment_,
        parameters=parameters,
        namespace=NAMESPACE,
        log_path=log_dir / f'node_{time.time_ns()}.log',
    )
    try:
        while READY_TEXT not in node.log():
            if not node.alive() or time.monotonic() - started > 300:
                raise RuntimeError(f'the node did not become active:\n{node.excerpt()}')
            time.sleep(0.02)
        seconds = time.monotonic() - started
        pid = node.process.pid
        active = proc_status(pid)
        client = DemoClient(NAMESPACE)
        try:
            if not client.wait_connected(timeout=30.0):
                raise RuntimeError('the bench client did not discover the node in 30 s')
            for frame in demo_frames(frames):
                count = client.received.count('segmentation')
                client.publish_image(frame.image)
                client.wait(lambda c=count: client.received.count('segmentation') > c, 10.0)
            answered = client.received.count('segmentation')
        finally:
            client.close()
        after = proc_status(pid)
        torch = libtorch_mapped(pid)
    finally:
        code = node.stop()
    return {
        'seconds_to_active': round(seconds, 3),
        'rss_active_mb': round(active['VmRSS'], 1),
        'rss_mb': round(after['VmRSS'], 1),
        'peak_rss_mb': round(after['VmHWM'], 1),
        'frames_answered': answered,
        'torch_mapped': torch,
        'exit_code': code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--starts', type=int, default=3, help='timed starts')
    parser.add_argument('--frames', type=int, default=10, help='frames per start')
    parser.add_argument('--engine-dir', help='export cache (default: a fresh, empty folder)')
    parser.add_argument('--cache-dir', help='text cache (default: a fresh, empty folder)')
    parser.add_argument('--output', default='node_memory', help='results/<output>.json')
    args = parser.parse_args(argv)

    from mobius_ros.demo.camera import DEMO_VOCABULARY

    env = node_environment()
    with tempfile.TemporaryDirectory() as scratch:
        parameters: dict[str, Any] = {
            'backend': 'onnxruntime',
            'input_height': 160,
            'input_width': 224,
            'vocabulary': list(DEMO_VOCABULARY),
            'engine_dir': args.engine_dir or f'{scratch}/engines',
            'cache_dir': args.cache_dir or f'{scratch}/text',
        }
        logs = Path(scratch) / 'logs'
        first = one_start(env, parameters, args.frames, logs)
        runs = [one_start(env, parameters, args.frames, logs) for _ in range(args.starts)]
    summary = {
        key: round(statistics.median(r[key] for r in runs), 3)
        for key in ('seconds_to_active', 'rss_active_mb', 'rss_mb', 'peak_rss_mb')
    }
    payload = {
        'what': 'the mobius node, demo model, ONNX Runtime, canvas 160x224, after warm caches',
        'median': summary,
        'targets': TARGETS,
        'meets_targets': {
            'rss_mb': summary['peak_rss_mb'] < TARGETS['rss_mb'],
            'seconds_to_active': summary['seconds_to_active'] < TARGETS['seconds_to_active'],
        },
        'first_start': first,
        'runs': runs,
        'environment': environment(TimingConfig(warmup=1, repeats=args.starts)),
    }
    path = write_results(args.output, payload)
    print(f'{path}: {summary}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
