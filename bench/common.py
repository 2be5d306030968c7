"""Timing harness shared by every benchmark: fixed threads, warm-up, interleaved repeats.

The development CPU is shared, so absolute milliseconds drift from minute to minute. Every
benchmark therefore runs its cases *interleaved* (one call of each case per round) and reports
ratios computed round by round: a slow minute slows all cases of that round alike, and the
median of per-round ratios is far steadier than a ratio of medians taken minutes apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / 'results'

# Packages whose versions decide the numbers; recorded with every result file.
VERSIONED_PACKAGES = (
    'torch',
    'torchvision',
    'timm',
    'onnxruntime',
    'onnx',
    'numpy',
    'transformers',
    'ultralytics',
    'fastervit',
    'open_clip_torch',
)


@dataclass(frozen=True)
class TimingConfig:
    """How one benchmark times its cases."""

    warmup: int = 3
    repeats: int = 10
    threads: int = 2


@dataclass(frozen=True)
class Timing:
    """Latency samples of one case, in milliseconds."""

    name: str
    samples_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95_ms(self) -> float:
        return percentile(self.samples_ms, 95.0)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    def summary(self) -> dict[str, Any]:
        """Plain-JSON summary (samples included, so a reader can recompute anything)."""
        return {
            'median_ms': round(self.median_ms, 3),
            'p95_ms': round(self.p95_ms, 3),
            'min_ms': round(self.min_ms, 3),
            'repeats': len(self.samples_ms),
            'samples_ms': [round(s, 3) for s in self.samples_ms],
        }


@dataclass(frozen=True)
class Skipped:
    """A case that could not be measured, kept in the results with its reason."""

    name: str
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) without importing numpy."""
    if not samples:
        raise ValueError('percentile of no samples')
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fix_threads(threads: int) -> None:
    """Pin intra-op threads for torch (ONNX Runtime runners take them per session).

    Environment variables are set too so that libraries started later (OpenMP in numpy/cv2)
    agree; they only take effect for pools not yet created, hence call this first.
    """
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        os.environ[var] = str(threads)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)
    # Inter-op parallelism would let two ops run at once and oversubscribe the cores.
    if torch.get_num_interop_threads() != 1:
        # Raises once parallel work has started; the intra-op count set above still holds.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)


def time_interleaved(
    cases: Mapping[str, Callable[[], object]], config: TimingConfig
) -> dict[str, Timing]:
    """Time every case `config.repeats` times, one call of each case per round.

    Warm-up rounds (not recorded) run first so lazy initialisation, allocator growth and
    ONNX Runtime's first-run optimisations stay out of the samples.
    """
    names = list(cases)
    for _ in range(config.warmup):
        for name in names:
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(config.repeats):
        for name in names:
            start = time.perf_counter()
            cases[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(name, tuple(samples[name])) for name in names}


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator/denominator; both must come from one interleaved run."""
    if len(numerator.samples_ms) != len(denominator.samples_ms):
        raise ValueError('paired ratio needs timings from the same interleaved run')
    ratios = [a / b for a, b in zip(numerator.samples_ms, denominator.samples_ms)]
    return statistics.median(ratios)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform's guess."""
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions by distribution name; None where a package is absent."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment(config: TimingConfig) -> dict[str, Any]:
    """What a reader needs to judge a number: machine, load, threads and versions."""
    load = os.getloadavg() if hasattr(os, 'getloadavg') else None
    return {
        'cpu_model': cpu_model(),
        'logical_cpus': os.cpu_count(),
        'load_average_at_start': [round(x, 2) for x in load] if load else None,
        'python': sys.version.split()[0],
        'platform': platform.platform(),
        'threads': config.threads,
        'warmup': config.warmup,
        'repeats': config.repeats,
        'packages': package_versions(),
        'timestamp_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }


def write_results(name: str, payload: Mapping[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write `<directory>/<name>.json` (sorted keys so diffs between runs stay readable)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f'{name}.json'
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + '\n')
    return path


def skipped_entry(skip: Skipped) -> dict[str, Any]:
    """JSON form of a skipped case: status plus the reason, never silently dropped."""
    return {
        'name': skip.name,
        'status': 'skipped',
        'reason': skip.reason,
        'details': dict(skip.details),
    }


def parse_size(text: str) -> tuple[int, int]:
    """'384x512' -> (384, 512) as (height, width)."""
    height, width = (int(part) for part in text.lower().split('x'))
    return height, width


def node_environment() -> dict[str, str]:
    """Environment for a node this bench starts: a private localhost ROS graph (also set in this
    process, before rclpy initialises) and the built interface packages."""
    from mobius_ros.demo.launcher import private_graph
    from mobius_ros.ros.interfaces import build_interfaces

    graph = private_graph()
    os.environ.update(graph)
    install = build_interfaces()
    install.activate()
    return {**install.environment(), **graph}
