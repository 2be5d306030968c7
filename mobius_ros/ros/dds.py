"""The DDS settings camera-sized frames need: the Fast DDS large-frames profile.

Fast DDS's built-in shared-memory segments are 0.5 MB, so a 640x480 rgb8 frame (0.92 MB) falls
back to fragmented UDP and, on the best-effort topics cameras publish, is mostly lost whole
(measured: 4 of 9 such frames reached the node, 9 of 9 with this profile; see
`config/fastdds_large_frames.xml`). The profile must be in effect for the publisher as well as
the node, so it is applied to the environment of every process we start (launch file, demo,
tests), never inside the node alone, and never over a profile the user chose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PROFILE_NAME = 'fastdds_large_frames.xml'
PROFILE_VARIABLES = ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE')


def large_frames_profile() -> Path:
    """The shipped profile: from the installed package's share folder, else this checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory('mobius_ros')) / 'config' / PROFILE_NAME
        if installed.is_file():
            return installed
    except Exception:  # not installed as a ROS package (pip / a source checkout)
        pass
    return Path(__file__).resolve().parents[2] / 'config' / PROFILE_NAME


def dds_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to add to `env` (default: os.environ) so that large frames arrive.

    Empty when the middleware is not Fast DDS or a profile file is already set.
    """
    env = os.environ if env is None else env
    if env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') not in ('rmw_fastrtps_cpp', ''):
        return {}
    if any(env.get(name) for name in PROFILE_VARIABLES):
        return {}
    profile = large_frames_profile()
    return {PROFILE_VARIABLES[0]: str(profile)} if profile.is_file() else {}
