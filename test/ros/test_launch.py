"""The launch files, run through `launch.LaunchService` (what `ros2 launch` does).

`mobius.launch.py` starts the node on a converted reduced GLEE (`checkpoint:=`) with a preset
and a params file; `bag_replay.launch.py` plays a recorded compressed camera into the demo
model. Each must bring the node to `active`, answer a service and publish on the images it is
given; every launch argument is set once, and a bad one stops the launch with a line naming it.
Where neither a ROS 2 install nor the Jazzy launch sources are here, the tests skip and say so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

RUNNER = Path(__file__).with_name('run_launch.py')
REPO = Path(__file__).resolve().parents[2]
ACTIVE = 3  # lifecycle_msgs/State.PRIMARY_STATE_ACTIVE


@pytest.fixture(scope='module')
def launch_env(interfaces: Any) -> dict[str, str]:
    """The environment of a launch: interfaces, this source tree as an ament prefix."""
    try:
        import launch_ros.actions  # noqa: F401  (imports launch)
    except ImportError as error:
        pytest.skip(
            f'ROS 2 launch is not importable ({error}): source a ROS 2 install, or run'
            ' scripts/install_ros_launch.sh where ../shared/ros-src holds the Jazzy sources'
        )
    from mobius_ros.ros.workspace import package_prefix

    env = interfaces.environment()
    env['AMENT_PREFIX_PATH'] = os.pathsep.join([str(package_prefix()), env['AMENT_PREFIX_PATH']])
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    env.update(HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0')
    return env


@dataclass
class Launch:
    """One `run_launch.py` process and its log."""

    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return int(self.process.returncode)


def _launch(env: dict[str, str], log_path: Path, file: str, **arguments: str) -> Launch:
    argv = [f'{name}:={value}' for name, value in arguments.items()]
    with open(log_path, 'w') as log:
        process = subprocess.Popen(
            [sys.executable, str(RUNNER), str(REPO / 'launch' / file), *argv],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True,
        )  # fmt: skip
    return Launch(process, log_path)


def _params_file(path: Path, cache: Path, vocabulary: list[str]) -> Path:
    import yaml

    values = {
        'input_height': 64,
        'input_width': 96,
        'vocabulary': vocabulary,
        'score_threshold': 0.0,
        'max_detections': 5,
        'cache_dir': str(cache / 'text'),
        'engine_dir': str(cache / 'engines'),
    }
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return path


def _wait_active(client: Any, launch: Launch, node: str, timeout: float) -> None:
    from lifecycle_msgs.srv import GetState

    service = client.node.create_client(GetState, f'{node}/get_state')
    state: list[int] = []

    def active() -> bool:
        assert launch.process.poll() is None, f'the launch exited:\n{launch.log()[-3000:]}'
        if not state and service.service_is_ready():
            future = service.call_async(GetState.Request())
            future.add_done_callback(lambda f: state.append(f.result().current_state.id))
        if state and state[-1] != ACTIVE:
            state.clear()
        return bool(state)

    assert client.wait(active, timeout), f'{node} never became active:\n{launch.log()[-3000:]}'
    client.node.destroy_client(service)


def _parameters(client: Any, node: str, names: list[str]) -> dict[str, Any]:
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    request = GetParameters.Request(names=names)
    answer = client.call(GetParameters, f'{node}/get_parameters', request)
    return {n: parameter_value_to_python(v) for n, v in zip(names, answer.values, strict=True)}


def _rgb(seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 60, (72, 100, 3), dtype=np.uint8)
    rgb[10:40, 20:60] = (220, 30, 30)
    return rgb


def test_mobius_launch_serves_a_converted_glee(
    launch_env: dict[str, str], ros_client: Any, tmp_path: Path
) -> None:
    pytest.importorskip('torch')
    from mobius_ros_msgs.srv import GetVocabulary
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray

    from mobius_ros.model.checkpoint import save_checkpoint
    from scripts.glee_reference import converted_reduced

    checkpoint = tmp_path / 'glee_lite.safetensors'
    save_checkpoint(converted_reduced()[0], checkpoint)
    params = _params_file(tmp_path / 'mine.yaml', tmp_path, ['person', 'cup'])
    launch = _launch(
        launch_env, tmp_path / 'launch.log', 'mobius.launch.py',
        namespace='/launch_glee', image_topic='/launch_glee_cam/image_raw', compressed='false',
        preset='desktop', checkpoint=str(checkpoint), params_file=str(params),
        use_sim_time='false',
    )  # fmt: skip
    try:
        node = '/launch_glee/mobius'
        _wait_active(ros_client, launch, node, timeout=240)
        names = ['checkpoint', 'input_height', 'publish_instance_masks', 'use_sim_time']
        assert _parameters(ros_client, node, names) == {
            'checkpoint': str(checkpoint),  # the argument beats every file
            'input_height': 64,  # params_file, applied after the preset
            'publish_instance_masks': True,  # the desktop preset (default false)
            'use_sim_time': False,
        }
        vocabulary = ros_client.call(
            GetVocabulary, '/launch_glee/get_vocabulary', GetVocabulary.Request()
        )
        assert list(vocabulary.phrases) == ['person', 'cup']
        received = ros_client.subscribe(Detection2DArray, '/launch_glee/detections')
        publisher = ros_client.publisher(Image, '/launch_glee_cam/image_raw')
        rgb = _rgb(0)
        image = Image(height=72, width=100, encoding='rgb8', step=300, data=rgb.tobytes())
        image.header.frame_id = 'glee_camera'

        def answered() -> bool:
            publisher.publish(image)
            return bool(received)

        assert ros_client.wait(answered, timeout=60), launch.log()[-3000:]
        assert received[0].header.frame_id == 'glee_camera'
    finally:
        assert launch.stop() == 0, launch.log()[-3000:]


def test_bag_replay_launch_plays_a_compressed_recording_into_the_node(
    launch_env: dict[str, str], ros_client: Any, tmp_path: Path
) -> None:
    from mobius_ros_msgs.srv import GetVocabulary
    from vision_msgs.msg import Detection2DArray

    from mobius_ros.ros.bag import write_images

    bag = write_images(
        tmp_path / 'run1', [_rgb(n) for n in range(4)],
        topic='/launch_bag_cam/image_raw/compressed', compressed=True, frame_id='bag_camera',
    )  # fmt: skip
    params = _params_file(tmp_path / 'mine.yaml', tmp_path, ['circle', 'star'])
    launch = _launch(
        launch_env, tmp_path / 'launch.log', 'bag_replay.launch.py',
        bag=str(bag), image_topic='/launch_bag_cam/image_raw', compressed='true',
        namespace='/launch_bag', preset='', params_file=str(params), rate='4.0',
    )  # fmt: skip
    try:
        node = '/launch_bag/mobius'
        _wait_active(ros_client, launch, node, timeout=180)
        assert _parameters(ros_client, node, ['use_sim_time', 'compressed']) == {
            'use_sim_time': True,
            'compressed': True,
        }
        vocabulary = ros_client.call(
            GetVocabulary, '/launch_bag/get_vocabulary', GetVocabulary.Request()
        )
        assert list(vocabulary.phrases) == ['circle', 'star']
        received = ros_client.subscribe(Detection2DArray, '/launch_bag/detections')
        assert ros_client.wait(lambda: len(received) >= 2, timeout=60), launch.log()[-3000:]
        assert {m.header.frame_id for m in received} == {'bag_camera'}
        # Recorded stamps are copied through: outputs carry the bag's times, not the wall clock.
        assert {m.header.stamp.sec for m in received} <= {1_700_000_000}
    finally:
        assert launch.stop() == 0, launch.log()[-3000:]


@pytest.mark.parametrize(
    ('file', 'arguments', 'expected'),
    [
        ('mobius.launch.py', {'preset': 'jetson'}, "preset:='jetson' is none of ['desktop'"),
        ('mobius.launch.py', {'compressed': 'yes'}, "compressed:='yes' must be true or false"),
        ('mobius.launch.py', {'checkpoint': '/no/such.safetensors'}, 'no such file'),
        ('mobius.launch.py', {'params_file': '/no/such.yaml'}, 'no such file'),
        ('mobius.launch.py', {'respawn': 'always'}, "respawn:='always' must be true or false"),
        ('mobius.launch.py', {'respawn_delay': '-1'}, "respawn_delay:='-1' must be seconds"),
        ('mobius.launch.py', {'dds_profile': '/no/profile.xml'}, "dds_profile:='/no/profile.xml'"),
        ('bag_replay.launch.py', {}, "missing required argument 'bag'"),
        ('bag_replay.launch.py', {'bag': '/no/bag'}, 'no rosbag2 directory'),
        ('bag_replay.launch.py', {'bag': '.', 'rate': 'fast'}, "rate:='fast' must be a number"),
    ],
)
def test_a_bad_launch_argument_stops_the_launch_with_a_clear_error(
    launch_env: dict[str, str], tmp_path: Path, file: str, arguments: dict, expected: str
) -> None:
    launch = _launch(launch_env, tmp_path / 'launch.log', file, **arguments)
    try:
        launch.process.wait(timeout=60)
    finally:
        launch.stop()
    assert launch.process.returncode != 0
    assert expected in launch.log(), launch.log()
    assert 'process started' not in launch.log()  # nothing was started
