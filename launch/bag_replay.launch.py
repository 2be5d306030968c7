"""Replay a rosbag2 recording into the mobius node (sim time), e.g. to watch debug_image in rviz.

    ros2 launch mobius_ros bag_replay.launch.py bag:=/data/run1 image_topic:=/camera/image_raw

For offline processing without ROS, `mobius bag IN OUT --image-topic ...` writes a new bag.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from launch import LaunchDescription


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
    play = ExecuteProcess(
        cmd=['ros2', 'bag', 'play', LaunchConfiguration('bag'), '--clock', '--loop',
             '--rate', LaunchConfiguration('rate')],
        output='screen',
    )  # fmt: skip
    return LaunchDescription(
        [
            DeclareLaunchArgument('bag', description='rosbag2 directory (mcap or sqlite3)'),
            DeclareLaunchArgument('image_topic', default_value='/camera/image_raw'),
            DeclareLaunchArgument('compressed', default_value='false'),
            DeclareLaunchArgument('namespace', default_value=''),
            DeclareLaunchArgument('preset', default_value=''),
            DeclareLaunchArgument('params_file', default_value=''),
            DeclareLaunchArgument('rate', default_value='1.0', description='playback speed'),
            mobius,
            play,
        ]
    )
