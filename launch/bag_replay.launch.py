"""Replay a rosbag2 recording into the mobius node (sim time), e.g. to watch debug_image in rviz.

    ros2 launch mobius_ros bag_replay.launch.py bag:=/data/run1 image_topic:=/camera/image_raw

The recording is played by `mobius_bag_play` (mobius_ros/ros/player.py: the recorded messages
and /clock, looped, at `rate`), which runs where rosbag2 is not installed too. For offline
processing without a live graph, `mobius bag IN OUT --image-topic ...` writes a new bag.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription


def _player(context: object) -> list[Node]:
    bag = os.path.expanduser(LaunchConfiguration('bag').perform(context))
    if not os.path.isdir(bag):
        raise FileNotFoundError(f"launch argument bag:='{bag}': no rosbag2 directory there")
    rate = LaunchConfiguration('rate').perform(context)
    try:
        valid = float(rate) > 0
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"launch argument rate:='{rate}' must be a number > 0")
    return [
        Node(
            package='mobius_ros',
            executable='mobius_bag_play',
            arguments=[bag, '--clock', '--loop', '--rate', rate],
            output='screen',
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory('mobius_ros')
    mobius = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'mobius.launch.py')),
        launch_arguments={
            'namespace': LaunchConfiguration('namespace'),
            'image_topic': LaunchConfiguration('image_topic'),
            'compressed': LaunchConfiguration('compressed'),
            'preset': LaunchConfiguration('preset'),
            'params_file': LaunchConfiguration('params_file'),
            'use_sim_time': 'true',
        }.items(),
    )
    play = OpaqueFunction(function=_player)
    return LaunchDescription(
        [
            DeclareLaunchArgument('bag', description='rosbag2 directory (mcap or sqlite3)'),
            DeclareLaunchArgument('image_topic', default_value='/camera/image_raw'),
            DeclareLaunchArgument('compressed', default_value='false'),
            DeclareLaunchArgument('namespace', default_value=''),
            DeclareLaunchArgument('preset', default_value=''),
            DeclareLaunchArgument('params_file', default_value=''),
            DeclareLaunchArgument('rate', default_value='1.0', description='playback speed'),
            play,  # first: a bad bag or rate stops the launch before the node loads a model
            mobius,
        ]
    )
