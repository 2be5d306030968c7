"""Image-message arrays <-> numpy, with no rclpy and no cv_bridge.

Functions take the fields of a `sensor_msgs/Image` (or `CompressedImage`) rather than a message,
so they serve rclpy messages, rosbags messages and tests alike. Every failure is an `ImageError`
whose message says what was wrong; nothing else escapes, whatever the bytes (fuzz-tested).
Raw images are read through views of the message buffer; a copy is made only where the pixel
format changes (colour order, alpha, 16-bit, YUV).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mobius_ros.common.errors import ImageError

# encoding -> (channels, bytes per channel); aliases follow sensor_msgs/image_encodings.hpp.
_LAYOUT: dict[str, tuple[int, int]] = {
    'rgb8': (3, 1),
    'bgr8': (3, 1),
    'rgba8': (4, 1),
    'bgra8': (4, 1),
    'rgb16': (3, 2),
    'bgr16': (3, 2),
    'mono8': (1, 1),
    '8UC1': (1, 1),
    '8UC3': (3, 1),
    'mono16': (1, 2),
    '16UC1': (1, 2),
    'yuv422': (2, 1),  # ROS' yuv422 is UYVY byte order
    'uyvy': (2, 1),
    'yuyv': (2, 1),
    'yuv422_yuy2': (2, 1),
}
ENCODINGS: tuple[str, ...] = tuple(_LAYOUT)
# Largest image accepted (a 16k x 16k frame); bigger headers are corrupt, not cameras.
MAX_PIXELS = 1 << 28


@dataclass(frozen=True)
class ImageFields:
    """The fields of a `sensor_msgs/Image` to publish; `data` is a flat uint8 array."""

    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: np.ndarray


@dataclass(frozen=True)
class MaskCrop:
    """One instance's mask cropped to its pixels' extent (overlap-safe, unlike a label image).

    Attributes:
        index: the instance's index in the prediction.
        x, y: top-left corner of the crop in the original image.
        mask: [h, w] uint8, 255 inside the instance (h = w = 0 for an empty mask).
    """

    index: int
    x: int
    y: int
    mask: np.ndarray


def image_to_rgb(
    data: bytes | bytearray | memoryview | np.ndarray,
    *,
    height: int,
    width: int,
    encoding: str,
    step: int,
    is_bigendian: bool = False,
) -> np.ndarray:
    """Pixels of a raw image message as [H, W, 3] uint8 RGB.

    `rgb8` with `step == 3 * width` comes back as a read-only view of `data` (no copy).
    16-bit images keep their top 8 bits. Raises `ImageError` for an unknown encoding, zero or
    absurd size, a step shorter than a row, an odd width for YUV 4:2:2, or `len(data)` other
    than `step * height`.
    """
    if encoding not in _LAYOUT:
        raise ImageError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(ENCODINGS)}'
        )
    channels, depth = _LAYOUT[encoding]
    if height <= 0 or width <= 0:
        raise ImageError(f'empty image: {width}x{height}')
    if height * width > MAX_PIXELS:
        raise ImageError(f'image of {width}x{height} pixels is larger than supported')
    row = width * channels * depth
    if step < row:
        raise ImageError(f'step {step} is shorter than a {encoding} row of {width} px ({row} B)')
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    buffer = buffer.reshape(-1).view(np.uint8) if buffer.dtype != np.uint8 else buffer.reshape(-1)
    if buffer.size != step * height:
        raise ImageError(
            f'image data has {buffer.size} bytes, expected step * height = {step} * {height}'
            f' = {step * height}'
        )
    rows = buffer.reshape(height, step)[:, :row]
    if depth == 2:
        dtype = np.dtype('>u2' if is_bigendian else '<u2')
        pixels8 = (rows.copy().view(dtype) >> 8).astype(np.uint8)
        pixels = pixels8.reshape(height, width, channels)
    else:
        if encoding in ('yuv422', 'uyvy', 'yuyv', 'yuv422_yuy2') and width % 2:
            raise ImageError(f'{encoding} needs an even width, got {width}')
        pixels = rows.reshape(height, width, channels)
    return _to_rgb(pixels, encoding)


def _to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in ('rgb8', 'rgb16'):
        return pixels
    if encoding in ('bgr8', 'bgr16', '8UC3'):
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2RGB)
    if encoding == 'rgba8':
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGBA2RGB)
    if encoding == 'bgra8':
        return cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGRA2RGB)
    if encoding in ('mono8', '8UC1', 'mono16', '16UC1'):
        return cv2.cvtColor(np.ascontiguousarray(pixels[..., 0]), cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_YUV2RGB_UYVY if encoding in ('yuv422', 'uyvy') else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def compressed_to_rgb(data: bytes | bytearray | memoryview | np.ndarray, fmt: str) -> np.ndarray:
    """Decode a `sensor_msgs/CompressedImage` (JPEG, PNG, ...) to [H, W, 3] uint8 RGB.

    Raises `ImageError` for empty or undecodable data and for depth formats
    (`compressedDepth`), which are not colour images.
    """
    if 'compressedDepth' in fmt:
        raise ImageError(f'compressed depth images ({fmt!r}) cannot be segmented')
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if buffer.size == 0:
        raise ImageError('compressed image has no data')
    decoded = cv2.imdecode(buffer.reshape(-1).view(np.uint8), cv2.IMREAD_COLOR)
    if decoded is None or decoded.size == 0:
        raise ImageError(f'could not decode the compressed image (format {fmt!r})')
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def message_to_rgb(msg: Any, *, compressed: bool) -> np.ndarray:
    """An Image or CompressedImage message (rclpy or rosbags) -> [H, W, 3] uint8 RGB."""
    if compressed:
        return compressed_to_rgb(msg.data, str(msg.format))
    return image_to_rgb(
        msg.data,
        height=int(msg.height),
        width=int(msg.width),
        encoding=str(msg.encoding),
        step=int(msg.step),
        is_bigendian=bool(msg.is_bigendian),
    )


def rgb_to_compressed(rgb: np.ndarray, fmt: str = 'jpeg', *, quality: int = 90) -> bytes:
    """Encode [H, W, 3] uint8 RGB as JPEG or PNG bytes (for CompressedImage outputs and tests)."""
    ext = {'jpeg': '.jpg', 'jpg': '.jpg', 'png': '.png'}.get(fmt.lower())
    if ext is None:
        raise ValueError(f'unsupported compressed format {fmt!r}; use jpeg or png')
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == '.jpg' else []
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f'OpenCV could not encode a {rgb.shape} image as {fmt}')
    return encoded.tobytes()


def rgb_to_image_fields(rgb: np.ndarray) -> ImageFields:
    """[H, W, 3] uint8 RGB -> rgb8 image fields (the data is a view when `rgb` is contiguous)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'expected [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}')
    height, width = rgb.shape[:2]
    data = np.ascontiguousarray(rgb).reshape(-1)
    return ImageFields(height, width, 'rgb8', False, width * 3, data)


def label_to_image_fields(label: np.ndarray) -> ImageFields:
    """[H, W] uint16 label image -> mono16 image fields in this machine's byte order."""
    if label.ndim != 2:
        raise ValueError(f'expected an [H, W] label image, got {label.shape}')
    height, width = label.shape
    data = np.ascontiguousarray(label, np.uint16).reshape(-1).view(np.uint8)
    return ImageFields(height, width, 'mono16', sys.byteorder == 'big', width * 2, data)


def image_fields_to_array(fields: ImageFields) -> np.ndarray:
    """Inverse of the two functions above: rgb8 -> [H, W, 3] uint8, mono16 -> [H, W] uint16."""
    if fields.encoding == 'mono16':
        dtype = np.dtype('>u2' if fields.is_bigendian else '<u2')
        rows = fields.data.reshape(fields.height, fields.step)[:, : fields.width * 2]
        return rows.copy().view(dtype).astype(np.uint16)
    return image_to_rgb(
        fields.data,
        height=fields.height,
        width=fields.width,
        encoding=fields.encoding,
        step=fields.step,
        is_bigendian=fields.is_bigendian,
    )


def mask_crops(masks: np.ndarray) -> list[MaskCrop]:
    """[N, H, W] bool masks -> one crop per instance, bounded by its own pixels."""
    crops = []
    for index, mask in enumerate(masks):
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        if ys.size == 0:
            crops.append(MaskCrop(index, 0, 0, np.zeros((0, 0), np.uint8)))
            continue
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        crop = mask[y0:y1, x0:x1].astype(np.uint8) * np.uint8(255)
        crops.append(MaskCrop(index, x0, y0, crop))
    return crops


def _colour(index: int) -> tuple[int, int, int]:
    # Golden-ratio hue steps keep neighbouring instance colours far apart.
    hue = int((index * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def overlay(
    rgb: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    labels: list[str],
    scores: np.ndarray,
    *,
    alpha: float = 0.5,
) -> np.ndarray:
    """A debug picture: masks tinted, boxes drawn and labelled with phrase and score.

    Args:
        rgb: [H, W, 3] uint8.
        masks: [N, H, W] bool.
        boxes: [N, 4] x1, y1, x2, y2 pixels.
    Returns:
        [H, W, 3] uint8 RGB (a new array).
    """
    out = rgb.astype(np.float32)
    for n in range(len(masks) - 1, -1, -1):
        colour = np.array(_colour(n), np.float32)
        out[masks[n]] = out[masks[n]] * (1 - alpha) + colour * alpha
    out = np.clip(out, 0, 255).astype(np.uint8)
    for n, (box, label, score) in enumerate(zip(boxes, labels, scores)):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        colour = _colour(n)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 1)
        cv2.putText(
            out, f'{label} {float(score):.2f}', (x1, max(y1 - 3, 10)),
            cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA,
        )  # fmt: skip
    return out
