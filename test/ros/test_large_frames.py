"""Camera-sized frames reach the node on its default best-effort subscription.

Over Fast DDS's built-in transports a frame above 0.5 MB (640x480 rgb8 is 0.92 MB) leaves shared
memory for fragmented UDP and is mostly lost on a best-effort topic; the shipped profile
(`config/fastdds_large_frames.xml`, applied by `ros.dds` to every process we start) carries it in
shared memory. Every frame published here must give its output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobius_ros.ros.dds import PROFILE_VARIABLES, dds_environment, large_frames_profile

NAMESPACE = '/mobius_large'


def test_the_profile_is_added_only_where_fast_dds_runs_without_a_profile() -> None:
    profile = large_frames_profile()
    assert profile.is_file() and profile.read_text().lstrip().startswith('<?xml')
    assert dds_environment({}) == {PROFILE_VARIABLES[0]: str(profile)}
    assert dds_environment({'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp'})
    assert dds_environment({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}) == {}
    for name in PROFILE_VARIABLES:  # the user's own profile wins
        assert dds_environment({name: '/etc/my_profile.xml'}) == {}


@pytest.mark.ros
def test_camera_sized_best_effort_frames_all_give_outputs(
    start_node: Any, checkpoint: Path, ros_client: Any
) -> None:
    from sensor_msgs.msg import Image

    assert any(os.environ.get(name) for name in PROFILE_VARIABLES)
    node = start_node(
        namespace=NAMESPACE, checkpoint=str(checkpoint), backend='torch',
        input_height=64, input_width=96, vocabulary=['red box'],
    )  # fmt: skip
    assert node.wait_for_log('active: listening', timeout=90), node.log()
    masks = ros_client.subscribe(Image, f'{NAMESPACE}/instance_mask')
    publisher = ros_client.publisher(Image, f'{NAMESPACE}/image')
    rng = np.random.default_rng(0)
    stamp, resent = 0, 0
    for height, width in ((480, 640), (720, 1280)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(3):
            # Best effort: a frame lost under load stays lost, so each may be sent twice (without
            # the profile most never arrive however often they are sent).
            for _ in range(2):
                stamp += 1
                msg = Image(height=height, width=width, encoding='rgb8', step=width * 3,
                            data=rgb.tobytes())  # fmt: skip
                msg.header.stamp.sec = stamp
                publisher.publish(msg)
                arrived = ros_client.wait(
                    lambda s=stamp: any(m.header.stamp.sec == s for m in masks), timeout=15
                )
                if arrived:
                    break
                resent += 1
            assert arrived, f'{width}x{height} frame {stamp} gave no output\n{node.excerpt()}'
            out = next(m for m in masks if m.header.stamp.sec == stamp)
            assert (out.height, out.width) == (height, width)
    assert resent <= 1, f'{resent} of 6 camera-sized frames had to be sent again'
