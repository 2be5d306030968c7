"""Build our output messages from a `Prediction`, for rclpy (the node) and rosbags (bag files).

The two libraries have different message classes, so every builder takes a `MessageFactory`
that makes a message of a named type from keyword fields and turns numpy arrays into what that
library's array fields want. Builders pass every field, because rosbags' message classes have
no defaults. The input header object is passed through untouched (DESIGN 8, complaint 8).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from mobius_ros.ros.conversions import ImageFields, label_to_image_fields, mask_crops
from mobius_ros.runtime.result import Prediction


class MessageFactory(Protocol):
    """Makes messages of one ROS library."""

    def make(self, type_name: str, **fields: Any) -> Any:
        """A message of `type_name` ('pkg/msg/Name') from all of its fields."""

    def array(self, values: np.ndarray) -> Any:
        """A numpy array as the value of a (variable-length) array field of its dtype."""


class RclpyFactory:
    """Messages of the generated rclpy classes (imported lazily, once per type)."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}

    def make(self, type_name: str, **fields: Any) -> Any:
        cls = self._classes.get(type_name)
        if cls is None:
            package, kind, name = type_name.split('/')
            cls = getattr(importlib.import_module(f'{package}.{kind}'), name)
            self._classes[type_name] = cls
        return cls(**fields)

    def array(self, values: np.ndarray) -> Any:
        # The generated setters copy their value into array.array(typecode, value): from bytes
        # that is one memcpy, from an ndarray or list it is a Python loop (~10 ms for a VGA frame).
        if values.dtype == np.uint8:
            return np.ascontiguousarray(values).tobytes()
        return values.tolist()


class RosbagsFactory:
    """Messages of a rosbags typestore (our types must be registered in it)."""

    def __init__(self, typestore: Any) -> None:
        self._types = typestore.types

    def make(self, type_name: str, **fields: Any) -> Any:
        return self._types[type_name](**fields)

    def array(self, values: np.ndarray) -> Any:
        return np.ascontiguousarray(values)


def image(factory: MessageFactory, header: Any, fields: ImageFields) -> Any:
    """sensor_msgs/Image with `header` (the input's) and the given pixel fields."""
    return factory.make(
        'sensor_msgs/msg/Image',
        header=header,
        height=fields.height,
        width=fields.width,
        encoding=fields.encoding,
        is_bigendian=int(fields.is_bigendian),
        step=fields.step,
        data=factory.array(fields.data),
    )


def detection_array(factory: MessageFactory, header: Any, prediction: Prediction) -> Any:
    """vision_msgs/Detection2DArray: class_id = phrase, score, bbox in original pixels, id = n."""
    detections = []
    labels = prediction.labels
    for n in range(len(prediction)):
        x1, y1, x2, y2 = (float(v) for v in prediction.boxes[n])
        hypothesis = factory.make(
            'vision_msgs/msg/ObjectHypothesisWithPose',
            hypothesis=factory.make(
                'vision_msgs/msg/ObjectHypothesis',
                class_id=labels[n],
                score=float(prediction.scores[n]),
            ),
            pose=_identity_pose(factory),
        )
        bbox = factory.make(
            'vision_msgs/msg/BoundingBox2D',
            center=factory.make(
                'vision_msgs/msg/Pose2D',
                position=factory.make('vision_msgs/msg/Point2D', x=(x1 + x2) / 2, y=(y1 + y2) / 2),
                theta=0.0,
            ),
            size_x=x2 - x1,
            size_y=y2 - y1,
        )
        detections.append(
            factory.make(
                'vision_msgs/msg/Detection2D',
                header=header,
                results=[hypothesis],
                bbox=bbox,
                id=str(n),
            )
        )
    return factory.make('vision_msgs/msg/Detection2DArray', header=header, detections=detections)


def _identity_pose(factory: MessageFactory) -> Any:
    return factory.make(
        'geometry_msgs/msg/PoseWithCovariance',
        pose=factory.make(
            'geometry_msgs/msg/Pose',
            position=factory.make('geometry_msgs/msg/Point', x=0.0, y=0.0, z=0.0),
            orientation=factory.make('geometry_msgs/msg/Quaternion', x=0.0, y=0.0, z=0.0, w=1.0),
        ),
        covariance=np.zeros(36, np.float64),
    )


def label_info(
    factory: MessageFactory, header: Any, phrases: Sequence[str], threshold: float
) -> Any:
    """vision_msgs/LabelInfo: class id k -> phrases[k]."""
    class_map = [
        factory.make('vision_msgs/msg/VisionClass', class_id=k, class_name=phrase)
        for k, phrase in enumerate(phrases)
    ]
    return factory.make(
        'vision_msgs/msg/LabelInfo', header=header, class_map=class_map, threshold=threshold
    )


def instance_segmentation(
    factory: MessageFactory,
    header: Any,
    prediction: Prediction,
    *,
    detections: Any | None = None,
    label_image: Any | None = None,
    with_masks: bool = False,
    latency_ms: float = 0.0,
) -> Any:
    """mobius_ros_msgs/InstanceSegmentation; reuses already-built detections / label image."""
    if detections is None:
        detections = detection_array(factory, header, prediction)
    if label_image is None:
        label_image = image(factory, header, label_to_image_fields(prediction.label_image()))
    masks = []
    if with_masks:
        for crop in mask_crops(prediction.masks):
            height, width = crop.mask.shape
            masks.append(
                factory.make(
                    'mobius_ros_msgs/msg/InstanceMask',
                    index=crop.index,
                    roi=factory.make(
                        'sensor_msgs/msg/RegionOfInterest',
                        x_offset=crop.x,
                        y_offset=crop.y,
                        height=height,
                        width=width,
                        do_rectify=False,
                    ),
                    mask=image(
                        factory,
                        header,
                        ImageFields(height, width, 'mono8', False, width, crop.mask.reshape(-1)),
                    ),
                )
            )
    return factory.make(
        'mobius_ros_msgs/msg/InstanceSegmentation',
        header=header,
        detections=detections,
        label_image=label_image,
        masks=masks,
        task=prediction.task.value,
        phrases=list(prediction.phrases),
        vocabulary_version=int(prediction.vocabulary_version),
        latency_ms=float(latency_ms),
        inference_ms=float(prediction.timings_ms.get('total', 0.0)),
        queries_kept=factory.array(np.asarray(prediction.queries_kept, np.uint16)),
    )
