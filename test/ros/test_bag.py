"""Bag round trips with rosbags (no rclpy needed): mcap and sqlite3, raw and compressed input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip('rosbags')

from mobius_ros.ros import messages
from mobius_ros.ros.bag import (
    BagError,
    make_typestore,
    process_bag,
    read_outputs,
    write_images,
)
from mobius_ros.ros.conversions import ImageFields, image_fields_to_array
from mobius_ros.runtime.result import Prediction

TOPIC = '/camera/image_raw'


def bright_blobs(rgb: np.ndarray) -> Prediction:
    """A real (non-learned) segmenter: each bright connected blob is one 'square' instance."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        (rgb.max(axis=2) > 128).astype(np.uint8)
    )
    order = sorted(range(1, count), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    boxes = [[s[0], s[1], s[0] + s[2], s[1] + s[3]] for s in (stats[k, :4] for k in order)]
    return Prediction(
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.linspace(0.9, 0.5, len(order)).astype(np.float32),
        class_ids=np.zeros(len(order), np.int64),
        phrases=('square',),
        masks=np.stack([labels == k for k in order])
        if order
        else np.zeros((0, *rgb.shape[:2]), bool),
        image_size=rgb.shape[:2],
        vocabulary_version=3,
        queries_kept=(20, 12),
    )


def frames(n: int = 3, height: int = 48, width: int = 64) -> list[np.ndarray]:
    out = []
    for i in range(n):
        rgb = np.full((height, width, 3), 20, np.uint8)
        rgb[5 + i : 25 + i, 10:30] = (250, 200, 10)
        rgb[30:40, 40 + i : 60] = (240, 240, 240)
        out.append(rgb)
    return out


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('compressed', [False, True])
def test_round_trip(tmp_path: Path, storage: str, compressed: bool) -> None:
    source = write_images(
        tmp_path / 'in', frames(), topic=TOPIC, storage=storage, compressed=compressed
    )
    summary = process_bag(
        source, tmp_path / 'out', bright_blobs, image_topic=TOPIC, with_masks=True, progress=False
    )
    assert (summary.frames, summary.skipped, summary.storage) == (3, 0, storage)
    assert summary.instances == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in', 'out']  # no partial left

    images = read_outputs(summary.output, TOPIC)
    detections = read_outputs(summary.output, '/mobius/detections')
    labels = read_outputs(summary.output, '/mobius/instance_mask')
    combined = read_outputs(summary.output, '/mobius/segmentation')
    info = read_outputs(summary.output, '/mobius/label_info')
    assert len(images) == len(detections) == len(labels) == len(combined) == 3
    assert len(info) == 1 and [c.class_name for c in info[0][1].class_map] == ['square']
    for i, ((t_in, image), (t_det, det), (_, label), (_, seg)) in enumerate(
        zip(images, detections, labels, combined)
    ):
        assert t_in == t_det
        assert det.header.stamp == image.header.stamp and det.header.frame_id == 'camera'
        assert seg.header.stamp == image.header.stamp
        first = det.detections[0]
        assert first.results[0].hypothesis.class_id == 'square' and first.id == '0'
        # The 20x20 blob at x 10..30, y 5+i..25+i, in original pixels.
        assert (first.bbox.center.position.x, first.bbox.center.position.y) == (20.0, 15.0 + i)
        assert (first.bbox.size_x, first.bbox.size_y) == (20.0, 20.0)
        assert (label.height, label.width, label.encoding) == (48, 64, 'mono16')
        fields = ImageFields(
            label.height,
            label.width,
            label.encoding,
            bool(label.is_bigendian),
            label.step,
            label.data,
        )
        label_image = image_fields_to_array(fields)
        assert (label_image == 1).sum() == 400
        assert seg.vocabulary_version == 3 and list(seg.queries_kept) == [20, 12]
        assert seg.task == 'vocabulary' and list(seg.phrases) == ['square']
        assert len(seg.masks) == 2 and (seg.masks[0].roi.width, seg.masks[0].roi.height) == (
            20,
            20,
        )


def test_bad_frames_are_counted_not_fatal(tmp_path: Path) -> None:
    typestore = make_typestore()
    factory = messages.RosbagsFactory(typestore)
    source = write_images(tmp_path / 'in', frames(2), topic=TOPIC)
    # Append a frame whose step does not match its data, as a broken driver would record.
    from rosbags.rosbag2 import Writer

    broken = tmp_path / 'broken'
    with Writer(broken, version=9) as writer:
        connection = writer.add_connection(TOPIC, 'sensor_msgs/msg/Image', typestore=typestore)
        header = factory.make(
            'std_msgs/msg/Header',
            stamp=factory.make('builtin_interfaces/msg/Time', sec=1, nanosec=0),
            frame_id='camera',
        )
        good = messages.image(
            factory, header, ImageFields(4, 4, 'rgb8', False, 12, np.zeros(48, np.uint8))
        )
        bad = messages.image(
            factory, header, ImageFields(4, 4, 'rgb8', False, 12, np.zeros(40, np.uint8))
        )
        for t, msg in enumerate([bad, good]):
            writer.write(connection, t + 1, typestore.serialize_cdr(msg, msg.__msgtype__))
    summary = process_bag(
        broken, tmp_path / 'out', bright_blobs, image_topic=TOPIC, progress=False
    )
    assert (summary.frames, summary.skipped) == (1, 1)
    assert 'expected step * height' in summary.errors[0]
    assert len(read_outputs(summary.output, TOPIC)) == 2  # the input is copied whole
    assert source.exists()


def test_interrupted_run_leaves_no_bag(tmp_path: Path) -> None:
    source = write_images(tmp_path / 'in', frames(3), topic=TOPIC)
    calls = []

    def interrupted(rgb: np.ndarray) -> Prediction:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return bright_blobs(rgb)

    with pytest.raises(KeyboardInterrupt):
        process_bag(source, tmp_path / 'out', interrupted, image_topic=TOPIC, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']


def test_user_errors(tmp_path: Path) -> None:
    source = write_images(tmp_path / 'in', frames(1), topic=TOPIC)
    with pytest.raises(BagError, match='no Image or CompressedImage topic'):
        process_bag(source, tmp_path / 'out', bright_blobs, image_topic='/nope', progress=False)
    with pytest.raises(BagError, match='exists'):
        process_bag(source, source, bright_blobs, image_topic=TOPIC, progress=False)
    with pytest.raises(BagError, match='not a rosbag2'):
        process_bag(tmp_path, tmp_path / 'x', bright_blobs, image_topic=TOPIC, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']


def test_embedded_vision_msgs_match_the_fixture_package() -> None:
    from mobius_ros.ros.interfaces import VISION_MSGS_DEFINITIONS, VISION_MSGS_FIXTURE

    files = {
        f'vision_msgs/msg/{p.stem}': p.read_text()
        for p in sorted((VISION_MSGS_FIXTURE / 'msg').glob('*.msg'))
    }
    assert files == VISION_MSGS_DEFINITIONS


@pytest.mark.slow
def test_mobius_bag_command_with_a_real_model(tmp_path: Path) -> None:
    """`mobius bag` end to end: random-init MOBIUS-tiny on the torch backend, mcap in and out."""
    pytest.importorskip('torch')
    from mobius_ros.cli import main
    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.model.variants import build_model

    checkpoint = tmp_path / 'tiny.safetensors'
    save_checkpoint(build_model('MOBIUS-tiny').eval(), checkpoint)
    source = write_images(tmp_path / 'in', frames(2, 60, 90), topic=TOPIC, compressed=True)
    command = [
        'bag',
        str(source),
        str(tmp_path / 'out'),
        '--image-topic',
        TOPIC,
        '--checkpoint',
        str(checkpoint),
        '--backend',
        'torch',
    ]
    code = main(
        [
            *command,
            '--input-size',
            '64x96',
            '--vocabulary',
            'square',
            'circle',
            '--score-threshold',
            '0',
            '--masks',
            '--no-progress',
        ]
    )
    assert code == 0
    combined = read_outputs(tmp_path / 'out', '/mobius/segmentation')
    images = read_outputs(tmp_path / 'out', TOPIC)
    assert len(combined) == len(images) == 2
    for (_, image), (_, seg) in zip(images, combined):
        assert seg.header.stamp == image.header.stamp
        assert (seg.label_image.height, seg.label_image.width) == (60, 90)
        assert list(seg.phrases) == ['square', 'circle']
    assert main(command) == 2  # the output bag exists: refused, not overwritten
