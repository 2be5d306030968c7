"""Mask math as pure functions: COCO RLE, polygons, IoU, NMS, pasting back to the image.

numpy/OpenCV only, so the torch-free runtime can use it. RLE goes through pycocotools when it is
installed (C speed) and otherwise through a pure-numpy implementation of the same format; the two
are tested against each other and produce identical strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

Rle = dict[str, Any]  # {'size': [H, W], 'counts': str} (compressed, COCO's JSON form)


def _mask_api() -> Any | None:
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        return None
    return mask_api


def rle_encode_numpy(mask: np.ndarray) -> Rle:
    """[H, W] bool -> compressed COCO RLE, pure numpy (column-major runs, zeros first)."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).ravel(order='F')
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    if not flat.size:
        counts = []
    return {'size': [h, w], 'counts': _counts_to_string(counts)}


def rle_decode_numpy(rle: Rle) -> np.ndarray:
    """Compressed (str/bytes) or uncompressed (list) COCO RLE -> [H, W] bool, pure numpy."""
    h, w = rle['size']
    counts = rle['counts']
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, np.asarray(counts, np.int64))
    if flat.size != h * w:
        raise ValueError(f'RLE covers {flat.size} pixels, size says {h}x{w}')
    return flat.reshape((w, h)).T


def _counts_to_string(counts: Sequence[int]) -> str:
    # COCO's rleToString: deltas against the run two back, 5-bit groups, continuation bit 0x20.
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return ''.join(out)


def _string_to_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_encode(mask: np.ndarray) -> Rle:
    """[H, W] bool -> compressed COCO RLE with a str `counts` (JSON-ready)."""
    api = _mask_api()
    if api is None:
        return rle_encode_numpy(mask)
    rle = api.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


def rle_decode(rle: Rle) -> np.ndarray:
    """COCO RLE (compressed or uncompressed) -> [H, W] bool."""
    api = _mask_api()
    if api is None:
        return rle_decode_numpy(rle)
    if isinstance(rle['counts'], list):
        rle = api.frPyObjects(rle, *rle['size'])
    elif isinstance(rle['counts'], str):
        rle = {'size': rle['size'], 'counts': rle['counts'].encode('ascii')}
    return api.decode(rle).astype(bool)


def rle_area(rle: Rle) -> int:
    """Number of foreground pixels of a COCO RLE."""
    counts = rle['counts']
    if isinstance(counts, (str, bytes)):
        counts = _string_to_counts(counts.decode() if isinstance(counts, bytes) else counts)
    return int(sum(counts[1::2]))


def polygons_to_mask(polygons: Sequence[Sequence[float]], image_hw: tuple[int, int]) -> np.ndarray:
    """COCO polygons ([[x1, y1, x2, y2, ...], ...]) -> [H, W] bool.

    With pycocotools this is COCO's own rasterisation (what the official evaluation uses); the
    OpenCV fallback fills the same polygons but may differ on boundary pixels.
    """
    h, w = image_hw
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        return np.zeros((h, w), bool)
    api = _mask_api()
    if api is not None:
        return api.decode(api.merge(api.frPyObjects([list(p) for p in polygons], h, w))).astype(
            bool
        )
    mask = np.zeros((h, w), np.uint8)
    pts = [
        np.round(np.asarray(p, np.float64).reshape(-1, 2) - 0.5).astype(np.int32) for p in polygons
    ]
    cv2.fillPoly(mask, pts, 1)
    return mask.astype(bool)


def segmentation_to_mask(segmentation: Any, image_hw: tuple[int, int]) -> np.ndarray:
    """Any COCO `segmentation` field (polygons, RLE, uncompressed RLE) -> [H, W] bool."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, image_hw)
    mask = rle_decode(segmentation)
    if mask.shape != tuple(image_hw):
        raise ValueError(f'RLE size {mask.shape} differs from the image {tuple(image_hw)}')
    return mask


def mask_iou(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [N, H, W] and [M, H, W] bool masks -> [N, M] float32 (0 if both empty)."""
    a = masks1.reshape(len(masks1), int(np.prod(masks1.shape[1:]))).astype(np.float32)
    b = masks2.reshape(len(masks2), int(np.prod(masks2.shape[1:]))).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0).astype(np.float32)


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on [N, H, W] bool masks with [N] scores -> kept indices, by score descending.

    Used with the mask area as the score to drop SA-1B style part-level masks (a part overlaps
    its larger whole and is suppressed by it), as GLEE and MOBIUS do.
    """
    order = np.argsort(-np.asarray(scores), kind='stable')
    iou = mask_iou(masks[order], masks[order])
    keep: list[int] = []
    suppressed = np.zeros(len(order), bool)
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, np.int64)


def mask_quality(mask_logits: np.ndarray, *, threshold: float = 0.0) -> np.ndarray:
    """[N, h, w] mask logits -> [N] float32 mean probability inside each mask.

    The inside is where the logit exceeds `threshold`; an empty mask has quality 0. It says how
    sure the model is of the pixels it claims (the predictor's score is class probability x
    quality).
    """
    n, h, w = mask_logits.shape
    flat = mask_logits.reshape(n, h * w)
    inside = flat > threshold
    area = inside.sum(axis=1)
    # The sigmoid only of the pixels inside (row-major, so grouped by mask): masks cover a
    # small part of the canvas, and the sigmoid of every pixel was most of this cost. The tanh
    # form never overflows.
    probs = 0.5 + 0.5 * np.tanh(0.5 * flat[inside].astype(np.float32))
    cumulative = np.zeros(int(area.sum()) + 1, np.float64)
    np.cumsum(probs, out=cumulative[1:])
    ends = np.cumsum(area)
    return ((cumulative[ends] - cumulative[ends - area]) / np.maximum(area, 1)).astype(np.float32)


def paste_masks(
    mask_logits: np.ndarray,
    *,
    image_hw: tuple[int, int],
    scale: float,
    pad: tuple[int, int] = (0, 0),
    canvas_hw: tuple[int, int] | None = None,
    threshold: float = 0.0,
) -> np.ndarray:
    """Resize low-res mask logits on the letterboxed canvas back to the original image.

    Args:
        mask_logits: [N, h, w] float logits covering the whole canvas (e.g. at stride 4).
        image_hw: (H, W) of the original image.
        scale, pad: what `ops.image.letterbox` returned (canvas = original * scale + pad,
            pad = (pad_y, pad_x) in canvas pixels).
        canvas_hw: (Hc, Wc) of the canvas; default 4 * (h, w).
        threshold: logit threshold (0 = probability 0.5).

    Returns:
        [N, H, W] bool masks in original image pixels.

    Each output pixel centre is mapped into the low-res grid and sampled bilinearly, so there is
    no full-canvas intermediate and no half-pixel shift.
    """
    n, h, w = mask_logits.shape
    H, W = image_hw
    ch, cw = canvas_hw if canvas_hw is not None else (4 * h, 4 * w)
    # low-res coordinate of original pixel centre x: ((x + 0.5) * scale + pad_x) * sx - 0.5
    #   = ax * x + 0.5 * ax - 0.5 + ox, with ax = scale * sx and ox = pad_x * sx.
    ay, ax = scale * h / ch, scale * w / cw
    oy, ox = pad[0] * h / ch, pad[1] * w / cw
    out = np.empty((n, H, W), bool)
    if n == 0:
        return out
    if oy == round(oy) and ox == round(ox):
        _paste_by_resize(
            mask_logits, out, step=(ay, ax), offset=(round(oy), round(ox)), thr=threshold
        )
    else:
        _paste_by_warp(mask_logits, out, step=(ay, ax), offset=(oy, ox), thr=threshold)
    return out


def _paste_by_resize(
    mask_logits: np.ndarray,
    out: np.ndarray,
    *,
    step: tuple[float, float],
    offset: tuple[int, int],
    thr: float,
) -> None:
    # cv2.resize given fx/fy (and no dsize) samples source (x + 0.5) / fx - 0.5: exactly our
    # mapping once the crop starts at the whole-cell offset. One call per mask beats both
    # warpAffine (~4x slower, fixed-point coordinates) and resizing an [h, w, N] stack (the
    # transposes in and out cost more than the resize).
    _, H, W = out.shape
    (ay, ax), (y0, x0) = step, offset
    # Last low-res cell the bilinear kernel touches, +1 so the edge clamp never moves.
    y1 = min(mask_logits.shape[1], int(np.floor(y0 + ay * H)) + 2)
    x1 = min(mask_logits.shape[2], int(np.floor(x0 + ax * W)) + 2)
    crops = mask_logits[:, y0:y1, x0:x1]
    for i in range(crops.shape[0]):
        resized = cv2.resize(
            np.ascontiguousarray(crops[i], np.float32),
            (0, 0),
            fx=1.0 / ax,
            fy=1.0 / ay,
            interpolation=cv2.INTER_LINEAR,
        )
        if resized.shape[0] < H or resized.shape[1] < W:
            raise ValueError(
                f'masks of {mask_logits.shape[1:]} on the canvas do not cover an image of '
                f'{(H, W)} at scale {1 / ax:.4g}: wrong scale or canvas_hw'
            )
        np.greater(resized[:H, :W], thr, out=out[i])


def _paste_by_warp(
    mask_logits: np.ndarray,
    out: np.ndarray,
    *,
    step: tuple[float, float],
    offset: tuple[float, float],
    thr: float,
) -> None:
    # A centred letterbox can put the image at a fractional low-res cell; only an affine warp
    # samples that exactly.
    _, H, W = out.shape
    (ay, ax), (oy, ox) = step, offset
    matrix = np.array([[ax, 0.0, 0.5 * ax - 0.5 + ox], [0.0, ay, 0.5 * ay - 0.5 + oy]], np.float64)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    for i in range(mask_logits.shape[0]):
        resampled = cv2.warpAffine(
            np.ascontiguousarray(mask_logits[i], np.float32),
            matrix,
            (W, H),
            flags=flags,
            borderMode=cv2.BORDER_REPLICATE,
        )
        np.greater(resampled, thr, out=out[i])
