"""COCO-format loading: polygons, RLE, crowd, LVIS names, box-only, agnostic, part filter."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mobius_ros.ops.masks import rle_encode
from mobius_ros.train.data.coco import CocoInstances, category_phrase

REAL = Path('/work/shared/data')


def _write_tiny_coco(root: Path) -> Path:
    """Two images: a polygon square, an RLE half-plane with a part inside it, a crowd region."""
    (root / 'images').mkdir(parents=True)
    image = np.full((40, 60, 3), 90, np.uint8)
    image[5:25, 10:30] = (200, 0, 0)
    cv2.imwrite(str(root / 'images' / 'a.png'), image[..., ::-1])
    cv2.imwrite(str(root / 'images' / 'b.png'), image[..., ::-1])
    whole = np.zeros((40, 60), bool)
    whole[:, :30] = True
    part = np.zeros((40, 60), bool)
    part[:, :27] = True  # IoU 0.9 with `whole`: a part-level duplicate
    polygon = [[10.0, 5.0, 30.0, 5.0, 30.0, 25.0, 10.0, 25.0]]
    anns = [
        {
            'id': 1,
            'image_id': 1,
            'category_id': 7,
            'bbox': [10, 5, 20, 20],
            'area': 400,
            'segmentation': polygon,
            'iscrowd': 0,
        },
        {
            'id': 2,
            'image_id': 1,
            'category_id': 3,
            'bbox': [0, 0, 60, 40],
            'area': 2400,
            'segmentation': rle_encode(np.ones((40, 60), bool)),
            'iscrowd': 1,
        },
        {
            'id': 3,
            'image_id': 2,
            'category_id': 3,
            'bbox': [0, 0, 30, 40],
            'area': 1200,
            'segmentation': rle_encode(whole),
            'iscrowd': 0,
        },
        {
            'id': 4,
            'image_id': 2,
            'category_id': 7,
            'bbox': [0, 0, 27, 40],
            'area': 1080,
            'segmentation': rle_encode(part),
            'iscrowd': 0,
        },
    ]
    coco = {
        'images': [
            {'id': 2, 'file_name': 'b.png', 'height': 40, 'width': 60},
            {'id': 1, 'file_name': 'a.png', 'height': 40, 'width': 60},
            {'id': 3, 'coco_url': 'http://host/train2017/a.png', 'height': 40, 'width': 60},
        ],
        'annotations': anns,
        'categories': [
            {'id': 7, 'name': 'bow_(weapon)', 'frequency': 'r', 'synonyms': ['bow_weapon']},
            {'id': 3, 'name': 'traffic light'},
        ],
    }
    path = root / 'instances.json'
    path.write_text(json.dumps(coco))
    return path


def test_category_phrase() -> None:
    assert category_phrase('bow_(weapon)') == 'bow (weapon)'
    assert category_phrase('traffic light') == 'traffic light'


def test_polygon_rle_crowd_and_lvis_names(tmp_path: Path) -> None:
    ds = CocoInstances(_write_tiny_coco(tmp_path), tmp_path / 'images')
    assert ds.phrases == ('traffic light', 'bow (weapon)')  # sorted by category id
    assert ds.categories[1].frequency == 'r' and ds.categories[1].synonyms == ('bow weapon',)
    assert len(ds) == 3
    first = ds[0]  # image id 1: the crowd region is not a target
    assert first.image_id == 1 and first.image.shape == (40, 60, 3)
    np.testing.assert_array_equal(first.labels, [1])
    np.testing.assert_allclose(first.boxes, [[10, 5, 30, 25]])
    assert first.masks is not None and first.masks.shape == (1, 40, 60)
    assert 380 <= first.masks[0].sum() <= 441 and first.masks[0, 15, 20]
    assert ds[1].masks is not None and ds[1].masks[0, :, :30].all()
    assert len(ds[2].labels) == 0 and ds[2].masks.shape == (0, 40, 60)
    assert (
        len(CocoInstances(tmp_path / 'instances.json', tmp_path / 'images', skip_empty=True)) == 2
    )


def test_box_only_agnostic_and_part_filter(tmp_path: Path) -> None:
    path = _write_tiny_coco(tmp_path)
    box_only = CocoInstances(path, tmp_path / 'images', box_only=True)
    assert box_only[1].masks is None and len(box_only[1].boxes) == 2
    agnostic = CocoInstances(path, tmp_path / 'images', agnostic=True, part_nms_iou=0.8)
    assert agnostic.phrases == ('object',)
    kept = agnostic[1]
    np.testing.assert_array_equal(kept.labels, [0])  # the part (IoU 0.9) is suppressed
    np.testing.assert_allclose(kept.boxes, [[0, 0, 30, 40]])
    loose = CocoInstances(path, tmp_path / 'images', agnostic=True, part_nms_iou=0.95)
    assert len(loose[1].labels) == 2


def test_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_tiny_coco(tmp_path)
    (tmp_path / 'images' / 'a.png').unlink()
    with pytest.raises(FileNotFoundError, match=r'a\.png'):
        CocoInstances(path, tmp_path / 'images')[0]


@pytest.mark.skipif(not (REAL / 'coco128').exists(), reason='shared COCO subset not present')
def test_real_coco128_loads() -> None:
    root = REAL / 'coco128'
    ds = CocoInstances(root / 'annotations/instances_train2017.json', root / 'train2017')
    assert len(ds) == 128 and len(ds.phrases) == 80
    sample = ds[0]
    h, w = sample.orig_size
    assert sample.masks is not None and sample.masks.shape[1:] == (h, w)
    assert (sample.boxes[:, 2:] <= [w, h]).all()
