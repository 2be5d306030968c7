"""The demo's rclpy side: a simulated camera, subscriptions to every output, service calls.

One plain rclpy node spun by a single-threaded executor on the caller's thread, so callbacks,
the recorder (not thread-safe) and the caller never race. Every received message and every
published image is also written to the session recording.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobius_ros.demo.recorder import SessionRecorder

# (key, relative topic, 'pkg/msg/Name', latched)
OUTPUTS: tuple[tuple[str, str, str, bool], ...] = (
    ('detections', 'detections', 'vision_msgs/msg/Detection2DArray', False),
    ('segmentation', 'segmentation', 'mobius_ros_msgs/msg/InstanceSegmentation', False),
    ('instance_mask', 'instance_mask', 'sensor_msgs/msg/Image', False),
    ('debug_image', 'debug_image', 'sensor_msgs/msg/Image', False),
    ('label_info', 'label_info', 'vision_msgs/msg/LabelInfo', True),
)
DIAGNOSTICS = ('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray')
IMAGE_TYPE = 'sensor_msgs/msg/Image'


class ServiceError(RuntimeError):
    """A service did not appear or did not answer in time."""


def message_class(type_name: str) -> type:
    """The rclpy class of 'pkg/msg/Name' (or 'pkg/srv/Name')."""
    import importlib

    package, kind, name = type_name.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), name)


def stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)


@dataclass
class Received:
    """Messages received per output key, with their arrival times (monotonic seconds)."""

    messages: dict[str, list[Any]] = field(default_factory=dict)
    arrival: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, msg: Any) -> None:
        self.messages.setdefault(key, []).append(msg)
        self.arrival.setdefault(key, []).append(time.monotonic())

    def count(self, key: str) -> int:
        return len(self.messages.get(key, ()))


class DemoClient:
    """Camera publisher, output subscriptions and service clients of the node in `namespace`.

    Args:
        namespace: the node's namespace ('/mobius_demo'); its image topic is `<ns>/image`.
        recorder: where published and received messages are recorded (None: not recorded).
        on_message: called as (key, message) after each received output is stored.
    """

    def __init__(
        self,
        namespace: str,
        recorder: SessionRecorder | None = None,
        on_message: Callable[[str, Any], None] | None = None,
    ) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile

        self.namespace = namespace.rstrip('/')
        self.recorder = recorder
        self.received = Received()
        self._on_message = on_message
        self._context = rclpy.Context()
        rclpy.init(context=self._context)
        self.node = rclpy.create_node('mobius_demo_client', context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self.image_topic = f'{self.namespace}/image'
        self._camera = self.node.create_publisher(message_class(IMAGE_TYPE), self.image_topic, 5)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._subscriptions = []
        for key, relative, type_name, is_latched in OUTPUTS:
            topic = f'{self.namespace}/{relative}'
            self._subscriptions.append(
                self.node.create_subscription(
                    message_class(type_name),
                    topic,
                    self._callback(key, topic, type_name),
                    latched if is_latched else 10,
                )
            )
        topic, type_name = DIAGNOSTICS
        self._subscriptions.append(
            self.node.create_subscription(
                message_class(type_name),
                topic,
                self._callback('diagnostics', topic, type_name),
                10,
            )
        )
        self._clients: dict[str, Any] = {}

    # Spinning ----------------------------------------------------------------------------------

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._executor.spin_once(timeout_sec=min(0.05, max(deadline - time.monotonic(), 0)))

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Spin until `condition()` holds or `timeout` seconds pass; the final value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            self._executor.spin_once(timeout_sec=0.05)
        return condition()

    def wait_connected(self, timeout: float) -> bool:
        """The node subscribes to the camera and publishes every output topic to us."""

        def connected() -> bool:
            if self._camera.get_subscription_count() < 1:
                return False
            return all(
                self.node.count_publishers(f'{self.namespace}/{relative}') >= 1
                for _, relative, _, _ in OUTPUTS
            )

        return self.wait(connected, timeout)

    # Camera ------------------------------------------------------------------------------------

    def publish_image(self, rgb: np.ndarray, frame_id: str = 'camera') -> tuple[int, int]:
        """Publish [H, W, 3] uint8 RGB as rgb8, stamped now; returns its stamp (sec, nanosec)."""
        msg = self.image_message(rgb, frame_id)
        self._camera.publish(msg)
        self._record(self.image_topic, IMAGE_TYPE, msg)
        return stamp_key(msg.header)

    def image_message(self, rgb: np.ndarray, frame_id: str = 'camera') -> Any:
        """An rgb8 sensor_msgs/Image of `rgb`, stamped with the node clock's now."""
        from mobius_ros.ros import messages
        from mobius_ros.ros.conversions import rgb_to_image_fields

        header = message_class('std_msgs/msg/Header')(
            stamp=self.node.get_clock().now().to_msg(), frame_id=frame_id
        )
        return messages.image(messages.RclpyFactory(), header, rgb_to_image_fields(rgb))

    # Services ----------------------------------------------------------------------------------

    def call(self, type_name: str, relative: str, request: Any, timeout: float = 60.0) -> Any:
        """Call the node's service `<ns>/<relative>` and wait for the answer."""
        name = f'{self.namespace}/{relative}'
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(message_class(type_name), name)
        if not client.wait_for_service(timeout_sec=min(timeout, 30.0)):
            raise ServiceError(f'service {name} is not available')
        future = client.call_async(request)
        if not self.wait(future.done, timeout):
            raise ServiceError(f'service {name} did not answer within {timeout:.0f} s')
        return future.result()

    def request(self, type_name: str, **fields: Any) -> Any:
        """A request of service 'pkg/srv/Name' with `fields` set."""
        request = message_class(type_name).Request()
        for name, value in fields.items():
            setattr(request, name, value)
        return request

    def set_parameter(self, name: str, value: float, timeout: float = 30.0) -> tuple[bool, str]:
        """Set one double parameter of the node through its parameter service (what
        `ros2 param set` does); (accepted, the node's reason when it refused)."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue

        request = self.request('rcl_interfaces/srv/SetParameters')
        request.parameters = [
            Parameter(
                name=name,
                value=ParameterValue(
                    type=ParameterType.PARAMETER_DOUBLE, double_value=float(value)
                ),
            )
        ]
        reply = self.call(
            'rcl_interfaces/srv/SetParameters', 'mobius/set_parameters', request, timeout
        )
        result = reply.results[0]
        return bool(result.successful), str(result.reason)

    def change_state(self, transition: int, timeout: float = 30.0) -> bool:
        """Ask the lifecycle node for a transition (lifecycle_msgs/Transition id)."""
        request = self.request('lifecycle_msgs/srv/ChangeState')
        request.transition.id = transition
        return bool(
            self.call(
                'lifecycle_msgs/srv/ChangeState', 'mobius/change_state', request, timeout
            ).success
        )

    # Internals ---------------------------------------------------------------------------------

    def _callback(self, key: str, topic: str, type_name: str) -> Callable[[Any], None]:
        def received(msg: Any) -> None:
            self.received.add(key, msg)
            self._record(topic, type_name, msg)
            if self._on_message is not None:
                self._on_message(key, msg)

        return received

    def _record(self, topic: str, type_name: str, msg: Any) -> None:
        if self.recorder is None:
            return
        from rclpy.serialization import serialize_message

        self.recorder.write(topic, type_name, time.time_ns(), serialize_message(msg))

    def close(self) -> None:
        import rclpy

        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._context)
