#!/usr/bin/env bash
# Build mobius_ros_msgs (and the vision_msgs test fixture) with cmake against the ros-jazzy-*
# wheels of a virtual environment, for machines without a ROS 2 install. Cached: a second run
# with unchanged sources returns at once. With a real ROS 2, use colcon instead (see README).
#
#   scripts/build_interfaces.sh [--build-dir build/interfaces] [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m mobius_ros.ros.interfaces --with-vision-msgs "$@"
