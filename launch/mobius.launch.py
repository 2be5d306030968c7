"""Launch the mobius node for one camera.

    ros2 launch mobius_ros mobius.launch.py namespace:=front image_topic:=/front/image_raw \
        preset:=orin_nano params_file:=/path/to/my.yaml
    ros2 launch mobius_ros mobius.launch.py preset:=glee_lite checkpoint:=/models/glee.safetensors

Parameters come from YAML, not launch arguments: config/mobius.yaml (defaults), then the device
preset (orin_nano, orin_agx, desktop, glee_lite; optional), then your params_file (optional),
later files overriding earlier ones; a non-empty `checkpoint` argument overrides them all.
One node per camera namespace; engines are shared on disk.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription


def _node(context: object) -> list[LifecycleNode]:
    share = get_package_share_directory('mobius_ros')
    files = [os.path.join(share, 'config', 'mobius.yaml')]
    preset = LaunchConfiguration('preset').perform(context)
    if preset:
        files.append(os.path.join(share, 'config', f'{preset}.yaml'))
    params_file = LaunchConfiguration('params_file').perform(context)
    if params_file:
        files.append(params_file)
    compressed = LaunchConfiguration('compressed').perform(context).lower() == 'true'
    image_topic = LaunchConfiguration('image_topic').perform(context)
    source = 'image/compressed' if compressed else 'image'
    target = f'{image_topic}/compressed' if compressed else image_topic
    use_sim_time = LaunchConfiguration('use_sim_time').perform(context).lower() == 'true'
    overrides: dict[str, object] = {'use_sim_time': use_sim_time, 'compressed': compressed}
    checkpoint = LaunchConfiguration('checkpoint').perform(context)
    if checkpoint:
        overrides['checkpoint'] = os.path.expanduser(checkpoint)
    return [
        LifecycleNode(
            package='mobius_ros',
            executable='mobius_node',
            name='mobius',
            namespace=LaunchConfiguration('namespace'),
            parameters=[*files, overrides],
            remappings=[(source, target)],
            output='screen',
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            DeclareLaunchArgument('namespace', default_value='', description='camera namespace'),
            DeclareLaunchArgument(
                'image_topic', default_value='image_raw', description='camera image topic'
            ),
            DeclareLaunchArgument(
                'compressed',
                default_value='false',
                description='subscribe <image_topic>/compressed',
            ),
            DeclareLaunchArgument(
                'preset',
                default_value='',
                description='orin_nano | orin_agx | desktop | glee_lite | empty',
            ),
            DeclareLaunchArgument(
                'checkpoint',
                default_value='',
                description='model checkpoint (.safetensors, e.g. a converted GLEE) or export '
                'folder; overrides the parameter files',
            ),
            DeclareLaunchArgument(
                'params_file', default_value='', description='your parameters (YAML), applied last'
            ),
            DeclareLaunchArgument(
                'use_sim_time', default_value='false', description='use /clock (bag replay)'
            ),
            OpaqueFunction(function=_node),
        ]
    )
