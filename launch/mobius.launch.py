"""Launch the mobius node for one camera.

    ros2 launch mobius_ros mobius.launch.py namespace:=front image_topic:=/front/image_raw \
        preset:=orin_nano params_file:=/path/to/my.yaml
    ros2 launch mobius_ros mobius.launch.py preset:=glee_lite checkpoint:=/models/glee.safetensors

Parameters come from YAML, not launch arguments: config/mobius.yaml (defaults), then the device
preset (orin_nano, orin_agx, desktop, glee_lite; optional), then your params_file (optional),
later files overriding earlier ones; a non-empty `checkpoint` argument overrides them all.
One node per camera namespace; engines are shared on disk. A bad argument (an unknown preset, a
missing file, a flag that is not true/false) stops the launch with a line naming it.

A node process that dies (a crash, the OOM killer, SIGKILL) is started again after
`respawn_delay` seconds (`respawn:=false` to leave it dead); the `autostart` parameter brings
the new process back to active, and the vocabulary and latency budget set at run time come back
from the node's state file (`persist_state`).
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from launch import LaunchDescription


def _flag(context: object, name: str) -> bool:
    value = LaunchConfiguration(name).perform(context)
    if value.lower() not in ('true', 'false'):
        raise ValueError(f"launch argument {name}:='{value}' must be true or false")
    return value.lower() == 'true'


def _existing(context: object, name: str) -> str:
    value = os.path.expanduser(LaunchConfiguration(name).perform(context))
    if value and not os.path.exists(value):
        raise FileNotFoundError(f"launch argument {name}:='{value}': no such file or folder")
    return value


def _node(context: object) -> list[LifecycleNode]:
    share = get_package_share_directory('mobius_ros')
    config = os.path.join(share, 'config')
    files = [os.path.join(config, 'mobius.yaml')]
    preset = LaunchConfiguration('preset').perform(context)
    if preset:
        presets = sorted(n[:-5] for n in os.listdir(config) if n.endswith('.yaml'))
        presets.remove('mobius')
        if preset not in presets:
            raise ValueError(f"launch argument preset:='{preset}' is none of {presets}")
        files.append(os.path.join(config, f'{preset}.yaml'))
    params_file = _existing(context, 'params_file')
    if params_file:
        files.append(params_file)
    compressed = _flag(context, 'compressed')
    image_topic = LaunchConfiguration('image_topic').perform(context)
    if not image_topic:
        raise ValueError('launch argument image_topic must not be empty')
    source = 'image/compressed' if compressed else 'image'
    target = f'{image_topic}/compressed' if compressed else image_topic
    use_sim_time = _flag(context, 'use_sim_time')
    overrides: dict[str, object] = {'use_sim_time': use_sim_time, 'compressed': compressed}
    checkpoint = _existing(context, 'checkpoint')
    if checkpoint:
        overrides['checkpoint'] = checkpoint
    delay = LaunchConfiguration('respawn_delay').perform(context)
    try:
        respawn_delay = float(delay)
    except ValueError:
        respawn_delay = -1.0
    if not respawn_delay >= 0:  # also NaN
        raise ValueError(f"launch argument respawn_delay:='{delay}' must be seconds >= 0")
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
            respawn=_flag(context, 'respawn'),
            respawn_delay=respawn_delay,
        )
    ]


def _dds_profile(context: object) -> list[SetEnvironmentVariable]:
    # Camera-sized frames (640x480 rgb8 is 0.92 MB) exceed Fast DDS's 0.5 MB shared-memory
    # segments and are mostly lost on best-effort topics: the shipped profile is set for every
    # process this launch starts after it, unless another middleware or the user's own profile
    # is in the environment; a file given as the argument always wins.
    value = os.path.expanduser(LaunchConfiguration('dds_profile').perform(context))
    if value.lower() in ('', 'none', 'false'):
        return []
    if value != 'default':
        if not os.path.isfile(value):
            raise FileNotFoundError(f"launch argument dds_profile:='{value}': no such file")
        return [SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', value)]
    if os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        return []
    if any(os.environ.get(v) for v in ('FASTRTPS_DEFAULT_PROFILES_FILE',
                                         'FASTDDS_DEFAULT_PROFILES_FILE')):  # fmt: skip
        return []
    share = get_package_share_directory('mobius_ros')
    profile = os.path.join(share, 'config', 'fastdds_large_frames.xml')
    return [SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', profile)]


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
            DeclareLaunchArgument(
                'respawn', default_value='true', description='start the node again if it dies'
            ),
            DeclareLaunchArgument(
                'respawn_delay', default_value='1.0', description='seconds before a respawn'
            ),
            DeclareLaunchArgument(
                'dds_profile',
                default_value='default',
                description='Fast DDS profile for camera-sized frames: default (shipped), a'
                ' file, or none',
            ),
            OpaqueFunction(function=_dds_profile),
            OpaqueFunction(function=_node),
        ]
    )
