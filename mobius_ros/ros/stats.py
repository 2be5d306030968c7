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


@dataclass(frozen=True)
class StreamSnapshot:
    """The camera stream as /diagnostics reports it.

    Attributes:
        age_s: seconds since the last frame arrived, or since activation before the first.
        has_frame: whether any frame arrived since activation.
        resolution: 'WxH' of the last processed frame ('' before the first).
    """

    age_s: float | None
    has_frame: bool
    resolution: str
    encoding: str
    resolution_changes: int
    encoding_changes: int
    stamps_backwards: int
    reconnects: int


class StreamWatch:
    """What a camera does to the stream: gaps, size and encoding changes, stamps, restarts.

    Thread-safe; times are monotonic seconds given by the caller (wall time of this process,
    never the message stamps, so sim time and looping bags cannot fake freshness). Each method
    returns what changed so the caller can say it once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None  # activation time; None while inactive
        self._last: float | None = None
        self._stamp_ns: int | None = None
        self._format: tuple[str, str] | None = None  # (resolution, encoding)
        self._seen_frames = False  # ever, across activations: a later publisher is a return
        self.resolution_changes = self.encoding_changes = 0
        self.stamps_backwards = self.reconnects = 0

    def start(self, now: float) -> None:
        """Activation: staleness counts from here."""
        with self._lock:
            self._since, self._last = now, None

    def stop(self) -> None:
        with self._lock:
            self._since = self._last = None

    def arrived(self, now: float, stamp_ns: int) -> tuple[float | None, float | None]:
        """A frame arrived: (seconds since the previous one or since activation, None before
        activation; seconds its stamp went back, None when it did not)."""
        with self._lock:
            reference = self._last if self._last is not None else self._since
            self._last = now
            self._seen_frames = True
            previous, self._stamp_ns = self._stamp_ns, stamp_ns
            back = None
            if previous is not None and stamp_ns < previous:
                self.stamps_backwards += 1
                back = (previous - stamp_ns) / 1e9
            return (None if reference is None else now - reference), back

    def frame_format(self, width: int, height: int, encoding: str) -> list[str]:
        """A frame is being processed: what changed in its format since the last one."""
        resolution = f'{width}x{height}'
        changes = []
        with self._lock:
            if self._format is not None:
                old_resolution, old_encoding = self._format
                if resolution != old_resolution:
                    self.resolution_changes += 1
                    changes.append(f'camera resolution changed {old_resolution} -> {resolution}')
                if encoding != old_encoding:
                    self.encoding_changes += 1
                    changes.append(f'camera encoding changed {old_encoding} -> {encoding}')
            self._format = (resolution, encoding)
        return changes

    def publishers(self, before: int, now: int) -> bool:
        """The publisher count went `before` -> `now`: True when a camera came back (after
        frames, every publisher had gone and one appeared)."""
        with self._lock:
            back = before == 0 and now > 0 and self._seen_frames
            self.reconnects += back
            return back

    def snapshot(self, now: float) -> StreamSnapshot:
        with self._lock:
            reference = self._last if self._last is not None else self._since
            resolution, encoding = self._format or ('', '')
            return StreamSnapshot(
                age_s=None if reference is None else max(0.0, now - reference),
                has_frame=self._last is not None,
                resolution=resolution,
                encoding=encoding,
                resolution_changes=self.resolution_changes,
                encoding_changes=self.encoding_changes,
                stamps_backwards=self.stamps_backwards,
                reconnects=self.reconnects,
            )


def stale_level(age_s: float | None, warn_s: float, error_s: float) -> int:
    """0 (fresh), 1 (warn) or 2 (error) for a frame gap of `age_s`; a threshold of 0 is off."""
    if age_s is None:
        return 0
    if error_s > 0 and age_s >= error_s:
        return 2
    if warn_s > 0 and age_s >= warn_s:
        return 1
    return 0


class LogBudget:
    """At most `lines` log lines per `period` seconds (for events that are each worth a line,
    unlike a per-call-site throttle, until a flapping source would flood the log)."""

    def __init__(self, lines: int, period: float) -> None:
        self._lines, self._period = lines, period
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        while self._times and now - self._times[0] >= self._period:
            self._times.popleft()
        if len(self._times) >= self._lines:
            return False
        self._times.append(now)
        return True
