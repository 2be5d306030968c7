"""Referring data: RefCOCO-format refs and template expressions from COCO instances."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mobius_ros.ops.masks import rle_encode
from mobius_ros.train.data.refer import ReferringDataset, load_refs, template_refs
from mobius_ros.train.data.synthetic import write_split

REAL = Path('/work/shared/data/coco_val128')


def _box(x: int, y: int, w: int, h: int, ann_id: int, cat: int) -> dict:
    mask = np.zeros((100, 200), bool)
    mask[y : y + h, x : x + w] = True
    return {'id': ann_id, 'image_id': 1, 'category_id': cat, 'bbox': [x, y, w, h],
            'area': w * h, 'iscrowd': 0, 'segmentation': rle_encode(mask)}  # fmt: skip


def _coco() -> dict:
    anns = [
        _box(10, 10, 20, 20, 1, 1),  # small person, left
        _box(150, 10, 40, 60, 2, 1),  # large person, right
        _box(120, 40, 10, 10, 3, 2),  # the cup, nearest to the laptop
        _box(20, 60, 10, 10, 4, 2),  # a cup far away
        _box(135, 70, 30, 20, 5, 3),  # the laptop
    ]
    return {
        'images': [{'id': 1, 'file_name': 'a.png', 'height': 100, 'width': 200}],
        'annotations': anns,
        'categories': [
            {'id': 1, 'name': 'person'},
            {'id': 2, 'name': 'cup'},
            {'id': 3, 'name': 'laptop'},
        ],
    }


def test_template_refs_known_scene() -> None:
    refs = template_refs(_coco(), split='val')
    sentences = {r['ann_id']: [s['sent'] for s in r['sentences']] for r in refs}
    assert 'the leftmost person' in sentences[1] and 'the smallest person' in sentences[1]
    assert 'the rightmost person' in sentences[2] and 'the largest person' in sentences[2]
    assert 'the cup next to the laptop' in sentences[3]
    assert 'the cup next to the laptop' not in sentences.get(4, [])
    assert sentences[5] == ['the laptop']
    assert all(r['synthetic'] and r['source'] == 'template' for r in refs)


def test_referring_dataset_items(tmp_path: Path) -> None:
    coco = _coco()
    (tmp_path / 'img').mkdir()
    cv2.imwrite(str(tmp_path / 'img' / 'a.png'), np.zeros((100, 200, 3), np.uint8))
    refs_path = tmp_path / 'refs.json'
    refs_path.write_text(json.dumps({'refs': template_refs(coco)}))
    assert load_refs(refs_path) == template_refs(coco)
    ds = ReferringDataset(refs_path, coco, tmp_path / 'img')
    assert len(ds) == sum(len(r['sentences']) for r in template_refs(coco))
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.referring and len(sample.phrases) == 1 and sample.meta['synthetic']
        assert sample.labels.tolist() == [0] and sample.masks.shape == (1, 100, 200)
        x1, y1, x2, y2 = sample.boxes[0]
        assert sample.masks[0, int(y1) : int(y2), int(x1) : int(x2)].all()
    assert len(ReferringDataset(refs_path, coco, tmp_path / 'img', split='testA')) == 0


def test_synthetic_refs_load_with_held_out_flags(tmp_path: Path) -> None:
    paths = write_split(tmp_path, split='test', num=8, image_hw=(64, 64))
    ds = ReferringDataset(paths['refs'], paths['instances'], paths['images'], name='synth-ref')
    assert len(ds) > 0
    sample = ds[0]
    assert sample.dataset == 'synth-ref' and sample.image.shape == (64, 64, 3)
    assert isinstance(sample.meta['held_out'], list)


@pytest.mark.skipif(not REAL.exists(), reason='shared COCO subset not present')
def test_templates_on_real_coco_val128() -> None:
    coco = json.loads((REAL / 'annotations/instances_val2017.json').read_text())
    refs = template_refs(coco)
    assert len(refs) > 50
    ds = ReferringDataset(refs, coco, REAL / 'val2017')
    assert ds[0].masks is not None and ds[0].masks[0].any()
