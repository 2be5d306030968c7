#!/usr/bin/env bash
# Source ROS and the colcon workspace (or the Jetson image's install), then run the command.
set -e
for setup in /opt/ros/"${ROS_DISTRO:-jazzy}"/setup.bash /opt/ros/"${ROS_DISTRO:-jazzy}"/install/setup.bash \
             /ws/install/setup.bash; do
    # shellcheck disable=SC1090
    [ -f "$setup" ] && source "$setup"
done
exec "$@"
