"""Metrics against pycocotools and hand-computed values."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest

from mobius_ros.ops.boxes import box_xywh_to_xyxy
from mobius_ros.ops.masks import rle_decode, rle_encode
from mobius_ros.runtime.result import Prediction
from mobius_ros.train.evaluate import (
    agnostic_recall,
    coco_evaluate,
    lvis_evaluate,
    predictions_to_coco,
    referring_metrics,
    referring_top1,
)

pycoco = pytest.importorskip('pycocotools.cocoeval')


def _ground_truth() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for image_id in (1, 2, 3):
        images.append({'id': image_id, 'file_name': f'{image_id}.png', 'height': 64, 'width': 80})
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, 40, 2))
            w, h = (int(v) for v in rng.integers(12, 24, 2))
            mask = np.zeros((64, 80), bool)
            mask[y : y + h, x : x + w] = True
            anns.append(
                {
                    'id': len(anns) + 1,
                    'image_id': image_id,
                    'category_id': int(rng.integers(1, 3)),
                    'bbox': [x, y, w, h],
                    'area': w * h,
                    'iscrowd': 0,
                    'segmentation': rle_encode(mask),
                }
            )
    categories = [{'id': 1, 'name': 'cat'}, {'id': 2, 'name': 'dog'}]
    return {'images': images, 'annotations': anns, 'categories': categories}


def _perfect(gt: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            'image_id': a['image_id'],
            'category_id': a['category_id'],
            'bbox': list(a['bbox']),
            'score': 0.9,
            'segmentation': a['segmentation'],
        }
        for a in gt['annotations']
    ]


def _pycocotools_ap(gt: dict[str, Any], dets: list[dict[str, Any]], iou_type: str) -> float:
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        dt = coco.loadRes(copy.deepcopy(dets))
        ev = pycoco.COCOeval(coco, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0] * 100)


def test_perfect_detections_give_100() -> None:
    gt = _ground_truth()
    metrics = coco_evaluate(gt, _perfect(gt))
    assert metrics['bbox/AP'] == pytest.approx(100.0)
    assert metrics['segm/AP'] == pytest.approx(100.0)
    assert metrics['bbox/AR100'] == pytest.approx(100.0)


def test_shifted_box_matches_pycocotools() -> None:
    gt = _ground_truth()
    dets = _perfect(gt)
    dets[0]['bbox'][0] += 5  # IoU drops below the stricter thresholds
    dets[4]['bbox'][1] += 3
    dets[4]['score'] = 0.5
    dets[2]['category_id'] = 3 - dets[2]['category_id']  # a wrong class
    ours = coco_evaluate(gt, dets, iou_types=('bbox',))['bbox/AP']
    assert 30 < ours < 100
    assert ours == pytest.approx(_pycocotools_ap(gt, dets, 'bbox'), abs=1e-6)


def test_agnostic_recall_ignores_classes() -> None:
    gt = _ground_truth()
    dets = _perfect(gt)
    for d in dets:
        d['category_id'] = 1
    assert coco_evaluate(gt, dets, iou_types=('segm',))['segm/AR100'] < 100
    assert agnostic_recall(gt, dets) == pytest.approx(100.0)
    assert agnostic_recall(gt, dets[:4]) == pytest.approx(100 * 4 / 9)


def test_no_detections_is_zero_not_an_error() -> None:
    assert coco_evaluate(_ground_truth(), [])['bbox/AP'] == 0.0


def test_predictions_to_coco_round_trip() -> None:
    gt = _ground_truth()
    preds = []
    for image_id in (1, 2, 3):
        anns = [a for a in gt['annotations'] if a['image_id'] == image_id]
        boxes = box_xywh_to_xyxy(np.array([a['bbox'] for a in anns], np.float32))
        preds.append(
            Prediction(
                boxes=boxes,
                scores=np.linspace(0.9, 0.5, len(anns)).astype(np.float32),
                class_ids=np.array([a['category_id'] - 1 for a in anns], np.int64),
                phrases=('cat', 'dog'),
                masks=np.stack([rle_decode(a['segmentation']) for a in anns]),
                image_size=(64, 80),
            )
        )
    dets = predictions_to_coco(preds, [1, 2, 3], {'cat': 1, 'dog': 2})
    assert len(dets) == 9 and dets[0]['bbox'] == gt['annotations'][0]['bbox']
    metrics = coco_evaluate(gt, dets)
    assert metrics['bbox/AP'] == pytest.approx(100.0)
    assert metrics['segm/AP'] == pytest.approx(100.0)


def test_referring_metrics_known_values() -> None:
    gt_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    pred_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 4], [0, 0, 10, 6]], np.float32)  # 1, .4, .6
    gt_masks = [np.zeros((10, 10), bool) for _ in range(3)]
    for m in gt_masks:
        m[:, :] = True
    pred_masks = [np.zeros((10, 10), bool) for _ in range(3)]
    pred_masks[0][:, :] = True  # 100 / 100
    pred_masks[1][:4] = True  # 40 / 100
    # third: empty prediction -> 0 / 100
    metrics = referring_metrics(pred_boxes, gt_boxes, pred_masks=pred_masks, gt_masks=gt_masks)
    assert metrics['P@0.5'] == pytest.approx(200 / 3)
    assert metrics['oIoU'] == pytest.approx(140 / 300 * 100)
    assert metrics['mIoU'] == pytest.approx((100 + 40 + 0) / 3)


def test_referring_top1_of_empty_prediction() -> None:
    box, mask = referring_top1(Prediction.empty((5, 7), ('the red cup',)))
    assert box.tolist() == [0, 0, 0, 0] and mask.shape == (5, 7) and not mask.any()


def test_lvis_style_frequency_groups() -> None:
    gt = _ground_truth()
    gt['categories'][0]['frequency'], gt['categories'][1]['frequency'] = 'r', 'f'
    for image in gt['images']:
        image['neg_category_ids'], image['not_exhaustive_category_ids'] = [], []
    dets = _perfect(gt)
    metrics = lvis_evaluate(gt, dets)
    assert metrics['bbox/AP'] == pytest.approx(100.0) and metrics['segm/APr'] == pytest.approx(100)
    assert metrics['bbox/APc'] == -1.0
    worse = [d for d in dets if d['category_id'] == 2]  # every rare-category instance missed
    assert lvis_evaluate(gt, worse, iou_types=('bbox',))['bbox/APr'] == pytest.approx(0.0)
