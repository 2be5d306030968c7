"""`python test/ros/run_launch.py FILE [name:=value ...]`: what `ros2 launch FILE ...` does.

The ros2 CLI is not part of the PyPI wheels; `launch.LaunchService` is the engine behind it, so
the launch tests drive their launch files through it in a process of their own (SIGINT stops
the launch and everything it started, as Ctrl-C does for `ros2 launch`). Exit code: the
service's (non-zero when the launch failed).
"""

from __future__ import annotations

import sys

from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource

from launch import LaunchDescription, LaunchService


def main(argv: list[str]) -> int:
    path, *arguments = argv
    pairs = [argument.split(':=', 1) for argument in arguments]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f'arguments are name:=value, got {arguments}')
    service = LaunchService(argv=arguments, noninteractive=True)
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(path), launch_arguments=[tuple(p) for p in pairs]
    )
    service.include_launch_description(LaunchDescription([include]))
    return service.run()


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
