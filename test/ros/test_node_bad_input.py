"""Bad input at run time keeps the node clean: degenerate frames and bad parameter values.

A camera that sends 1x1 or zero-sized frames gets one rate-limited warning, not an error per
frame, and the next good frame is processed; a parameter set to a bad value is refused through
the parameter service with a reason, and the node keeps the old value and keeps running.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

NAMESPACE = '/mobius_bad_input'


def _image(rgb: np.ndarray, stamp: int) -> Any:
    from sensor_msgs.msg import Image

    height, width = rgb.shape[:2]
    msg = Image(height=height, width=width, encoding='rgb8', step=width * 3, data=rgb.tobytes())
    msg.header.stamp.sec = stamp
    return msg


@pytest.fixture(scope='module')
def node(start_node: Any, tiny_node: dict[str, Any]) -> Any:
    process = start_node(
        namespace=NAMESPACE,
        **tiny_node,
    )
    assert process.wait_for_log('active: listening', timeout=90), process.log()
    return process


def _good_frame(client: Any, stamp: int) -> None:
    """Publish a normal frame until its output arrives."""
    from sensor_msgs.msg import Image

    masks = client.subscribe(Image, f'{NAMESPACE}/instance_mask')
    publisher = client.publisher(Image, f'{NAMESPACE}/image')
    rgb = np.random.default_rng(stamp).integers(0, 255, (48, 80, 3), dtype=np.uint8)

    def arrived() -> bool:
        publisher.publish(_image(rgb, stamp))
        return any(m.header.stamp.sec == stamp for m in masks)

    assert client.wait(arrived, timeout=30), 'no output for a good frame'


def test_degenerate_frames_give_one_rate_limited_warning(node: Any, ros_client: Any) -> None:
    from sensor_msgs.msg import Image

    publisher = ros_client.publisher(Image, f'{NAMESPACE}/image')
    before = node.log()
    for n in range(12):  # about 1.2 s: inside one 2 s throttle window
        side = (1, 1) if n % 2 else (0, 0)
        publisher.publish(_image(np.zeros((*side, 3), np.uint8), stamp=100 + n))
        ros_client.spin(0.1)
    _good_frame(ros_client, stamp=200)
    assert node.alive()
    new = node.log()[len(before) :]
    assert 'skipped a frame' in new, new
    assert len(re.findall('skipped a frame', new)) <= 2, new  # one per 2 s, not one per frame
    assert '[ERROR]' not in new, new


def _set(client: Any, name: str, value: float) -> Any:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    parameter = Parameter(
        name=name,
        value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value),
    )
    reply = client.call(
        SetParameters,
        f'{NAMESPACE}/mobius/set_parameters',
        SetParameters.Request(parameters=[parameter]),
    )
    return reply.results[0]


def _get(client: Any, name: str) -> float:
    from rcl_interfaces.srv import GetParameters

    reply = client.call(
        GetParameters, f'{NAMESPACE}/mobius/get_parameters', GetParameters.Request(names=[name])
    )
    return reply.values[0].double_value


def test_bad_budgets_are_refused_with_a_reason_and_the_old_one_kept(
    node: Any, ros_client: Any
) -> None:
    _good_frame(ros_client, stamp=300)  # the node has timed a frame: it knows its floor
    assert _set(ros_client, 'latency_budget_ms', 5000.0).successful
    negative = _set(ros_client, 'latency_budget_ms', -5.0)
    assert not negative.successful and 'out of range' in negative.reason, negative.reason
    floor = _set(ros_client, 'latency_budget_ms', 0.001)
    assert not floor.successful and 'below the feasible floor' in floor.reason, floor.reason
    assert _get(ros_client, 'latency_budget_ms') == 5000.0
    _good_frame(ros_client, stamp=301)  # still running, with the old budget
    assert _set(ros_client, 'latency_budget_ms', 0.0).successful  # 0 = off is always allowed
