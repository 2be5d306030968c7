"""The camera-stream watch behind the node's staleness and fault counts (no rclpy)."""

from __future__ import annotations

from mobius_ros.ros import params
from mobius_ros.ros.stats import LogBudget, StreamWatch, stale_level


def test_staleness_counts_from_activation_then_from_the_last_frame() -> None:
    watch = StreamWatch()
    assert watch.snapshot(5.0).age_s is None  # inactive: nothing is stale
    watch.start(10.0)
    first = watch.snapshot(12.5)
    assert (first.age_s, first.has_frame) == (2.5, False)
    assert watch.arrived(13.0, stamp_ns=1)[0] == 3.0  # the gap since activation
    assert watch.snapshot(14.0).age_s == 1.0
    assert watch.arrived(20.0, stamp_ns=2)[0] == 7.0
    watch.stop()
    assert watch.snapshot(30.0).age_s is None


def test_stale_levels_and_thresholds_that_are_off() -> None:
    assert [stale_level(a, 2.0, 10.0) for a in (None, 1.9, 2.0, 9.9, 10.0)] == [0, 0, 1, 1, 2]
    assert stale_level(100.0, 0.0, 10.0) == 2
    assert stale_level(100.0, 2.0, 0.0) == 1
    assert stale_level(100.0, 0.0, 0.0) == 0


def test_backwards_stamps_are_measured_and_counted() -> None:
    watch = StreamWatch()
    watch.start(0.0)
    assert watch.arrived(1.0, 1_000_500_000_000)[1] is None
    assert watch.arrived(1.1, 1_000_500_000_000)[1] is None  # a repeat is not backwards
    assert watch.arrived(1.2, 400_250_000_000)[1] == 600.25
    assert watch.arrived(1.3, 401_000_000_000)[1] is None
    assert watch.snapshot(2.0).stamps_backwards == 1


def test_format_changes_are_described_and_counted() -> None:
    watch = StreamWatch()
    assert watch.frame_format(80, 48, 'rgb8') == []
    assert watch.frame_format(160, 96, 'bgr8') == [
        'camera resolution changed 80x48 -> 160x96',
        'camera encoding changed rgb8 -> bgr8',
    ]
    assert watch.frame_format(160, 96, 'bgr8') == []
    snap = watch.snapshot(0.0)
    assert (snap.resolution, snap.encoding) == ('160x96', 'bgr8')
    assert (snap.resolution_changes, snap.encoding_changes) == (1, 1)


def test_a_publisher_back_after_frames_is_a_reconnect() -> None:
    watch = StreamWatch()
    assert not watch.publishers(0, 1)  # the first camera: no frames yet, not a return
    watch.start(0.0)
    watch.arrived(1.0, 1)
    assert not watch.publishers(1, 0)
    assert watch.publishers(0, 1)
    assert not watch.publishers(1, 2)  # a second publisher joining is no return
    assert watch.snapshot(2.0).reconnects == 1


def test_log_budget_allows_a_burst_then_refills() -> None:
    budget = LogBudget(lines=2, period=10.0)
    assert [budget.allow(t) for t in (0.0, 1.0, 2.0, 9.9, 10.0, 11.0)] == [
        True, True, False, False, True, True,
    ]  # fmt: skip


def test_stale_thresholds_are_validated() -> None:
    assert params.validate('stale_warn_s', -1.0) is not None
    reasons = params.validate_all({'stale_warn_s': 5.0, 'stale_error_s': 1.0})
    assert reasons and 'must not exceed stale_error_s' in reasons[0]
    assert params.validate_all({'stale_warn_s': 5.0, 'stale_error_s': 0.0}) == []  # error off
