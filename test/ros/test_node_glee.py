"""The node and the demo serving a converted GLEE-Lite (reduced, seeded GLEE weights) on ONNX
Runtime.

The checkpoint comes out of the converter exactly as a real GLEE file would; the node exports
it, and answers a class list, "any object" and a referring expression through `segment`; the
demo plays its camera, services and lifecycle through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_demo import _run_demo

pytestmark = pytest.mark.ros

NAMESPACE = '/mobius_test'  # as test/ros/conftest.py starts the node


@pytest.fixture(scope='module')
def glee_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mobius_ros.model.checkpoint import save_checkpoint
    from scripts.glee_reference import converted_reduced

    model, _ = converted_reduced()
    path = tmp_path_factory.mktemp('glee') / 'glee_lite.safetensors'
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope='module')
def glee_node(start_node: Any, glee_checkpoint: Path) -> Any:
    process = start_node(
        checkpoint=str(glee_checkpoint),
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


@pytest.mark.slow
def test_demo_runs_on_a_converted_glee(
    interfaces: Any, glee_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / 'out'
    done = _run_demo(
        out, '--frames', '3', '--rate', '4', '--checkpoint', str(glee_checkpoint),
        '--input-size', '64', '96', '--score-threshold', '0',
        '--engine-dir', str(tmp_path / 'engines'), '--cache-dir', str(tmp_path / 'text'),
    )  # fmt: skip
    assert done.returncode == 0, f'{done.stdout}\n{done.stderr}'
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ok'] and summary['frames']['processed'] > 0
    assert summary['vocabulary']['success'] and summary['agnostic']['phrases'] == ['object']
    assert summary['referring']['answered'] and summary['referring']['success']
    assert summary['node_exit_code'] == 0
