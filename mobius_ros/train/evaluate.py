"""Evaluation metrics (DESIGN §4.9): COCO box/mask AP, category-agnostic AR@100, referring
P@0.5 and overall IoU.

COCO metrics go through faster-coco-eval (same numbers as pycocotools, much faster); only metric
code lives here, the evaluation loop is the `eval` command's. Values are percentages (0..100),
as papers report them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.ops.boxes import box_iou, box_xyxy_to_xywh
from mobius_ros.ops.masks import rle_encode
from mobius_ros.runtime.result import Prediction

# COCOeval's stats vector, in order
_STAT_NAMES = (
    'AP',
    'AP50',
    'AP75',
    'APs',
    'APm',
    'APl',
    'AR1',
    'AR10',
    'AR100',
    'ARs',
    'ARm',
    'ARl',
)


def predictions_to_coco(
    predictions: Sequence[Prediction],
    image_ids: Sequence[int],
    category_ids: Mapping[str, int],
    *,
    with_masks: bool = True,
) -> list[dict[str, Any]]:
    """`Prediction`s -> COCO result dicts (bbox xywh, score, category_id, RLE segmentation).

    `category_ids` maps each phrase to its COCO category id (e.g. {c.phrase: c.id} of the
    dataset's categories); an agnostic prediction ("object") maps through `{'object': 1}` or any
    id when the evaluation ignores categories.
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f'{len(predictions)} predictions for {len(image_ids)} image ids')
    results = []
    for pred, image_id in zip(predictions, image_ids):
        xywh = box_xyxy_to_xywh(np.asarray(pred.boxes, np.float64))
        for n in range(len(pred)):
            result: dict[str, Any] = {
                'image_id': int(image_id),
                'category_id': int(category_ids[pred.phrases[int(pred.class_ids[n])]]),
                'bbox': [round(float(v), 3) for v in xywh[n]],
                'score': float(pred.scores[n]),
            }
            if with_masks:
                result['segmentation'] = rle_encode(pred.masks[n])
            results.append(result)
    return results


def _load_gt(ground_truth: dict[str, Any] | str | Path) -> Any:
    from faster_coco_eval import COCO

    if isinstance(ground_truth, dict):
        # COCO() indexes the dict in place; keep the caller's untouched
        return COCO({k: v for k, v in ground_truth.items()})
    return COCO(str(ground_truth))


def coco_evaluate(
    ground_truth: dict[str, Any] | str | Path,
    detections: Sequence[dict[str, Any]],
    *,
    iou_types: Sequence[str] = ('bbox', 'segm'),
    use_categories: bool = True,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO AP/AR of `detections` (COCO result dicts) against a COCO instances ground truth.

    Args:
        ground_truth: COCO instances dict or JSON path.
        detections: result dicts (see `predictions_to_coco`).
        iou_types: 'bbox' and/or 'segm'.
        use_categories: False gives category-agnostic evaluation (every instance one class),
            whose 'AR100' is the paper's agnostic AR@100.
        image_ids: evaluate on these images only (default: all images of the ground truth).

    Returns:
        '<iou_type>/<stat>' -> value in percent, stats as in COCOeval.summarize (AP, AP50, AP75,
        APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl); -1 where COCO has nothing to measure.
    """
    from faster_coco_eval import COCOeval_faster

    gt = _load_gt(ground_truth)
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        dets = [d for d in detections if iou_type != 'segm' or 'segmentation' in d]
        if not dets:
            metrics.update({f'{iou_type}/{name}': 0.0 for name in _STAT_NAMES})
            continue
        dt = gt.loadRes([dict(d) for d in dets])
        evaluator = COCOeval_faster(gt, dt, iouType=iou_type)
        evaluator.params.useCats = int(use_categories)
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        with contextlib.redirect_stdout(io.StringIO()):  # summarize() prints a table
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        for name, value in zip(_STAT_NAMES, evaluator.stats):
            metrics[f'{iou_type}/{name}'] = float(value) * 100 if value >= 0 else -1.0
    return metrics


def lvis_evaluate(
    ground_truth: dict[str, Any] | str | Path,
    detections: Sequence[dict[str, Any]],
    *,
    iou_types: Sequence[str] = ('bbox', 'segm'),
    max_dets: int = 300,
) -> dict[str, float]:
    """LVIS-style AP (federated: negative / not-exhaustive categories per image, up to 300
    detections, AP split by rare / common / frequent categories) via faster-coco-eval.

    The ground truth must be LVIS-formatted (category `frequency`, image `neg_category_ids` and
    `not_exhaustive_category_ids`). Returns '<iou_type>/<AP|AP50|AP75|APr|APc|APf|AR>' in
    percent; -1 where a group has no categories.
    """
    from faster_coco_eval import COCOeval_faster

    gt = _load_gt(ground_truth)
    wanted = {'AP': 'AP_all', 'AP50': 'AP_50', 'AP75': 'AP_75', 'APr': 'APr', 'APc': 'APc'}
    wanted |= {'APf': 'APf', 'AR': 'AR_all'}
    metrics: dict[str, float] = {}
    for iou_type in iou_types:
        dets = [d for d in detections if iou_type != 'segm' or 'segmentation' in d]
        if not dets:
            metrics.update({f'{iou_type}/{name}': 0.0 for name in wanted})
            continue
        evaluator = COCOeval_faster(
            gt, gt.loadRes([dict(d) for d in dets]), iouType=iou_type, lvis_style=True
        )
        evaluator.params.maxDets = [max_dets]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = evaluator.stats_as_dict
        for name, key in wanted.items():
            value = float(stats[key])
            metrics[f'{iou_type}/{name}'] = value * 100 if value >= 0 else -1.0
    return metrics


def agnostic_recall(
    ground_truth: dict[str, Any] | str | Path,
    detections: Sequence[dict[str, Any]],
    *,
    iou_type: str = 'segm',
) -> float:
    """Category-agnostic AR@100 (percent): classes ignored, up to 100 detections per image."""
    metrics = coco_evaluate(ground_truth, detections, iou_types=(iou_type,), use_categories=False)
    return metrics[f'{iou_type}/AR100']


def referring_metrics(
    pred_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    *,
    pred_masks: Sequence[np.ndarray] | None = None,
    gt_masks: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Referring detection/segmentation over a set of (image, expression) pairs.

    Args:
        pred_boxes: [N, 4] xyxy of the top-1 instance per expression (zeros when none).
        gt_boxes: [N, 4] xyxy of the referred instance.
        pred_masks, gt_masks: N masks [H_i, W_i] bool each (sizes may differ per image).

    Returns:
        'P@0.5': percent of expressions whose top-1 box has IoU >= 0.5 with the target;
        with masks also 'oIoU' (sum of intersections / sum of unions over the whole set, in
        percent, as RefCOCO papers report it) and 'mIoU' (mean per-expression mask IoU).
    """
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError(f'{len(pred_boxes)} predictions for {len(gt_boxes)} targets')
    n = len(gt_boxes)
    ious = np.array([box_iou(pred_boxes[i : i + 1], gt_boxes[i : i + 1])[0, 0] for i in range(n)])
    metrics = {'P@0.5': float((ious >= 0.5).mean() * 100) if n else 0.0}
    if pred_masks is not None and gt_masks is not None:
        if len(pred_masks) != n or len(gt_masks) != n:
            raise ValueError('need one predicted and one ground-truth mask per expression')
        inter = np.array([np.logical_and(p, g).sum() for p, g in zip(pred_masks, gt_masks)])
        union = np.array([np.logical_or(p, g).sum() for p, g in zip(pred_masks, gt_masks)])
        metrics['oIoU'] = float(inter.sum() / max(union.sum(), 1) * 100)
        per = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        metrics['mIoU'] = float(per.mean() * 100) if n else 0.0
    return metrics


def referring_top1(prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 box [4] and mask [H, W] of a referring prediction (zeros if it found nothing)."""
    if len(prediction) == 0:
        return np.zeros(4, np.float32), np.zeros(prediction.image_size, bool)
    best = int(np.argmax(prediction.scores))
    return np.asarray(prediction.boxes[best], np.float32), prediction.masks[best]
