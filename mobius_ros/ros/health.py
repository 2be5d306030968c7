"""Camera health: what the camera stream does, and /diagnostics (a mixin of `MobiusNode`).

A camera can stop (no frame for `stale_warn_s` -> WARN, `stale_error_s` -> ERROR, back to OK
with the next frame; "no frame since activation" counts from activation), change its resolution
or encoding mid-stream, send timestamps that go backwards (a looping bag, a restarted driver or
sim time), disappear and come back (its publisher destroyed and created again), or send bursts
(the latest-frame slot drops and counts them). None needs a restart: outputs follow the frames
after the fault, each fault gets a one-time or rate-limited log line, and every one is counted
in the diagnostics key values. Times are this process's monotonic clock, never message stamps.

The mixin uses the node's state: `_stream`, `_stale`, `_format_lines`, `_polled_publishers`,
`_stats`, `_subscription`, `_segmenter`, `_values`, `_enabled`, `_diagnostics`.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import numpy as np

from mobius_ros.ros import params
from mobius_ros.ros.stats import stale_level

try:
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # ROS 2 Humble (JetPack 6 images) names the module qos_event
    from rclpy.qos_event import SubscriptionEventCallbacks


class CameraHealth:
    """Stream watching for the frame callback, publisher events and the diagnostics timer."""

    def _watch_frame(self, msg: Any) -> None:
        stamp = msg.header.stamp
        gap, back = self._stream.arrived(time.monotonic(), stamp.sec * 10**9 + stamp.nanosec)
        if self._stale and gap is not None:
            self._stale = 0
            self.get_logger().info(f'camera frames resumed after {gap:.1f} s without any')
        if back is not None:
            self.get_logger().warning(
                f'camera timestamps went backwards by {back:.3f} s: source looped or restarted'
                ' (outputs keep the camera stamps; counted as stamps_backwards)',
                throttle_duration_sec=10.0,
            )

    def _subscription_events(self) -> Any:
        """The image subscription's event callbacks (call on activation)."""
        try:  # `matched` (a publisher came or went) is Iron and later
            events = SubscriptionEventCallbacks(
                incompatible_qos=self._on_incompatible_qos, matched=self._on_matched
            )
            self._polled_publishers = None
        except TypeError:  # Humble: the diagnostics timer polls the publisher count instead
            events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
            self._polled_publishers = 0
        return events

    def _on_matched(self, event: Any) -> None:
        now = int(event.current_count)
        self._publishers_changed(now - int(event.current_count_change), now)

    def _publishers_changed(self, before: int, now: int) -> None:
        topic = self._subscription.topic_name if self._subscription else 'image'
        if now == 0 and before > 0:
            self.get_logger().warning(
                f'camera publisher gone from {topic}: waiting for it to come back'
            )
        elif self._stream.publishers(before, now):
            self.get_logger().info(f'camera publisher back on {topic}')

    def _on_incompatible_qos(self, event: Any) -> None:
        self.get_logger().warning(
            f'a publisher on {self._subscription.topic_name if self._subscription else "image"}'
            f' has incompatible QoS (policy {event.last_policy_kind}): no images arrive from it.'
            ' Publishers must be reliable when the parameter reliable is true; the default'
            ' best-effort subscription accepts any publisher.',
            throttle_duration_sec=10.0,
        )

    def _format_changed(self, rgb: np.ndarray, encoding: str) -> None:
        changes = self._stream.frame_format(rgb.shape[1], rgb.shape[0], encoding)
        if changes and self._format_lines.allow(time.monotonic()):
            self.get_logger().warning(
                '; '.join(changes) + ': outputs follow the new frames (further changes are'
                ' counted in diagnostics, at most 10 such lines a minute)'
            )

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics.publish(self._diagnostic_array())
        except Exception:  # the timer runs in the executor: a fault here must not stop it
            self.get_logger().error(
                f'diagnostics failed:\n{traceback.format_exc()}', throttle_duration_sec=60.0
            )

    def _diagnostic_array(self) -> Any:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        snap, stream = self._stats.snapshot(), self._stream.snapshot(time.monotonic())
        status = DiagnosticStatus(
            name=f'{self.get_fully_qualified_name()}: segmentation',
            hardware_id=str(self._values['backend']),
        )
        subscription = self._subscription
        publishers = None if subscription is None else subscription.get_publisher_count()
        if publishers is not None and self._polled_publishers is not None:
            before, self._polled_publishers = self._polled_publishers, publishers
            if before != publishers:
                self._publishers_changed(before, publishers)
        warn_s, error_s = float(self._values['stale_warn_s']), float(self._values['stale_error_s'])
        stale = stale_level(stream.age_s, warn_s, error_s) if subscription is not None else 0
        gap = (f'no frame for {stream.age_s:.1f} s' if stream.has_frame else
               f'no frame since activation ({stream.age_s or 0.0:.1f} s ago)')  # fmt: skip
        if stale > self._stale:
            line = f'{gap} on {subscription.topic_name} ({publishers} publishers)'
            if stale == 2:  # one call site per severity: rclpy refuses to mix them
                self.get_logger().error(line)
            else:
                self.get_logger().warning(line)
        self._stale = stale
        if self._segmenter is None:
            status.level, status.message = DiagnosticStatus.STALE, 'not configured'
        elif stale:
            status.level = DiagnosticStatus.ERROR if stale == 2 else DiagnosticStatus.WARN
            status.message = gap
        elif snap.budget_met is False:
            status.level, status.message = DiagnosticStatus.WARN, 'latency budget not met'
        else:
            status.level, status.message = DiagnosticStatus.OK, 'ok'
        budget, floor = params.latency_budget(self._values), self._stats.floor_ms()
        vocabulary = self._segmenter.vocabulary if self._segmenter is not None else None
        fields = {
            'rate_hz': f'{snap.rate_hz:.2f}',
            'latency_p50_ms': f'{snap.latency_p50_ms:.1f}',
            'latency_p95_ms': f'{snap.latency_p95_ms:.1f}',
            'frames': snap.frames,
            'dropped_frames': snap.dropped,
            'bad_frames': snap.bad_frames,
            'errors': snap.errors,
            'queries_kept': snap.queries_kept,
            'latency_budget_ms': 'none' if budget is None else f'{budget:.1f}',
            # The least budget this node would accept now (what pruning cannot shorten).
            'latency_floor_ms': 'n/a' if floor is None else f'{floor:.1f}',
            'budget_met': 'n/a' if snap.budget_met is None else str(snap.budget_met).lower(),
            'backend': self._values['backend'],
            'enabled': str(self._enabled).lower(),
            'vocabulary_version': vocabulary.version if vocabulary is not None else 'n/a',
            # The camera stream: how long since a frame, and what it did.
            'last_frame_age_s': 'n/a' if stream.age_s is None else f'{stream.age_s:.2f}',
            'camera_publishers': 'n/a' if publishers is None else publishers,
            'resolution': stream.resolution or 'n/a',
            'encoding': stream.encoding or 'n/a',
            'resolution_changes': stream.resolution_changes,
            'encoding_changes': stream.encoding_changes,
            'stamps_backwards': stream.stamps_backwards,
            'camera_reconnects': stream.reconnects,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in fields.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        return array
