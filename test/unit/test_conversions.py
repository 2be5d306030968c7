"""Image-message boundary: every encoding against a known picture, bad fields, fuzzing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mobius_ros.common.errors import ImageError
from mobius_ros.ros.conversions import (
    ENCODINGS,
    compressed_to_rgb,
    image_fields_to_array,
    image_to_rgb,
    label_to_image_fields,
    mask_crops,
    overlay,
    rgb_to_compressed,
    rgb_to_image_fields,
)


def _picture(height: int = 6, width: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """What a camera driver would put in `data` for this encoding (independent of the code)."""
    if encoding == 'rgb8':
        pixels = rgb
    elif encoding in ('bgr8', '8UC3'):
        pixels = rgb[..., ::-1]
    elif encoding == 'rgba8':
        pixels = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    elif encoding == 'bgra8':
        pixels = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])
    else:
        raise AssertionError(encoding)
    pixels = np.ascontiguousarray(pixels)
    return pixels.tobytes(), pixels.shape[1] * pixels.shape[2]


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', '8UC3'])
def test_colour_encodings_give_the_same_rgb(encoding: str) -> None:
    rgb = _picture()
    data, step = _encode(rgb, encoding)
    out = image_to_rgb(data, height=6, width=8, encoding=encoding, step=step)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_rgb8_is_a_view_of_the_message_buffer() -> None:
    buffer = bytearray(_picture().tobytes())
    out = image_to_rgb(buffer, height=6, width=8, encoding='rgb8', step=24)
    assert np.shares_memory(out, np.frombuffer(buffer, np.uint8))


def test_padded_rows_are_skipped() -> None:
    rgb = _picture()
    padded = np.zeros((6, 30), np.uint8)
    padded[:, :24] = rgb.reshape(6, 24)
    out = image_to_rgb(padded.tobytes(), height=6, width=8, encoding='rgb8', step=30)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono16_keeps_the_high_byte_in_either_byte_order(bigendian: bool) -> None:
    values = np.array([[0x0000, 0x12FF], [0xAB01, 0xFFFF]], np.uint16)
    data = values.astype('>u2' if bigendian else '<u2').tobytes()
    out = image_to_rgb(data, height=2, width=2, encoding='mono16', step=4, is_bigendian=bigendian)
    np.testing.assert_array_equal(out[..., 0], [[0x00, 0x12], [0xAB, 0xFF]])
    assert (out == out[..., :1]).all()


def test_mono8_is_grey_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = image_to_rgb(grey.tobytes(), height=3, width=4, encoding='mono8', step=4)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize('encoding', ['yuv422', 'uyvy', 'yuyv', 'yuv422_yuy2'])
def test_yuv422_of_a_flat_grey_is_grey(encoding: str) -> None:
    # Y = 128, U = V = 128 is mid grey in every YUV 4:2:2 byte order.
    data = np.full((4, 8), 128, np.uint8).tobytes()
    out = image_to_rgb(data, height=4, width=4, encoding=encoding, step=8)
    assert out.shape == (4, 4, 3)
    assert np.abs(out.astype(int) - 128).max() <= 2


def test_uyvy_and_yuyv_read_luma_from_different_bytes() -> None:
    # Bytes alternate 128 / 235: as UYVY that is luma 235 with neutral chroma (white); as YUYV
    # it is luma 128 with extreme chroma (a saturated colour).
    row = np.tile(np.array([128, 235], np.uint8), 4)
    data = np.tile(row, (2, 1)).tobytes()
    uyvy = image_to_rgb(data, height=2, width=4, encoding='uyvy', step=8)
    yuyv = image_to_rgb(data, height=2, width=4, encoding='yuyv', step=8)
    assert uyvy.min() > 220 and yuyv.min() < 150


@pytest.mark.parametrize(
    ('fields', 'reason'),
    [
        ({'encoding': 'jpeg'}, 'unsupported image encoding'),
        ({'encoding': '32FC1'}, 'unsupported image encoding'),
        ({'step': 20}, 'shorter than'),
        ({'height': 0}, 'empty image'),
        ({'width': 0}, 'empty image'),
        ({'data': bytes(100)}, 'expected step'),
        ({'data': bytes(200)}, 'expected step'),
        ({'encoding': 'uyvy', 'width': 3, 'step': 6, 'data': bytes(36)}, 'even width'),
    ],
)
def test_bad_fields_raise_image_error(fields: dict, reason: str) -> None:
    base = {'data': _picture().tobytes(), 'height': 6, 'width': 8, 'encoding': 'rgb8', 'step': 24}
    base.update(fields)
    with pytest.raises(ImageError, match=reason):
        image_to_rgb(base.pop('data'), **base)


def test_compressed_round_trip_and_corrupt_data() -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, 12:] = (255, 0, 0)
    png = rgb_to_compressed(rgb, 'png')
    np.testing.assert_array_equal(compressed_to_rgb(png, 'png'), rgb)
    jpeg = rgb_to_compressed(rgb, 'jpeg')
    decoded = compressed_to_rgb(jpeg, 'rgb8; jpeg compressed bgr8')
    assert decoded.shape == rgb.shape
    assert decoded[:, 14:, 0].mean() > 200 and decoded[:, 14:, 2].mean() < 50  # red stays red
    with pytest.raises(ImageError, match='could not decode'):
        compressed_to_rgb(jpeg[: len(jpeg) // 3] + b'\x00' * 10, 'jpeg')
    with pytest.raises(ImageError, match='no data'):
        compressed_to_rgb(b'', 'jpeg')
    with pytest.raises(ImageError, match='depth'):
        compressed_to_rgb(png, '16UC1; compressedDepth')


def test_output_fields_round_trip() -> None:
    rgb = _picture(5, 7)
    np.testing.assert_array_equal(image_fields_to_array(rgb_to_image_fields(rgb)), rgb)
    label = np.array([[0, 1, 2], [300, 65535, 0]], np.uint16)
    fields = label_to_image_fields(label)
    assert (fields.encoding, fields.step, fields.data.size) == ('mono16', 6, 12)
    np.testing.assert_array_equal(image_fields_to_array(fields), label)


def test_mask_crops_bound_each_instance_even_where_they_overlap() -> None:
    masks = np.zeros((3, 10, 12), bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 4:9, 1:5] = True  # overlaps instance 0
    crops = mask_crops(masks)
    assert [(c.index, c.x, c.y, c.mask.shape) for c in crops] == [
        (0, 3, 2, (4, 6)),
        (1, 1, 4, (5, 4)),
        (2, 0, 0, (0, 0)),
    ]
    assert (crops[1].mask == 255).all()
    pasted = np.zeros((10, 12), bool)
    pasted[4:9, 1:5] = crops[1].mask > 0
    np.testing.assert_array_equal(pasted, masks[1])


def test_overlay_tints_only_mask_pixels() -> None:
    rgb = np.full((20, 20, 3), 100, np.uint8)
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 5:15, 5:15] = True
    out = overlay(rgb, masks, np.zeros((0, 4)), [], np.zeros(0))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert (out[0, 0] == 100).all() and not (out[10, 10] == 100).all()


_ENCODINGS = st.sampled_from([*ENCODINGS, 'jpeg', '', 'RGB8', '32FC1'])


@settings(max_examples=300, deadline=None)
@given(
    encoding=_ENCODINGS,
    height=st.integers(-2, 9),
    width=st.integers(-2, 9),
    step=st.integers(-4, 80),
    data=st.binary(max_size=400),
    bigendian=st.booleans(),
)
def test_fuzz_raw_images_give_rgb_or_image_error(
    encoding: str, height: int, width: int, step: int, data: bytes, bigendian: bool
) -> None:
    try:
        out = image_to_rgb(
            data, height=height, width=width, encoding=encoding, step=step,
            is_bigendian=bigendian,
        )  # fmt: skip
    except ImageError:
        return
    assert out.shape == (height, width, 3) and out.dtype == np.uint8


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), cut=st.integers(0, 2000))
def test_fuzz_compressed_gives_rgb_or_image_error(data: bytes, cut: int) -> None:
    valid = rgb_to_compressed(_picture(8, 8), 'jpeg')
    for blob in (data, valid[:cut] + data):
        try:
            out = compressed_to_rgb(blob, 'jpeg')
        except ImageError:
            continue
        assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


def test_fuzz_helpers_are_consistent_with_opencv() -> None:
    # The test's reference BGR order really is OpenCV's (guards the _encode helper itself).
    rgb = _picture()
    np.testing.assert_array_equal(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), rgb[..., ::-1])
