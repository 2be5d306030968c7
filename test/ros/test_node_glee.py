"""The node serving a converted GLEE-Lite (reduced, seeded GLEE weights) on ONNX Runtime.

The checkpoint comes out of the converter exactly as a real GLEE file would; the node exports
it, and answers a class list, "any object" and a referring expression through `segment`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

NAMESPACE = '/mobius_test'  # as test/ros/conftest.py starts the node


@pytest.fixture(scope='module')
def glee_node(start_node: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mobius_ros.model.checkpoint import save_checkpoint
    from scripts.glee_reference import converted_reduced

    model, _ = converted_reduced()
    path = tmp_path_factory.mktemp('glee') / 'glee_lite.safetensors'
    save_checkpoint(model, path)
    process = start_node(
        checkpoint=str(path),
        backend='onnxruntime',
        input_height=64,
        input_width=96,
        vocabulary=['person', 'cup'],
        score_threshold=0.0,
        max_detections=5,
    )
    assert process.wait_for_log('active: listening', timeout=180), process.log()
    return process


def test_converted_glee_answers_all_three_tasks(glee_node: Any, ros_client: Any) -> None:
    from mobius_ros_msgs.srv import Segment
    from sensor_msgs.msg import Image

    rgb = np.random.default_rng(0).integers(0, 255, (72, 100, 3), dtype=np.uint8)
    image = Image(height=72, width=100, encoding='rgb8', step=300)
    image.data = rgb.tobytes()
    topic = f'{NAMESPACE}/segment'
    vocabulary = ros_client.call(Segment, topic, Segment.Request(image=image, phrases=['cup']))
    assert vocabulary.success, vocabulary.message
    assert list(vocabulary.result.phrases) == ['cup']
    assert len(vocabulary.result.detections.detections) == 5
    agnostic = ros_client.call(Segment, topic, Segment.Request(image=image, agnostic=True))
    assert agnostic.success and list(agnostic.result.phrases) == ['object']
    referring = ros_client.call(
        Segment,
        topic,
        Segment.Request(image=image, expression='the cup left of the laptop', score_threshold=0.0),
    )
    assert referring.success, referring.message
    assert len(referring.result.detections.detections) <= 1
    assert glee_node.alive()
