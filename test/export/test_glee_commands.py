"""A converted GLEE-Lite through `mobius bag` and `mobius build-engine` (in-process CLI calls).

The checkpoint is what `convert_state` makes of seeded GLEE weights (the parity test's reduced
GLEE), saved as a user's converted file would be; the commands get only its path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mobius_ros.cli import main

pytestmark = pytest.mark.slow  # exports a model
pytest.importorskip('onnxruntime')
pytest.importorskip('rosbags')

TOPIC = '/camera/image_raw'
CANVAS = (64, 96)


@pytest.fixture(scope='module')
def glee_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    from mobius_ros.model.checkpoint import save_checkpoint
    from scripts.glee_reference import converted_reduced

    model, _ = converted_reduced()
    path = tmp_path_factory.mktemp('glee') / 'glee_lite.safetensors'
    save_checkpoint(model, path)
    return path, model.config


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 255, (72, 100, 3), dtype=np.uint8) for _ in range(2)]


def test_bag_segments_with_a_converted_glee(
    glee_checkpoint: tuple[Path, object], tmp_path: Path
) -> None:
    from mobius_ros.ros.bag import read_outputs, write_images
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    checkpoint, _ = glee_checkpoint
    frames = _frames()
    source = write_images(tmp_path / 'in', frames, topic=TOPIC)
    engines, text = tmp_path / 'engines', tmp_path / 'text'
    code = main(
        [
            'bag', str(source), str(tmp_path / 'out'), '--image-topic', TOPIC,
            '--checkpoint', str(checkpoint), '--input-size', 'x'.join(map(str, CANVAS)),
            '--vocabulary', 'cup', 'person', '--score-threshold', '0', '--max-detections', '3',
            '--engine-dir', str(engines), '--cache-dir', str(text), '--no-progress',
        ]
    )  # fmt: skip
    assert code == 0
    assert any(engines.rglob('model.json'))  # exported into the given folder, not ~/.cache
    detections = read_outputs(tmp_path / 'out', '/mobius/detections')
    assert len(detections) == len(frames)

    # The same frames through the runtime directly: the bag holds exactly its answers.
    config = SegmenterConfig(
        checkpoint=str(checkpoint),
        engine_dir=str(engines),
        cache_dir=str(text),
        input_size=CANVAS,
        score_threshold=0.0,
        max_detections=3,
    )
    with Segmenter(config) as segmenter:
        segmenter.set_vocabulary(['cup', 'person'])
        predictions = [segmenter.segment(rgb) for rgb in frames]
    for (_, message), prediction in zip(detections, predictions):
        assert len(message.detections) == len(prediction.boxes) == 3
        for detection, box, class_id in zip(
            message.detections, prediction.boxes, prediction.class_ids
        ):
            centre = (detection.bbox.center.position.x, detection.bbox.center.position.y)
            np.testing.assert_allclose(centre, (box[:2] + box[2:]) / 2, atol=1e-3)
            np.testing.assert_allclose(
                (detection.bbox.size_x, detection.bbox.size_y), box[2:] - box[:2], atol=1e-3
            )
            label = detection.results[0].hypothesis.class_id
            assert label == prediction.phrases[class_id]


def test_build_engine_plans_every_graph_of_a_converted_glee(
    glee_checkpoint: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, config = glee_checkpoint
    folder = tmp_path / 'onnx'
    size = [str(v) for v in CANVAS]
    assert main(['export', '--checkpoint', str(checkpoint), '--out', str(folder),
                 '--input-size', *size]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(['build-engine', '--onnx-dir', str(folder), '--dry-run']) == 0
    out = capsys.readouterr().out
    graphs = sorted(p.stem for p in folder.glob('*.onnx'))
    assert {'encoder', 'text_encoder', 'mask_head', 'decoder_layer_0'} <= set(graphs)
    planned = sorted(re.findall(r'^(\w+): sha256 [0-9a-f]+ fp16$', out, re.MULTILINE))
    assert planned == graphs
    # The query axis tops out at the converted model's own query count and width.
    queries, dim = config.decoder.num_queries, config.hidden_dim
    profiles = re.findall(r'^  queries: min \[1, 1, (\d+)\] opt \[.*\] max \[1, (\d+), (\d+)\]$',
                          out, re.MULTILINE)  # fmt: skip
    assert profiles and all(
        (int(a), int(q), int(c)) == (dim, queries, dim) for a, q, c in profiles
    )
