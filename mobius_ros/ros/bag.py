"""Offline processing of rosbag2 recordings (mcap or sqlite3) with `rosbags`, no ROS install.

The output bag holds the input images plus the node's outputs as real ROS 2 messages
(Detection2DArray, mono16 label image, InstanceSegmentation, LabelInfo), each stamped with the
input's header and log time, so `ros2 bag play` of it looks like the live node. Our and
vision_msgs' types are registered in the rosbags typestore from their .msg definitions.

The bag is written under a hidden temporary name next to the destination and renamed only when
complete, so an interrupted run never leaves a complete-looking bag.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.common.errors import ImageError
from mobius_ros.ros import messages
from mobius_ros.ros.conversions import (
    label_to_image_fields,
    message_to_rgb,
    rgb_to_image_fields,
)
from mobius_ros.ros.interfaces import find_definitions
from mobius_ros.runtime.result import Prediction

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
STORAGES = ('mcap', 'sqlite3')

# One image [H, W, 3] uint8 RGB -> its prediction.
SegmentFn = Callable[[np.ndarray], Prediction]


class BagError(RuntimeError):
    """A bag that cannot be read or written as asked; the message is user-facing."""


@dataclass(frozen=True)
class BagSummary:
    """What a run did."""

    output: Path
    storage: str
    frames: int
    skipped: int
    instances: int
    seconds: float
    errors: tuple[str, ...] = field(default_factory=tuple)


def make_typestore() -> Any:
    """The ROS 2 Jazzy typestore plus vision_msgs and mobius_ros_msgs from their definitions."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for package in ('vision_msgs', 'mobius_ros_msgs'):
        for name, text in find_definitions(package).items():
            types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore


def detect_storage(bag: Path) -> str:
    """'mcap' or 'sqlite3', from the files of a rosbag2 directory."""
    if any(bag.glob('*.mcap')):
        return 'mcap'
    if any(bag.glob('*.db3')):
        return 'sqlite3'
    raise BagError(f'{bag} is not a rosbag2 directory with .mcap or .db3 files')


def _output_topics(namespace: str) -> dict[str, str]:
    namespace = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return {
        'detections': (f'{namespace}/detections', 'vision_msgs/msg/Detection2DArray'),
        'instance_mask': (f'{namespace}/instance_mask', IMAGE),
        'segmentation': (f'{namespace}/segmentation', 'mobius_ros_msgs/msg/InstanceSegmentation'),
        'label_info': (f'{namespace}/label_info', 'vision_msgs/msg/LabelInfo'),
        'debug_image': (f'{namespace}/debug_image', IMAGE),
    }


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit='frame', disable=not enabled, desc='mobius bag')


def process_bag(
    source: Path,
    destination: Path,
    segment: SegmentFn,
    *,
    image_topic: str,
    namespace: str = '/mobius',
    storage: str | None = None,
    with_masks: bool = False,
    debug_image: bool = False,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BagSummary:
    """Segment every image of `image_topic` in `source`; write images + outputs to `destination`.

    Frames whose image cannot be decoded are copied, counted and reported, not fatal.

    Raises:
        BagError: unreadable source, missing topic, or an existing destination.
    """
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    source, destination = Path(source), Path(destination)
    if destination.exists() and not overwrite:
        raise BagError(f'{destination} exists; pass --overwrite to replace it')
    storage = storage or detect_storage(source)
    if storage not in STORAGES:
        raise BagError(f'unknown storage {storage!r}; use one of {STORAGES}')
    typestore = make_typestore()
    factory = messages.RosbagsFactory(typestore)
    topics = _output_topics(namespace)
    staging = destination.parent / f'.{destination.name}.partial-{os.getpid()}'
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()
    frames = skipped = instances = 0
    errors: list[str] = []
    try:
        reader = Reader(source)
    except Exception as error:  # rosbags raises several types for unreadable bags
        shutil.rmtree(staging, ignore_errors=True)
        raise BagError(f'cannot read {source}: {error}') from error
    try:
        with reader:
            connections = [c for c in reader.connections if c.topic == image_topic]
            if not connections or connections[0].msgtype not in (IMAGE, COMPRESSED):
                found = sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections})
                raise BagError(
                    f'no Image or CompressedImage topic {image_topic!r} in {source};'
                    f' topics: {", ".join(found) or "none"}'
                )
            msgtype = connections[0].msgtype
            total = sum(c.msgcount for c in connections)
            total = min(total, max_frames) if max_frames is not None else total
            plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
            with Writer(staging / destination.name, version=9, storage_plugin=plugin) as writer:
                out = {
                    key: writer.add_connection(topic, kind, typestore=typestore)
                    for key, (topic, kind) in topics.items()
                    if key != 'debug_image' or debug_image
                }
                image_out = writer.add_connection(image_topic, msgtype, typestore=typestore)
                last_version: int | None = None
                with _progress(total, progress) as bar:
                    for _, timestamp, raw in _messages(reader, connections, max_frames):
                        writer.write(image_out, timestamp, raw)
                        msg = typestore.deserialize_cdr(raw, msgtype)
                        try:
                            rgb = message_to_rgb(msg, compressed=msgtype == COMPRESSED)
                        except ImageError as error:
                            skipped += 1
                            errors.append(f'frame at {timestamp} ns: {error}')
                            bar.update(1)
                            continue
                        prediction = segment(rgb)
                        frame_started = time.perf_counter()
                        header = msg.header
                        if prediction.vocabulary_version != last_version:
                            last_version = prediction.vocabulary_version
                            info = messages.label_info(factory, header, prediction.phrases, 0.0)
                            _write(writer, out['label_info'], timestamp, info, typestore)
                        detections = messages.detection_array(factory, header, prediction)
                        label = messages.image(
                            factory, header, label_to_image_fields(prediction.label_image())
                        )
                        combined = messages.instance_segmentation(
                            factory, header, prediction,
                            detections=detections, label_image=label, with_masks=with_masks,
                            latency_ms=prediction.timings_ms.get('total', 0.0)
                            + (time.perf_counter() - frame_started) * 1e3,
                        )  # fmt: skip
                        _write(writer, out['detections'], timestamp, detections, typestore)
                        _write(writer, out['instance_mask'], timestamp, label, typestore)
                        _write(writer, out['segmentation'], timestamp, combined, typestore)
                        if debug_image:
                            from mobius_ros.ros.conversions import overlay

                            picture = overlay(
                                rgb, prediction.masks, prediction.boxes,
                                prediction.labels, prediction.scores,
                            )  # fmt: skip
                            debug = messages.image(factory, header, rgb_to_image_fields(picture))
                            _write(writer, out['debug_image'], timestamp, debug, typestore)
                        frames += 1
                        instances += len(prediction)
                        bar.update(1)
        if overwrite:
            shutil.rmtree(destination, ignore_errors=True)
        os.replace(staging / destination.name, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BagSummary(
        output=destination,
        storage=storage,
        frames=frames,
        skipped=skipped,
        instances=instances,
        seconds=time.perf_counter() - started,
        errors=tuple(errors),
    )


def _messages(
    reader: Any, connections: list[Any], max_frames: int | None
) -> Iterator[tuple[Any, int, bytes]]:
    for count, item in enumerate(reader.messages(connections=connections)):
        if max_frames is not None and count >= max_frames:
            return
        yield item


def _write(writer: Any, connection: Any, timestamp: int, msg: Any, typestore: Any) -> None:
    writer.write(connection, timestamp, typestore.serialize_cdr(msg, msg.__msgtype__))


def write_images(
    bag: Path,
    images: list[np.ndarray],
    *,
    topic: str = '/camera/image_raw',
    storage: str = 'mcap',
    compressed: bool = False,
    frame_id: str = 'camera',
    period_ns: int = 100_000_000,
) -> Path:
    """Record [H, W, 3] uint8 RGB frames as an rgb8 Image (or JPEG CompressedImage) topic.

    For demos and tests: a recording like a camera driver's, stamped `period_ns` apart.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from mobius_ros.ros.conversions import rgb_to_compressed

    typestore = make_typestore()
    factory = messages.RosbagsFactory(typestore)
    msgtype = COMPRESSED if compressed else IMAGE
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(Path(bag), version=9, storage_plugin=plugin) as writer:
        connection = writer.add_connection(topic, msgtype, typestore=typestore)
        for n, rgb in enumerate(images):
            timestamp = 1_700_000_000_000_000_000 + n * period_ns
            stamp = factory.make(
                'builtin_interfaces/msg/Time',
                sec=timestamp // 1_000_000_000,
                nanosec=timestamp % 1_000_000_000,
            )
            header = factory.make('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id)
            if compressed:
                data = np.frombuffer(rgb_to_compressed(rgb, 'jpeg'), np.uint8)
                msg = factory.make(msgtype, header=header, format='jpeg', data=data)
            else:
                msg = messages.image(factory, header, rgb_to_image_fields(rgb))
            _write(writer, connection, timestamp, msg, typestore)
    return Path(bag)


def read_images(
    bag: Path, topic: str, *, every: int = 1
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Every `every`-th frame of an Image or CompressedImage topic as (log time ns, rgb, error).

    A frame that does not decode yields (time, None, reason) so the caller can count it.

    Raises:
        BagError: unreadable bag, or no image topic of that name.
    """
    from rosbags.rosbag2 import Reader

    if every < 1:
        raise BagError(f'every must be >= 1, got {every}')
    typestore = make_typestore()
    try:
        reader = Reader(Path(bag))
    except Exception as error:  # rosbags raises several types for unreadable bags
        raise BagError(f'cannot read {bag}: {error}') from error
    with reader:
        connections = [c for c in reader.connections if c.topic == topic]
        if not connections or connections[0].msgtype not in (IMAGE, COMPRESSED):
            found = sorted({f'{c.topic} ({c.msgtype})' for c in reader.connections})
            raise BagError(
                f'no Image or CompressedImage topic {topic!r} in {bag};'
                f' topics: {", ".join(found) or "none"}'
            )
        msgtype = connections[0].msgtype
        for count, (_, timestamp, raw) in enumerate(reader.messages(connections=connections)):
            if count % every:
                continue
            try:
                msg = typestore.deserialize_cdr(raw, msgtype)
                yield timestamp, message_to_rgb(msg, compressed=msgtype == COMPRESSED), ''
            except ImageError as error:
                yield timestamp, None, str(error)


def bag_frame_count(bag: Path, topic: str) -> int:
    """Messages on `topic` in `bag` (0 when the topic is absent)."""
    from rosbags.rosbag2 import Reader

    try:
        reader = Reader(Path(bag))
    except Exception as error:
        raise BagError(f'cannot read {bag}: {error}') from error
    with reader:
        return sum(c.msgcount for c in reader.connections if c.topic == topic)


def read_outputs(bag: Path, topic: str) -> list[tuple[int, Any]]:
    """(log time ns, message) of one topic of a bag written by `process_bag` (for checks)."""
    from rosbags.rosbag2 import Reader

    typestore = make_typestore()
    with Reader(Path(bag)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        return [
            (timestamp, typestore.deserialize_cdr(raw, connection.msgtype))
            for connection, timestamp, raw in reader.messages(connections=connections)
        ]
