"""Known-value tests of ops/masks.py; the numpy RLE is checked against pycocotools."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mobius_ros.ops.image import letterbox
from mobius_ros.ops.masks import (
    mask_iou,
    mask_nms,
    mask_quality,
    paste_masks,
    polygons_to_mask,
    rle_area,
    rle_decode,
    rle_decode_numpy,
    rle_encode,
    rle_encode_numpy,
    segmentation_to_mask,
)

mask_api = pytest.importorskip('pycocotools.mask')


def test_rle_known_value() -> None:
    mask = np.zeros((3, 2), bool)
    mask[1, 0] = mask[2, 0] = mask[0, 1] = True  # column-major: 0,1,1,1,0,0 -> runs 1,3,2
    rle = rle_encode_numpy(mask)
    assert rle == {'size': [3, 2], 'counts': '132'}
    assert rle_area(rle) == 3
    np.testing.assert_array_equal(rle_decode_numpy(rle), mask)
    np.testing.assert_array_equal(rle_decode_numpy({'size': [3, 2], 'counts': [1, 3, 2]}), mask)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_numpy_rle_matches_pycocotools(mask: np.ndarray) -> None:
    reference = mask_api.encode(np.asfortranarray(mask, dtype=np.uint8))
    ours = rle_encode_numpy(mask)
    assert ours['counts'] == reference['counts'].decode()
    assert ours == rle_encode(mask)
    np.testing.assert_array_equal(rle_decode_numpy(reference), mask)
    np.testing.assert_array_equal(rle_decode(ours), mask)
    assert rle_area(ours) == int(mask_api.area(reference))


def test_large_runs_roundtrip() -> None:
    mask = np.zeros((480, 640), bool)
    mask[100:400, 50:600] = True
    mask[0, 0] = True
    rle = rle_encode_numpy(mask)
    assert rle['counts'] == mask_api.encode(np.asfortranarray(mask, np.uint8))['counts'].decode()
    np.testing.assert_array_equal(rle_decode_numpy(rle), mask)


def test_polygons_and_segmentation() -> None:
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    mask = polygons_to_mask(square, (8, 10))
    assert mask.shape == (8, 10) and 16 <= mask.sum() <= 25
    assert mask[4, 4] and not mask[0, 0]
    np.testing.assert_array_equal(segmentation_to_mask(rle_encode(mask), (8, 10)), mask)
    with pytest.raises(ValueError):
        segmentation_to_mask(rle_encode(mask), (9, 10))


def test_mask_iou_and_nms() -> None:
    masks = np.zeros((3, 10, 10), bool)
    masks[0, :, :5] = True  # 50 px
    masks[1, :, :4] = True  # 40 px, a "part" of mask 0
    masks[2, :, 5:] = True  # disjoint
    iou = mask_iou(masks, masks)
    np.testing.assert_allclose(iou[0], [1.0, 0.8, 0.0])
    area = masks.reshape(3, -1).sum(1)
    np.testing.assert_array_equal(mask_nms(masks, area, 0.7), [0, 2])
    np.testing.assert_array_equal(mask_nms(masks, area, 0.9), [0, 2, 1])
    assert mask_iou(np.zeros((1, 2, 2), bool), np.zeros((1, 2, 2), bool))[0, 0] == 0


def test_paste_masks_inverts_letterbox() -> None:
    rng = np.random.default_rng(0)
    image_hw = (60, 90)
    masks = np.zeros((2, *image_hw), bool)
    masks[0, 10:40, 20:70] = True
    masks[1, 30:58, 5:30] = True
    image = np.zeros((*image_hw, 3), np.uint8)
    image[..., 0] = rng.integers(0, 255, image_hw)
    for center in (False, True):
        _, scale, pad = letterbox(image, (128, 128), center=center)
        # a perfect network: mask logits on the canvas at stride 4
        canvas_masks = np.stack(
            [
                letterbox(m.astype(np.uint8)[..., None], (128, 128), center=center)[0][..., 0]
                for m in masks
            ]
        )
        logits = canvas_masks.reshape(2, 32, 4, 32, 4).mean((2, 4)) * 2 - 1
        pasted = paste_masks(logits, image_hw=image_hw, scale=scale, pad=pad)
        assert pasted.shape == (2, *image_hw)
        assert (mask_iou(pasted, masks).diagonal() > 0.9).all()


def test_empty_inputs() -> None:
    none = np.zeros((0, 5, 6), bool)
    assert mask_iou(none, np.ones((2, 5, 6), bool)).shape == (0, 2)
    assert mask_nms(none, np.zeros(0), 0.5).tolist() == []


def test_letterbox_and_resize_known_values() -> None:
    from mobius_ros.ops.image import pad_to_multiple, resize_shortest_side, shortest_side_size

    image = np.zeros((50, 100, 3), np.uint8)
    canvas, scale, pad = letterbox(image, (64, 64))
    assert canvas.shape == (64, 64, 3) and scale == pytest.approx(0.64) and pad == (0, 0)
    _, _, centred = letterbox(image, (64, 64), center=True)
    assert centred == (16, 0)
    assert shortest_side_size((480, 640), 384) == (384, 512)
    assert shortest_side_size((100, 1000), 800, 1333) == (133, 1333)
    resized, s = resize_shortest_side(image, 25)
    assert resized.shape == (25, 50, 3) and s == pytest.approx(0.5)
    assert pad_to_multiple(97) == 128 and pad_to_multiple(64) == 64


def _bilinear_paste_reference(
    logits: np.ndarray, image_hw: tuple[int, int], scale: float, pad: tuple[int, int]
) -> np.ndarray:
    """Naive bilinear sampling of [N, h, w] stride-4 logits at each original pixel centre."""
    _, h, w = logits.shape
    ys = np.clip(((np.arange(image_hw[0]) + 0.5) * scale + pad[0]) / 4 - 0.5, 0, h - 1)
    xs = np.clip(((np.arange(image_hw[1]) + 0.5) * scale + pad[1]) / 4 - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = logits[:, y0][:, :, x0] * (1 - fx) + logits[:, y0][:, :, x1] * fx
    bottom = logits[:, y1][:, :, x0] * (1 - fx) + logits[:, y1][:, :, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize(
    ('image_hw', 'scale', 'pad'),
    [
        ((48, 64), 2.0, (0, 0)),  # upscaling, image fills the canvas
        ((100, 70), 0.64, (0, 0)),  # downscaling, padded at the right
        ((80, 60), 1.0, (8, 4)),  # whole-cell offset
        ((60, 90), 1.0, (5, 2)),  # fractional low-res offset (centred letterbox)
    ],
)
def test_paste_masks_samples_original_pixel_centres(
    image_hw: tuple[int, int], scale: float, pad: tuple[int, int]
) -> None:
    rng = np.random.default_rng(1)
    # Smooth logits so that pixels near the 0 level set are few and well defined.
    coarse = rng.normal(size=(3, 5, 5)).astype(np.float32)
    logits = np.stack([cv2.resize(c, (32, 24), interpolation=cv2.INTER_CUBIC) for c in coarse])
    pasted = paste_masks(logits, image_hw=image_hw, scale=scale, pad=pad, canvas_hw=(96, 128))
    reference = _bilinear_paste_reference(logits, image_hw, scale, pad)
    assert pasted.shape == (3, *image_hw)
    # OpenCV's warp quantises coordinates to 1/32 cell: only pixels at the level set may differ.
    differs = pasted != (reference > 0)
    assert not differs[np.abs(reference) > 0.05].any()
    assert differs.mean() < 1e-3
    assert paste_masks(logits[:0], image_hw=image_hw, scale=scale, pad=pad).shape == (0, *image_hw)


def test_mask_quality_known_values() -> None:
    logits = np.full((3, 2, 3), -5.0, np.float32)
    logits[0, 0, :2] = [0.5, np.log(3.0)]  # p = sigmoid(0.5), 0.75 inside
    logits[2] = 40.0  # every pixel inside, p ~ 1
    quality = mask_quality(logits)
    expected0 = (1 / (1 + np.exp(-0.5)) + 0.75) / 2
    np.testing.assert_allclose(quality, [expected0, 0.0, 1.0], rtol=1e-6)
    # A higher threshold leaves only the p = 0.75 pixel inside mask 0.
    np.testing.assert_allclose(mask_quality(logits, threshold=1.0)[0], 0.75, rtol=1e-6)
    assert mask_quality(logits[:0]).shape == (0,)
