"""Known-value tests of ops/boxes.py on numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobius_ros.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_cxcywh,
    box_xyxy_to_xywh,
    clip_boxes,
    generalized_box_iou,
    masks_to_boxes,
    scale_boxes,
)

BACKENDS = [np.asarray, lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)]


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.mark.parametrize('to', BACKENDS)
def test_format_conversions(to: object) -> None:
    xyxy = to(np.array([[10.0, 20.0, 30.0, 60.0]], np.float32))
    np.testing.assert_allclose(_np(box_xyxy_to_cxcywh(xyxy)), [[20, 40, 20, 40]])
    np.testing.assert_allclose(_np(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy))), _np(xyxy))
    np.testing.assert_allclose(_np(box_xyxy_to_xywh(xyxy)), [[10, 20, 20, 40]])
    np.testing.assert_allclose(_np(box_xywh_to_xyxy(box_xyxy_to_xywh(xyxy))), _np(xyxy))
    np.testing.assert_allclose(_np(box_area(xyxy)), [800])


@pytest.mark.parametrize('to', BACKENDS)
def test_iou_and_giou_known_values(to: object) -> None:
    a = to(np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float32))
    b = to(np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], np.float32))
    iou = _np(box_iou(a, b))
    np.testing.assert_allclose(iou[0], [1 / 7, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(iou[1], [0.0, 0.25, 0.0], atol=1e-6)
    giou = _np(generalized_box_iou(a, b))
    # [0,0,2,2] vs [1,1,3,3]: IoU 1/7, hull 9, union 7 -> 1/7 - 2/9
    np.testing.assert_allclose(giou[0, 0], 1 / 7 - 2 / 9, atol=1e-6)
    np.testing.assert_allclose(giou[0, 1], 1.0, atol=1e-6)
    # disjoint [0,0,2,2] vs [5,5,6,6]: hull 36, union 5 -> -(31/36)
    np.testing.assert_allclose(giou[0, 2], -31 / 36, atol=1e-6)


def test_giou_is_differentiable() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    (1 - generalized_box_iou(a, b)).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


@pytest.mark.parametrize('backend', ['numpy', 'torch'])
def test_masks_to_boxes(backend: str) -> None:
    masks = np.zeros((3, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 7] = True
    m = masks if backend == 'numpy' else torch.from_numpy(masks)
    boxes = _np(masks_to_boxes(m))
    np.testing.assert_array_equal(boxes, [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]])
    assert boxes.dtype == np.float32


def test_scale_and_clip_boxes() -> None:
    canvas_boxes = np.array([[12.0, 6.0, 32.0, 26.0]])
    # canvas = original * 2 + (pad_y=6, pad_x=2)
    np.testing.assert_allclose(scale_boxes(canvas_boxes, scale=2.0, pad=(6, 2)), [[5, 0, 15, 10]])
    np.testing.assert_allclose(clip_boxes(np.array([[-3.0, 2, 50, 9]]), (8, 40)), [[0, 2, 40, 8]])
