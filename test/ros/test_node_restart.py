"""The node process dies mid-stream and comes back with what it was told at run time.

A vocabulary set through set_vocabulary and a latency budget set through the parameter service
are saved to the node's state file; the process is SIGKILLed while frames are being published
(the worker is inside the model), and the next process (respawned by the launch file, or started
again as a robot's supervisor would) must reach active by itself and publish with that
vocabulary and budget. The time from the kill to the first published result is printed
(`pytest -s`); no timing is asserted beyond generous timeouts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_launch import Launch, _launch, _parameters, _params_file, _wait_active
from test_launch import launch_env as launch_env  # the fixture, shared

pytestmark = pytest.mark.ros

ACTIVE = 3  # lifecycle_msgs/State.PRIMARY_STATE_ACTIVE


def _frame(stamp: int) -> Any:
    from sensor_msgs.msg import Image

    rgb = np.random.default_rng(stamp).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    msg = Image(height=48, width=80, encoding='rgb8', step=240, data=rgb.tobytes())
    msg.header.stamp.sec = stamp
    return msg


class Stream:
    """A camera publishing frames with increasing stamps, one per `publish`, and its outputs."""

    def __init__(self, client: Any, camera_topic: str, output_topic: str) -> None:
        from sensor_msgs.msg import Image

        self.client = client
        self.outputs = client.subscribe(Image, output_topic)
        self.publisher = client.node.create_publisher(Image, camera_topic, 10)
        self.stamp = 1000

    def publish(self) -> int:
        self.stamp += 1
        self.publisher.publish(_frame(self.stamp))
        return self.stamp

    def output_after(self, stamp: int, timeout: float) -> float:
        """Publish at about 20 Hz until an output of a frame newer than `stamp` arrives; the
        monotonic time it arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish()
            self.client.spin(0.05)
            if any(m.header.stamp.sec > stamp for m in self.outputs):
                return time.monotonic()
        raise AssertionError(f'no output of a frame after stamp {stamp} in {timeout} s')

    def close(self) -> None:
        self.client.node.destroy_publisher(self.publisher)


def _set_vocabulary(client: Any, node: str, **request: Any) -> Any:
    from mobius_ros_msgs.srv import SetVocabulary

    namespace = node.rsplit('/', 1)[0]
    reply = client.call(
        SetVocabulary, f'{namespace}/set_vocabulary', SetVocabulary.Request(**request)
    )
    assert reply.success, reply.message
    return reply


def _get_vocabulary(client: Any, node: str) -> Any:
    from mobius_ros_msgs.srv import GetVocabulary

    namespace = node.rsplit('/', 1)[0]
    return client.call(GetVocabulary, f'{namespace}/get_vocabulary', GetVocabulary.Request())


def _set_budget(client: Any, node: str, value: float) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    parameter = Parameter(
        name='latency_budget_ms',
        value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value),
    )
    reply = client.call(
        SetParameters, f'{node}/set_parameters', SetParameters.Request(parameters=[parameter])
    )
    assert reply.results[0].successful, reply.results[0].reason


def _state(client: Any, node: str) -> int:
    from lifecycle_msgs.srv import GetState

    return client.call(GetState, f'{node}/get_state', GetState.Request()).current_state.id


def _pids(launch: Launch) -> list[int]:
    found = re.findall(r'\[mobius_node-\d+\]: process started with pid \[(\d+)\]', launch.log())
    return [int(pid) for pid in found]


def test_the_launch_file_respawns_a_killed_node_with_its_vocabulary_and_budget(
    launch_env: dict[str, str],
    ros_client: Any,
    checkpoint: Path,
    tmp_path: Path,
    record_property: Any,
) -> None:
    params = _params_file(tmp_path / 'mine.yaml', tmp_path, ['circle', 'star'])
    node = '/restart_launch/mobius'
    launch = _launch(
        launch_env, tmp_path / 'launch.log', 'mobius.launch.py',
        namespace='/restart_launch', image_topic='/restart_launch_cam/image_raw',
        checkpoint=str(checkpoint), params_file=str(params), respawn='true',
        respawn_delay='0.5',
    )  # fmt: skip
    stream = Stream(ros_client, '/restart_launch_cam/image_raw', '/restart_launch/instance_mask')
    try:
        _wait_active(ros_client, launch, node, timeout=240)
        _set_vocabulary(ros_client, node, phrases=['red mug', 'laptop'])
        _set_budget(ros_client, node, 5000.0)
        saved = json.loads((tmp_path / 'state' / 'restart_launch' / 'mobius.json').read_text())
        assert saved['runtime']['vocabulary'] == ['red mug', 'laptop']
        stream.output_after(stream.stamp, timeout=60)  # publishing
        (pid,) = _pids(launch)
        stream.publish()  # the worker is busy with the frames of this stream
        os.kill(pid, signal.SIGKILL)
        killed, last = time.monotonic(), stream.stamp
        first = stream.output_after(last, timeout=240)
        seconds = first - killed
        print(f'\nkill to first result (launch respawn, respawn_delay 0.5 s): {seconds:.2f} s')
        record_property('kill_to_first_result_s', round(seconds, 2))
        assert len(_pids(launch)) == 2, launch.log()[-3000:]
        assert 'process has died' in launch.log()
        assert _state(ros_client, node) == ACTIVE
        vocabulary = _get_vocabulary(ros_client, node)
        assert (list(vocabulary.phrases), vocabulary.task) == (['red mug', 'laptop'], 'vocabulary')
        assert _parameters(ros_client, node, ['latency_budget_ms', 'vocabulary']) == {
            'latency_budget_ms': 5000.0,
            'vocabulary': ['red mug', 'laptop'],
        }
        assert 'restored from' in launch.log()
    finally:
        stream.close()
        assert launch.stop() == 0, launch.log()[-3000:]
    assert len(_pids(launch)) == 2  # a clean stop (SIGINT) is not respawned


def test_a_restarted_node_resumes_and_launch_edits_or_damage_win(
    start_node: Any, ros_client: Any, checkpoint: Path, tmp_path: Path
) -> None:
    namespace = '/restart_plain'
    node = f'{namespace}/mobius'
    settings = dict(
        namespace=namespace,
        checkpoint=str(checkpoint),
        backend='torch',
        input_height=64,
        input_width=96,
        vocabulary=['circle'],
        score_threshold=0.0,
        cache_dir=str(tmp_path / 'text'),
        engine_dir=str(tmp_path / 'engines'),
    )
    stream = Stream(ros_client, f'{namespace}/image', f'{namespace}/instance_mask')

    def start(**changes: Any) -> Any:
        process = start_node(**{**settings, **changes})
        assert process.wait_for_log('active: listening', timeout=180), process.log()
        stream.output_after(stream.stamp, timeout=60)
        return process

    def kill(process: Any) -> None:
        stream.publish()
        process.process.send_signal(signal.SIGKILL)
        process.process.wait(timeout=30)

    try:
        first = start()
        _set_vocabulary(ros_client, node, agnostic=True)
        _set_budget(ros_client, node, 4000.0)
        kill(first)

        again = start()  # same parameters: a supervisor restarting it
        assert _get_vocabulary(ros_client, node).task == 'agnostic'
        assert _parameters(ros_client, node, ['latency_budget_ms', 'task']) == {
            'latency_budget_ms': 4000.0,
            'task': 'agnostic',
        }
        kill(again)

        edited = start(vocabulary=['person'])  # the operator changed the vocabulary
        vocabulary = _get_vocabulary(ros_client, node)
        assert (list(vocabulary.phrases), vocabulary.task) == (['person'], 'vocabulary')
        assert _parameters(ros_client, node, ['latency_budget_ms'])['latency_budget_ms'] == 4000.0
        assert 'saved state not restored for vocabulary' in edited.log(), edited.log()
        kill(edited)

        path = tmp_path / 'state' / 'restart_plain' / 'mobius.json'
        path.write_text(path.read_text()[:40])  # torn by hand or a bad disk
        damaged = start(vocabulary=['person'])
        assert 'saved state ignored' in damaged.log() and 'damaged' in damaged.log()
        assert list(_get_vocabulary(ros_client, node).phrases) == ['person']
        assert _parameters(ros_client, node, ['latency_budget_ms'])['latency_budget_ms'] == 0.0
        assert _state(ros_client, node) == ACTIVE
        _set_vocabulary(ros_client, node, phrases=['cup', 'plate', 'fork'])
        kill(damaged)

        smaller = start(vocabulary=['person'], max_vocabulary=2)  # the saved one no longer fits
        assert 'restored vocabulary refused' in smaller.log(), smaller.log()
        assert list(_get_vocabulary(ros_client, node).phrases) == ['person']
        assert _state(ros_client, node) == ACTIVE
    finally:
        stream.close()
