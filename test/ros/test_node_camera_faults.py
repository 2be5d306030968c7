"""A camera that misbehaves keeps the node running: stale, resized, looped, restarted, bursty.

Each fault is driven on the real ROS graph against the node process: the node must publish
outputs for the frames after the fault, say what happened once (or rate-limited) in its log and
count it in /diagnostics. Staleness uses short thresholds here (warn 1 s, error 2 s), and the
node runs on sim time with no /clock publisher.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

NAMESPACE = '/mobius_camera_faults'
NODE = f'{NAMESPACE}/mobius'
OK, WARN, ERROR = 0, 1, 2


@pytest.fixture(scope='module')
def node(start_node: Any, tiny_node: dict[str, Any]) -> Any:
    process = start_node(
        namespace=NAMESPACE,
        **tiny_node,
        diagnostics_period=0.2,
        stale_warn_s=1.0,
        stale_error_s=2.0,
        # Sim time and no /clock at all (a bag that is not playing): staleness and /diagnostics
        # run on the steady clock, so they must work all the same.
        use_sim_time=True,
    )
    assert process.wait_for_log('active: listening', timeout=120), process.log()
    return process


@pytest.fixture
def camera(ros_client: Any) -> Any:
    """A camera publisher of this test alone (destroyed after it: counts stay per test)."""
    from sensor_msgs.msg import Image

    publisher = ros_client.publisher(Image, f'{NAMESPACE}/image')
    yield publisher
    ros_client.node.destroy_publisher(publisher)


def _image(rgb: np.ndarray, stamp: float, encoding: str = 'rgb8') -> Any:
    from sensor_msgs.msg import Image

    height, width = rgb.shape[:2]
    if encoding == 'bgr8':
        rgb = np.ascontiguousarray(rgb[..., ::-1])
    elif encoding == 'mono8':
        rgb = np.ascontiguousarray(rgb[..., 0])
    channels = 1 if rgb.ndim == 2 else 3
    msg = Image(
        height=height, width=width, encoding=encoding, step=width * channels, data=rgb.tobytes()
    )
    msg.header.stamp.sec = int(stamp)
    msg.header.stamp.nanosec = round((stamp - int(stamp)) * 1e9)
    return msg


def _rgb(seed: int, shape: tuple[int, int] = (48, 80)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)


def _masks(client: Any) -> list[Any]:
    from sensor_msgs.msg import Image

    return client.subscribe(Image, f'{NAMESPACE}/instance_mask')


def _until_output(client: Any, publisher: Any, msg: Any, timeout: float = 30.0) -> Any:
    """Publish `msg` until the instance mask with its stamp arrives; that mask."""
    masks = _masks(client)
    stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)

    def mine() -> list[Any]:
        return [m for m in masks if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]

    def arrived() -> bool:
        if not mine():
            publisher.publish(msg)
        return bool(mine())

    assert client.wait(arrived, timeout=timeout), f'no output for the frame stamped {stamp}'
    return mine()[0]


def _statuses(client: Any) -> list[Any]:
    from diagnostic_msgs.msg import DiagnosticArray

    return client.subscribe(DiagnosticArray, '/diagnostics')


def _latest_status(client: Any, after: int = 0) -> Any:
    """The node's newest status among the /diagnostics arrays from index `after` on."""
    mine = [
        s for array in _statuses(client)[after:] for s in array.status if s.name.startswith(NODE)
    ]
    return mine[-1] if mine else None


def _level(status: Any) -> int:
    level = status.level  # a byte field: rclpy gives bytes of length one
    return level[0] if isinstance(level, bytes) else int(level)


def _values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def _wait_level(client: Any, level: int, timeout: float) -> Any:
    """Wait for a status at `level` published after this call; that status."""
    start = len(_statuses(client))
    found: list[Any] = []

    def reached() -> bool:
        status = _latest_status(client, start)
        if status is not None and _level(status) == level:
            found.append(status)
        return bool(found)

    assert client.wait(reached, timeout=timeout), (
        f'no status at level {level}; last: {_latest_status(client, start)}'
    )
    return found[0]


def _fresh_values(client: Any) -> dict[str, str]:
    """Key values of a status published from now on (diagnostics_period is 0.2 s)."""
    start = len(_statuses(client))
    assert client.wait(lambda: _latest_status(client, start) is not None, timeout=10)
    return _values(_latest_status(client, start))


def test_no_frames_warn_then_error_and_frames_bring_ok_back(
    node: Any, ros_client: Any, camera: Any
) -> None:
    _statuses(ros_client)
    # No frame since activation counts as stale too: a camera that never comes up is a fault.
    error = _wait_level(ros_client, ERROR, timeout=20)
    assert 'no frame' in error.message, error.message
    _until_output(ros_client, camera, _image(_rgb(0), stamp=10))
    ok = _wait_level(ros_client, OK, timeout=5)
    assert float(_values(ok)['last_frame_age_s']) < 1.0
    stopped = time.monotonic()
    warn = _wait_level(ros_client, WARN, timeout=10)
    warned = time.monotonic() - stopped
    assert 'no frame for' in warn.message, warn.message
    error = _wait_level(ros_client, ERROR, timeout=10)
    errored = time.monotonic() - stopped
    assert 'no frame for' in error.message, error.message
    assert 0.8 <= warned < errored, (warned, errored)
    _until_output(ros_client, camera, _image(_rgb(1), stamp=11))
    _wait_level(ros_client, OK, timeout=5)
    log = node.log()
    assert 'camera frames resumed after' in log, log
    assert node.alive()


def test_resolution_and_encoding_changes_keep_publishing_at_the_new_size(
    node: Any, ros_client: Any, camera: Any
) -> None:
    before, logged = _fresh_values(ros_client), len(node.log())
    first = _until_output(ros_client, camera, _image(_rgb(2), stamp=20))
    assert (first.height, first.width) == (48, 80)
    bigger = _until_output(ros_client, camera, _image(_rgb(3, (96, 160)), 21, 'bgr8'))
    assert (bigger.height, bigger.width) == (96, 160)
    mono = _until_output(ros_client, camera, _image(_rgb(4, (96, 160)), 22, 'mono8'))
    assert (mono.height, mono.width) == (96, 160)
    back = _until_output(ros_client, camera, _image(_rgb(5), stamp=23))
    assert (back.height, back.width) == (48, 80)
    log = node.log()[logged:]
    assert 'camera resolution changed 80x48 -> 160x96' in log, log
    assert 'camera encoding changed rgb8 -> bgr8' in log, log
    assert 'camera encoding changed bgr8 -> mono8' in log, log
    after = _fresh_values(ros_client)
    assert int(after['resolution_changes']) >= int(before['resolution_changes']) + 2
    assert int(after['encoding_changes']) >= int(before['encoding_changes']) + 3
    assert (after['resolution'], after['encoding']) == ('80x48', 'rgb8')
    assert '[ERROR]' not in log, log


def test_timestamps_going_backwards_are_echoed_and_counted(
    node: Any, ros_client: Any, camera: Any
) -> None:
    before = _fresh_values(ros_client)
    _until_output(ros_client, camera, _image(_rgb(6), stamp=1000.5))
    looped = _until_output(ros_client, camera, _image(_rgb(7), stamp=400.25))
    assert (looped.header.stamp.sec, looped.header.stamp.nanosec) == (400, 250_000_000)
    later = _until_output(ros_client, camera, _image(_rgb(8), stamp=401.0))
    assert later.header.stamp.sec == 401
    log = node.log()
    assert 'timestamps went backwards by 600.250 s' in log, log
    assert 'source looped or restarted' in log, log
    after = _fresh_values(ros_client)
    assert int(after['stamps_backwards']) == int(before['stamps_backwards']) + 1


def test_a_restarted_camera_publisher_is_picked_up_again(node: Any, ros_client: Any) -> None:
    from sensor_msgs.msg import Image

    publisher = ros_client.publisher(Image, f'{NAMESPACE}/image')
    _until_output(ros_client, publisher, _image(_rgb(9), stamp=30))
    before = _fresh_values(ros_client)
    ros_client.node.destroy_publisher(publisher)  # the driver dies ...
    assert ros_client.wait(lambda: _fresh_values(ros_client)['camera_publishers'] == '0', 10)
    restarted = ros_client.publisher(Image, f'{NAMESPACE}/image')  # ... and comes back
    try:
        out = _until_output(ros_client, restarted, _image(_rgb(10), stamp=31))
        assert out.header.stamp.sec == 31
        reconnects = int(before['camera_reconnects']) + 1

        def counted() -> bool:
            after = _fresh_values(ros_client)
            return (after['camera_reconnects'], after['camera_publishers']) == (
                str(reconnects),
                '1',
            )

        assert ros_client.wait(counted, timeout=10), _fresh_values(ros_client)
        log = node.log()
        assert 'camera publisher gone' in log and 'camera publisher back' in log, log
    finally:
        ros_client.node.destroy_publisher(restarted)


def test_a_burst_drops_to_the_newest_frame_and_counts_the_drops(
    node: Any, ros_client: Any, camera: Any
) -> None:
    before = _fresh_values(ros_client)
    for n in range(200):  # far faster than the model: the one-frame slot overflows
        camera.publish(_image(_rgb(n % 4), stamp=5000 + n))
    _until_output(ros_client, camera, _image(_rgb(11), stamp=6000))
    after = _fresh_values(ros_client)
    assert int(after['dropped_frames']) > int(before['dropped_frames'])
    assert int(after['frames']) > int(before['frames'])
    assert node.alive()


def test_sim_clock_jumping_back_keeps_outputs_and_diagnostics(
    node: Any, ros_client: Any, camera: Any
) -> None:
    """A bag played with --clock --loop: /clock runs, then jumps back to the bag's start."""
    from rosgraph_msgs.msg import Clock

    clock = ros_client.node.create_publisher(Clock, '/clock', 10)
    try:

        def tick(seconds: float) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = int(seconds), round((seconds % 1) * 1e9)
            clock.publish(msg)

        for second in range(5000, 5005):
            tick(second)
            _until_output(ros_client, camera, _image(_rgb(second), stamp=second + 0.5))
        for second in range(100, 105):  # the loop starts again: ROS time goes back ~4900 s
            tick(second)
            out = _until_output(ros_client, camera, _image(_rgb(second), stamp=second + 0.5))
            assert (out.header.stamp.sec, out.header.stamp.nanosec) == (second, 500_000_000)
        status = _wait_level(ros_client, OK, timeout=10)  # diagnostics still come, and say OK
        assert int(_values(status)['stamps_backwards']) >= 1
        assert node.alive()
        assert 'Traceback' not in node.log(), node.log()
    finally:
        ros_client.node.destroy_publisher(clock)
