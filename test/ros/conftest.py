"""ROS test harness: interfaces built once, the node in its own process, a client in this one.

Everything stays on this machine: a ROS domain id unique to this run and localhost-only
discovery. Tests marked `ros` skip with the reason when rclpy (the ros-jazzy wheels) is missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mobius_ros.demo.launcher import NodeProcess
from mobius_ros.demo.launcher import start_node as launch_node
from mobius_ros.ros.dds import dds_environment

# Before anything imports rclpy: this run's own DDS domain, discovery on loopback only.
os.environ['ROS_DOMAIN_ID'] = str(100 + os.getpid() % 100)
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
# Camera-sized frames on best-effort topics need the shipped Fast DDS profile (ros.dds), here as
# in the launch file and the demo; the node and the test's publishers both read it.
os.environ.update(dds_environment())

NAMESPACE = '/mobius_test'


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import rclpy  # noqa: F401
    except ImportError as error:
        skip = pytest.mark.skip(reason=f'rclpy (ros-jazzy-* wheels) not importable: {error}')
        for item in items:
            if item.get_closest_marker('ros') is not None:
                item.add_marker(skip)


class InstalledInterfaces:
    """Interfaces already importable (a sourced ROS workspace, e.g. colcon test): no build."""

    installed = True

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def activate(self) -> None:
        """Nothing to do: the workspace's setup script set every path."""


@pytest.fixture(scope='session')
def interfaces() -> Any:
    """vision_msgs (fixture) and mobius_ros_msgs, built with cmake unless up to date."""
    from mobius_ros.ros.interfaces import InterfaceBuildError, build_interfaces

    try:
        import mobius_ros_msgs.msg  # noqa: F401
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        pass
    else:
        return InstalledInterfaces()

    try:
        install = build_interfaces()
    except InterfaceBuildError as error:
        pytest.fail(str(error))
    install.activate()
    return install


@pytest.fixture(scope='session')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init MOBIUS-tiny checkpoint (no download; the demo model may not exist yet)."""
    pytest.importorskip('torch')
    import torch

    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('model') / 'tiny.safetensors'
    save_checkpoint(build_model('MOBIUS-tiny').eval(), path)
    return path


StartNode = Callable[..., NodeProcess]


@pytest.fixture(scope='session')
def tiny_node(checkpoint: Path) -> dict[str, Any]:
    """Parameters of the small, fast node most ROS tests run: the random-init tiny checkpoint
    on PyTorch, a 64x96 canvas, one phrase and every instance kept."""
    return {
        'checkpoint': str(checkpoint),
        'backend': 'torch',
        'input_height': 64,
        'input_width': 96,
        'vocabulary': ['red box'],
        'score_threshold': 0.0,
    }


@pytest.fixture(scope='module')
def start_node(interfaces: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartNode]:
    """Start `python -m mobius_ros.ros.node` with parameters; stopped at module end."""
    started: list[NodeProcess] = []

    def start(
        *, namespace: str = NAMESPACE, without_msgs: bool = False, **parameters: Any
    ) -> NodeProcess:
        env = interfaces.environment()
        if without_msgs:
            if getattr(interfaces, 'installed', False):
                pytest.skip('mobius_ros_msgs is installed in this workspace; cannot hide it')
            # Only mobius_ros_msgs goes missing: a second prefix holds vision_msgs alone.
            env['PYTHONPATH'] = _vision_only(interfaces)
        cache = tmp_path_factory.mktemp('cache')
        parameters.setdefault('cache_dir', str(cache / 'text'))
        parameters.setdefault('engine_dir', str(cache / 'engines'))
        node = launch_node(
            environment=env,
            parameters=parameters,
            namespace=namespace,
            log_path=tmp_path_factory.mktemp('node') / 'node.log',
        )
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _vision_only(interfaces: Any) -> str:
    site = interfaces.python_path
    only = site.parent.parent.parent / 'vision_only'
    only.mkdir(exist_ok=True)
    link = only / 'vision_msgs'
    if not link.exists():
        link.symlink_to(site / 'vision_msgs')
    return str(only)


@pytest.fixture(scope='session')
def ros_client(interfaces: Any) -> Iterator[Any]:
    """An rclpy node in the test process, spun on demand by `Client.wait`."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('mobius_test_client', context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield Client(node, executor)
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown(context=context)


class Client:
    """Subscriptions that collect messages, service calls that wait, all with timeouts."""

    def __init__(self, node: Any, executor: Any) -> None:
        self.node = node
        self.executor = executor
        self.received: dict[str, list[Any]] = {}
        self._subscriptions: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def wait(self, condition: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.05)
        return condition()

    def subscribe(self, kind: type, topic: str, qos: Any = 10) -> list[Any]:
        if topic not in self._subscriptions:
            self.received[topic] = []
            self._subscriptions[topic] = self.node.create_subscription(
                kind, topic, self.received[topic].append, qos
            )
        return self.received[topic]

    def call(self, kind: type, name: str, request: Any, timeout: float = 60.0) -> Any:
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(kind, name)
        assert client.wait_for_service(timeout_sec=timeout), f'service {name} never appeared'
        future = client.call_async(request)
        assert self.wait(future.done, timeout), f'service {name} did not answer in {timeout} s'
        return future.result()

    def publisher(self, kind: type, topic: str, qos: Any = 10, timeout: float = 20.0) -> Any:
        """A publisher that the node's subscription has already matched (discovery is
        asynchronous: a message published before the match is lost)."""
        publisher = self.node.create_publisher(kind, topic, qos)
        matched = self.wait(lambda: publisher.get_subscription_count() > 0, timeout)
        assert matched, f'nothing subscribes to {topic}'
        return publisher
