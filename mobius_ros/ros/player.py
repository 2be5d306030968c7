"""Play a rosbag2 recording onto a live ROS 2 graph: `mobius_bag_play BAG [--rate R] [--loop]`.

What `ros2 bag play --clock` does for the bag-replay launch, on machines whose ROS 2 comes from
the PyPI wheels (no rosbag2 there): the recorded CDR bytes of each topic are published as they
are, at the recorded pace scaled by `--rate`, and `/clock` follows the recording's time (for
nodes with `use_sim_time`). Topics whose message type is not importable here are skipped, with
one line saying so. mcap and sqlite3 bags are read with `rosbags`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _message_class(msgtype: str) -> Any | None:
    """'sensor_msgs/msg/Image' -> the rclpy class, or None where the package is missing."""
    package, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError):
        return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='mobius_bag_play', description=__doc__.splitlines()[0])
    parser.add_argument('bag', type=Path, help='rosbag2 directory (mcap or sqlite3)')
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed (> 0)')
    parser.add_argument('--loop', action='store_true', help='start over at the end')
    parser.add_argument('--clock', action='store_true', help='publish /clock from the bag')
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error(f'--rate must be > 0, got {args.rate}')
    if not args.bag.is_dir():
        parser.error(f'--bag: no rosbag2 directory at {args.bag}')
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; takes --ros-args after its own arguments (as launch_ros passes them)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.utilities import remove_ros_args

    argv = list(sys.argv if argv is None else argv)
    args = parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = rclpy.create_node('mobius_bag_play')
    try:
        _play(node, args)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _play(node: Any, args: argparse.Namespace) -> None:
    import rclpy
    from rosbags.rosbag2 import Reader
    from rosgraph_msgs.msg import Clock

    clock = node.create_publisher(Clock, '/clock', 10) if args.clock else None
    with Reader(args.bag) as reader:
        publishers: dict[int, Any] = {}
        for connection in reader.connections:
            kind = _message_class(connection.msgtype)
            if kind is None:
                node.get_logger().warning(
                    f'skipping {connection.topic}: {connection.msgtype} is not importable here'
                )
                continue
            publishers[connection.id] = node.create_publisher(kind, connection.topic, 10)
        node.get_logger().info(
            f'playing {args.bag} ({reader.message_count} messages) at rate {args.rate}'
        )
        while rclpy.ok():
            start_wall, start_bag = time.monotonic(), None
            for connection, timestamp, raw in reader.messages():
                if not rclpy.ok():
                    return
                start_bag = timestamp if start_bag is None else start_bag
                delay = (timestamp - start_bag) / 1e9 / args.rate - (time.monotonic() - start_wall)
                if delay > 0:
                    time.sleep(delay)
                if clock is not None:
                    message = Clock()
                    message.clock.sec, message.clock.nanosec = divmod(timestamp, 1_000_000_000)
                    clock.publish(message)
                publisher = publishers.get(connection.id)
                if publisher is not None:
                    publisher.publish(bytes(raw))
            if not args.loop:
                return


if __name__ == '__main__':
    sys.exit(main())
