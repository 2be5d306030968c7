"""Box geometry as pure functions; every function takes numpy arrays or torch tensors.

The same code serves the torch-free runtime (numpy) and training (torch, differentiable), so
the array module is picked from the argument instead of importing torch here. Formats are in
the names: `xyxy` = x1, y1, x2, y2; `cxcywh` = centre x, centre y, width, height; `xywh` = COCO's
x, y (top-left), width, height.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = TypeVar('Array', np.ndarray, torch.Tensor)
else:
    Array = TypeVar('Array')


def _xp(x: Any) -> ModuleType:
    """numpy for arrays, torch for tensors (torch is imported only if a tensor was passed)."""
    if isinstance(x, np.ndarray):
        return np
    import torch

    if isinstance(x, torch.Tensor):
        return torch
    raise TypeError(f'expected a numpy array or a torch tensor, got {type(x).__name__}')


def box_cxcywh_to_xyxy(boxes: Array) -> Array:
    """[..., 4] cx, cy, w, h -> [..., 4] x1, y1, x2, y2."""
    cx, cy, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _xp(boxes).stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def box_xyxy_to_cxcywh(boxes: Array) -> Array:
    """[..., 4] x1, y1, x2, y2 -> [..., 4] cx, cy, w, h."""
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _xp(boxes).stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def box_xywh_to_xyxy(boxes: Array) -> Array:
    """[..., 4] COCO x, y, w, h -> [..., 4] x1, y1, x2, y2."""
    x, y, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _xp(boxes).stack([x, y, x + w, y + h], -1)


def box_xyxy_to_xywh(boxes: Array) -> Array:
    """[..., 4] x1, y1, x2, y2 -> [..., 4] COCO x, y, w, h."""
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _xp(boxes).stack([x1, y1, x2 - x1, y2 - y1], -1)


def box_area(boxes: Array) -> Array:
    """[..., 4] xyxy -> [...] area (0 for degenerate boxes)."""
    w = (boxes[..., 2] - boxes[..., 0]).clip(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clip(min=0)
    return w * h


def _inter_union(boxes1: Array, boxes2: Array) -> tuple[Array, Array]:
    xp = _xp(boxes1)
    lt = xp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = xp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter, union


def box_iou(boxes1: Array, boxes2: Array, *, eps: float = 1e-9) -> Array:
    """Pairwise IoU of [N, 4] and [M, 4] xyxy boxes -> [N, M]."""
    inter, union = _inter_union(boxes1, boxes2)
    return inter / (union + eps)


def generalized_box_iou(boxes1: Array, boxes2: Array, *, eps: float = 1e-9) -> Array:
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of [N, 4] and [M, 4] xyxy -> [N, M].

    In [-1, 1]; differentiable for torch inputs (the GIoU loss is 1 - the diagonal).
    """
    xp = _xp(boxes1)
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / (union + eps)
    lt = xp.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = xp.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clip(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / (hull + eps)


def masks_to_boxes(masks: Array) -> Array:
    """[N, H, W] bool masks -> [N, 4] float32 xyxy boxes in pixel-edge coordinates.

    A mask covering columns 2..4 gives x1 = 2, x2 = 5 (the box encloses the pixels, as COCO's
    `toBbox` does). Empty masks give an all-zero box.
    """
    xp = _xp(masks)
    _, h, w = masks.shape
    if xp is np:
        cols, rows = masks.any(axis=1), masks.any(axis=2)  # [N, W], [N, H]
        xs, ys = np.arange(w), np.arange(h)
    else:
        cols, rows = masks.bool().any(dim=1), masks.bool().any(dim=2)
        xs = xp.arange(w, device=masks.device)
        ys = xp.arange(h, device=masks.device)
    x1 = xp.amin(xp.where(cols, xs, w), -1)
    x2 = xp.amax(xp.where(cols, xs + 1, 0), -1)
    y1 = xp.amin(xp.where(rows, ys, h), -1)
    y2 = xp.amax(xp.where(rows, ys + 1, 0), -1)
    boxes = xp.stack([x1, y1, x2, y2], -1)
    empty = ~cols.any(-1)
    boxes = boxes * (~empty)[:, None]
    return boxes.astype(np.float32) if xp is np else boxes.float()


def scale_boxes(boxes: Array, *, scale: float, pad: tuple[float, float] = (0.0, 0.0)) -> Array:
    """Map [N, 4] xyxy boxes from a letterboxed canvas back to the original image.

    `scale` and `pad` (pad_y, pad_x) are what `ops.image.letterbox` returned:
    canvas = original * scale + pad.
    """
    pad_y, pad_x = pad
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return _xp(boxes).stack(
        [(x1 - pad_x) / scale, (y1 - pad_y) / scale, (x2 - pad_x) / scale, (y2 - pad_y) / scale],
        -1,
    )


def clip_boxes(boxes: Array, image_hw: tuple[int, int]) -> Array:
    """Clip [N, 4] xyxy boxes to an image of (H, W) pixels."""
    h, w = image_hw
    xp = _xp(boxes)
    return xp.stack(
        [
            boxes[..., 0].clip(0, w),
            boxes[..., 1].clip(0, h),
            boxes[..., 2].clip(0, w),
            boxes[..., 3].clip(0, h),
        ],
        -1,
    )
