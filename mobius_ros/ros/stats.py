"""Frame statistics for the node's diagnostics, and the newest-frame slot (no rclpy here)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StatsSnapshot:
    """What /diagnostics reports, over the last `window` frames."""

    rate_hz: float
    latency_p50_ms: float
    latency_p95_ms: float
    frames: int
    dropped: int
    bad_frames: int
    errors: int
    queries_kept: int
    budget_met: bool | None


class FrameStats:
    """Thread-safe counters and a sliding window of per-frame latencies."""

    def __init__(self, window: int = 100) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self._times: deque[float] = deque(maxlen=window)
        self.frames = self.dropped = self.bad_frames = self.errors = 0
        self._queries_kept = 0
        self._budget_met: bool | None = None
        self._fixed: deque[float] = deque(maxlen=window)

    def frame(
        self,
        latency_ms: float,
        *,
        queries_kept: int,
        budget_met: bool | None,
        fixed_ms: float | None = None,
    ) -> None:
        """Record one published frame; `fixed_ms` is its time in stages no pruning shortens."""
        with self._lock:
            if fixed_ms is not None:
                self._fixed.append(fixed_ms)
            self.frames += 1
            self._latencies.append(latency_ms)
            self._times.append(time.monotonic())
            self._queries_kept = queries_kept
            self._budget_met = budget_met

    def floor_ms(self) -> float | None:
        """The least fixed-stage time of the recent frames (None before the first): a budget
        under it could not have been met by any of them, whatever the pruning."""
        with self._lock:
            return min(self._fixed) if self._fixed else None

    def count(self, what: str) -> None:
        """Count a 'dropped', 'bad_frames' or 'errors' event."""
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            latencies = sorted(self._latencies)
            times = list(self._times)
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
            if times and time.monotonic() - times[-1] > 5.0:
                rate = 0.0  # nothing arrives any more: a stale window must not report a rate
            return StatsSnapshot(
                rate_hz=rate,
                latency_p50_ms=_percentile(latencies, 0.5),
                latency_p95_ms=_percentile(latencies, 0.95),
                frames=self.frames,
                dropped=self.dropped,
                bad_frames=self.bad_frames,
                errors=self.errors,
                queries_kept=self._queries_kept,
                budget_met=self._budget_met,
            )


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class LatestSlot:
    """Holds only the newest item: `put` replaces an unread one (returning True = dropped)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        with self._condition:
            dropped = self._item is not None
            self._item = item
            self._condition.notify()
            return dropped

    def take(self, timeout: float | None = None) -> Any:
        """The newest item, or None on timeout or after `close`."""
        with self._condition:
            if self._item is None and not self._closed:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._item = None
            self._condition.notify_all()

    def open(self) -> None:
        with self._condition:
            self._closed = False
