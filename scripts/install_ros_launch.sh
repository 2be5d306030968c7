#!/usr/bin/env bash
# Install the Jazzy `launch` and `launch_ros` Python packages into a virtual environment from the
# sources beside the repository (../shared/ros-src, see its README), for machines whose ROS 2
# comes from the PyPI wheels, which lack them. A sourced ROS 2 install already has them: nothing
# to do. Without either, the launch tests skip and say why.
#
#   scripts/install_ros_launch.sh            (PYTHON=.venv/bin/python by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
SOURCES="${ROS_SOURCES:-../shared/ros-src}"
if "$PYTHON" -c 'import launch, launch_ros' 2>/dev/null; then
  echo 'launch and launch_ros are already importable'
  exit 0
fi
if [ ! -d "$SOURCES/launch/launch" ] || [ ! -d "$SOURCES/launch_ros/launch_ros" ]; then
  echo "no ROS 2 launch sources in $SOURCES: the launch tests will skip" >&2
  exit 0
fi
# The sources may be read-only; setuptools writes its egg-info beside them, so build from a copy.
WORK=build/ros-src
rm -rf "$WORK"
mkdir -p "$WORK"
cp -r "$SOURCES/launch/launch" "$SOURCES/launch_ros/launch_ros" "$WORK/"
chmod -R u+w "$WORK"
# --no-deps: their declared dependencies name ROS packages (ament_index_python) that the
# ros-jazzy-* wheels provide under other distribution names; osrf-pycommon and lark come from
# the `ros` extra.
"$PYTHON" -m pip install --quiet --no-deps "$WORK/launch" "$WORK/launch_ros"
echo "installed launch and launch_ros from $SOURCES"
