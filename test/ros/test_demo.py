"""`mobius demo` end to end (node process, camera, client, recording), and its parts.

The end-to-end runs use a random-init MOBIUS-tiny, so they check that the session really ran
(messages of every output type, frames processed, the referring call answered, files with real
content), never what the model found.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from mobius_ros.demo.camera import PHOTOS, colour_phrases, demo_frames, referring_query
from mobius_ros.demo.report import prediction_from_message, table_line
from mobius_ros.runtime.result import Prediction, Task

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = '/mobius_demo'


def _run_demo(out: Path, *arguments: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env['HF_HUB_OFFLINE'] = '1'
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH', '')) if p)
    env.pop('ROS_DOMAIN_ID', None)  # the demo picks its own private domain
    return subprocess.run(
        [sys.executable, '-m', 'mobius_ros.cli', 'demo', '--out', str(out), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(scope='module')
def demo_run(interfaces: Any, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One demo session: 6 frames (a photo among them) of a random tiny model on ONNX Runtime."""
    out = tmp_path_factory.mktemp('demo')
    cache = tmp_path_factory.mktemp('demo_cache')
    done = _run_demo(
        out,
        '--frames', '6', '--rate', '4', '--checkpoint', str(checkpoint),
        '--score-threshold', '0', '--budget-ms', '5000',
        '--engine-dir', str(cache / 'engines'), '--cache-dir', str(cache / 'text'),
    )  # fmt: skip
    return out, done


@pytest.mark.ros
@pytest.mark.slow
def test_demo_runs_and_reports(demo_run: Any) -> None:
    out, done = demo_run
    assert done.returncode == 0, f'{done.stdout}\n{done.stderr}'
    summary = json.loads((out / 'summary.json').read_text())
    frames = summary['frames']
    assert summary['ok'] and frames['published'] == 6
    assert 0 < frames['processed'] <= 6
    assert frames['by_task']['vocabulary'] > 0 and frames['by_task']['agnostic'] > 0
    assert summary['vocabulary']['success'] and summary['vocabulary']['task'] == 'vocabulary'
    assert summary['agnostic']['phrases'] == ['object']
    assert summary['final_vocabulary']['task'] == 'agnostic'
    referring = summary['referring']
    assert referring['answered'] and referring['success'] and referring['instances'] == 1
    assert referring['objects'][0]['phrase'] == referring['expression']
    assert 0.0 <= referring['iou_with_target'] <= 1.0
    # Every expression of the played scenes was asked and scored, not just the scripted one.
    every = referring['every_expression']
    scenes = [f.scene for f in demo_frames(6) if f.scene is not None]
    assert every['scenes'] == len(scenes)
    assert every['expressions'] == sum(len(s.expressions) for s in scenes) > 0
    assert 0 <= every['found'] <= every['expressions']
    assert sum(k['expressions'] for k in every['by_kind'].values()) == every['expressions']
    assert summary['one_shot']['success']
    assert summary['lifecycle'] == {'deactivate': True, 'shutdown': True}
    assert summary['node_exit_code'] == 0
    assert summary['latency_ms']['count'] == frames['processed']
    # The budget is set through the parameter service after the first frame; one under the
    # node's floor is refused first, with the node's reason.
    budget = summary['budget']
    assert budget['accepted'] and budget['budget_ms'] == 5000.0 and budget['from_frame'] == 1
    assert not budget['below_floor']['accepted'] and 'floor' in budget['below_floor']['reason']
    for record in summary['per_frame']:
        under = record['frame'] >= budget['from_frame']
        assert record['budget_ms'] == (5000.0 if under else None), record
        assert (record['budget_met'] is not None) == under, record
    assert budget['frames'] == sum(r['budget_ms'] is not None for r in summary['per_frame'])
    assert summary['diagnostics']['latency_budget_ms'] == '5000.0'
    dropped = frames['dropped_why']
    assert dropped['count'] == frames['dropped'] == frames['published'] - frames['processed']
    assert dropped['explanation']
    if summary['plot'] is not None:
        assert cv2.imread(str(out / summary['plot'])) is not None
    # One readable line per processed frame, plus the service calls.
    lines = [line for line in done.stdout.splitlines() if 'scene_' in line or 'astronaut' in line]
    assert len(lines) >= frames['processed'] + 2
    assert 'refer' in done.stdout and 'queries kept' in done.stdout


@pytest.mark.ros
@pytest.mark.slow
def test_demo_writes_overlays_and_a_readable_recording(demo_run: Any) -> None:
    from mobius_ros.ros.bag import read_outputs

    out, done = demo_run
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / 'summary.json').read_text())
    sizes = {f.name: f.image.shape for f in demo_frames(6)}
    pngs = sorted((out / 'overlays').glob('*.png'))
    assert len(pngs) == summary['frames']['processed'] + 2  # + referring and one-shot
    for record in summary['per_frame']:
        picture = cv2.imread(str(out / record['overlay']))
        assert picture is not None and picture.shape == sizes[record['source']]
    bag = Path(summary['recording']['path'])
    assert bag == out / 'session_mcap' and any(bag.glob('*.mcap'))
    images = read_outputs(bag, f'{NAMESPACE}/image')
    segmentation = read_outputs(bag, f'{NAMESPACE}/segmentation')
    assert len(images) == 6 and len(segmentation) == summary['frames']['processed']
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in images}
    for _, seg in segmentation:  # every output belongs to a recorded camera frame
        assert (seg.header.stamp.sec, seg.header.stamp.nanosec) in stamps
    assert {seg.task for _, seg in segmentation} == {'vocabulary', 'agnostic'}
    for topic in ('detections', 'instance_mask', 'debug_image'):
        assert len(read_outputs(bag, f'{NAMESPACE}/{topic}')) == len(segmentation), topic
    labels = read_outputs(bag, f'{NAMESPACE}/label_info')
    assert [c.class_name for c in labels[-1][1].class_map] == ['object']
    debug = read_outputs(bag, f'{NAMESPACE}/debug_image')[0][1]
    assert debug.encoding == 'rgb8' and len(debug.data) == debug.height * debug.step > 0


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize('kind', ['missing', 'corrupt'])
def test_demo_fails_clearly_on_a_bad_checkpoint(
    interfaces: Any, checkpoint: Path, tmp_path: Path, kind: str
) -> None:
    bad = tmp_path / 'bad.safetensors'
    if kind == 'corrupt':  # found, so the node starts, and fails to load it
        bad.write_bytes(b'not a safetensors file' * 10)
        bad.with_suffix('.json').write_text(checkpoint.with_suffix('.json').read_text())
    done = _run_demo(
        tmp_path / 'out', '--frames', '2', '--checkpoint', str(bad),
        '--engine-dir', str(tmp_path / 'engines'), '--cache-dir', str(tmp_path / 'text'),
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert 'mobius demo: FAILED' in done.stderr and 'bad.safetensors' in done.stderr
    if kind == 'corrupt':
        assert 'could not load the model' in done.stderr and 'cannot configure' in done.stderr
    assert not (tmp_path / 'out' / 'summary.json').exists()


def test_frames_mix_test_scenes_and_photos() -> None:
    frames = demo_frames(8, seed=3)
    assert [f.kind for f in frames] == ['synthetic'] * 3 + ['photo'] + ['synthetic'] * 3 + [
        'photo'
    ]
    assert [f.name for f in frames if f.kind == 'photo'] == list(PHOTOS[:2])
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.ndim == 3
        assert max(frame.image.shape[:2]) <= 320
    again = demo_frames(8, seed=3)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again))
    assert not np.array_equal(frames[0].image, demo_frames(1, seed=4)[0].image)


def test_referring_query_names_a_real_instance() -> None:
    frame, expression = referring_query(demo_frames(6))
    assert frame.scene is not None and expression['sentence'].startswith('the ')
    target = frame.scene.instances[expression['target']]
    assert target.mask.any() and target.shape in expression['sentence']
    phrases = colour_phrases(frame.scene)
    assert len(phrases) == len(set(phrases)) and f'{target.colour} {target.shape}' in phrases


def test_prediction_survives_the_message_round_trip() -> None:
    """Prediction -> InstanceSegmentation (rosbags types) -> Prediction keeps every instance."""
    from mobius_ros.ros import messages
    from mobius_ros.ros.bag import make_typestore

    masks = np.zeros((3, 30, 40), bool)
    masks[0, 2:12, 3:20] = True
    masks[1, 5:25, 10:30] = True  # overlaps instance 0: only the crops keep its full extent
    masks[2, 20:28, 30:38] = True
    prediction = Prediction(
        boxes=np.array([[3, 2, 20, 12], [10, 5, 30, 25], [30, 20, 38, 28]], np.float32),
        scores=np.array([0.9, 0.6, 0.3], np.float32),
        class_ids=np.array([1, 0, 1]),
        phrases=('red circle', 'blue square'),
        masks=masks,
        image_size=(30, 40),
        task=Task.VOCABULARY,
        vocabulary_version=4,
        queries_kept=(20, 9),
    )
    factory = messages.RosbagsFactory(make_typestore())
    header = factory.make(
        'std_msgs/msg/Header',
        stamp=factory.make('builtin_interfaces/msg/Time', sec=1, nanosec=2),
        frame_id='camera',
    )
    for with_masks in (True, False):
        msg = messages.instance_segmentation(factory, header, prediction, with_masks=with_masks)
        back = prediction_from_message(msg)
        np.testing.assert_allclose(back.boxes, prediction.boxes)
        np.testing.assert_allclose(back.scores, prediction.scores)
        assert back.labels == prediction.labels and back.queries_kept == (20, 9)
        assert back.vocabulary_version == 4 and back.task is Task.VOCABULARY
        if with_masks:
            assert np.array_equal(back.masks, masks)
        else:  # the label image: the better instance wins the overlap
            assert np.array_equal(back.masks[0], masks[0])
            assert np.array_equal(back.masks[1], masks[1] & ~masks[0])
    line = table_line(3, 'scene_0001', prediction, latency_ms=12.5, budget_ms=10.0)
    assert 'blue square 0.90, red circle 0.60' in line and '20/9' in line
    assert '10.0 MISSED' in line
    # The budget holds the model time: a frame whose model part fits has met it.
    line = table_line(
        3, 'scene_0001', prediction, latency_ms=12.5, inference_ms=9.0, budget_ms=10.0
    )
    assert '10.0 met' in line
