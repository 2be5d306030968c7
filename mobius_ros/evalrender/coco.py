"""Write rendered scenes as a COCO instances file, PNG images and a referring file.

out/instances.json   COCO instances (RLE masks; categories = the 8 shapes, ids from 1)
out/images/000001.png ...
out/referring.json   [{'image_id', 'ann_id', 'sentence', 'kind'}, ...]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mobius_ros.evalrender.scene import SHAPES, render_scene
from mobius_ros.ops.masks import rle_encode


def categories() -> list[dict]:
    return [{'id': i + 1, 'name': s, 'supercategory': 'shape'} for i, s in enumerate(SHAPES)]


def render_set(*, num: int, size: int, seed: int) -> tuple[dict, list[dict], list[np.ndarray]]:
    """(COCO instances dict, referring records, images) of scenes 0..num-1."""
    images, annotations, referring, pixels = [], [], [], []
    for index in range(num):
        scene = render_scene(seed, index, size)
        image_id = index + 1
        images.append(
            {'id': image_id, 'file_name': f'{image_id:06d}.png', 'height': size, 'width': size}
        )
        pixels.append(scene.image)
        ids = []
        for inst in scene.instances:
            x0, y0, x1, y1 = inst.box_xyxy
            ids.append(len(annotations) + 1)
            annotations.append(
                {
                    'id': ids[-1],
                    'image_id': image_id,
                    'category_id': SHAPES.index(inst.shape) + 1,
                    'segmentation': rle_encode(inst.mask),
                    'area': float(inst.area),
                    'bbox': [x0, y0, x1 - x0, y1 - y0],
                    'iscrowd': 0,
                    'attributes': {'colour': inst.colour, 'size': inst.size},
                }
            )
        for expr in scene.expressions:
            referring.append(
                {
                    'image_id': image_id,
                    'ann_id': ids[expr['target']],
                    'sentence': expr['sentence'],
                    'kind': expr['kind'],
                }
            )
    coco = {
        'images': images,
        'annotations': annotations,
        'categories': categories(),
        'info': {'description': f'evalrender seed {seed}, {num} images at {size} px'},
    }
    return coco, referring, pixels


def write_set(out: str | Path, *, num: int, size: int, seed: int) -> dict[str, Path]:
    """Render and write the set; returns the paths of the three parts."""
    out = Path(out)
    (out / 'images').mkdir(parents=True, exist_ok=True)
    coco, referring, pixels = render_set(num=num, size=size, seed=seed)
    for record, image in zip(coco['images'], pixels):
        Image.fromarray(image).save(out / 'images' / record['file_name'])
    paths = {
        'annotations': out / 'instances.json',
        'images': out / 'images',
        'referring': out / 'referring.json',
    }
    paths['annotations'].write_text(json.dumps(coco))
    paths['referring'].write_text(json.dumps(referring, indent=1) + '\n')
    return paths
