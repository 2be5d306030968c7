"""COCO-format instance datasets: COCO, LVIS-style category lists, box-only and agnostic data.

One class covers the detection and open-world rows of the paper's Tab. 5 through three switches:
`box_only` (Objects365 / OpenImages style: masks dropped even if present), `agnostic` (UVO /
SA-1B style: every instance is an "object") and `part_nms_iou` (SA-1B: part-level masks removed by
mask-IoU NMS with the area as the score). Crowd regions are never training targets.

numpy/OpenCV only; `transform` (see `transforms.py`) turns samples into tensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mobius_ros.ops.boxes import box_xywh_to_xyxy
from mobius_ros.ops.masks import mask_nms, segmentation_to_mask
from mobius_ros.train.data.sample import Sample

Transform = Callable[[Sample, np.random.Generator], Sample]
AGNOSTIC_PHRASE = 'object'


def category_phrase(name: str) -> str:
    """A category name as a text prompt: LVIS 'bow_(weapon)' -> 'bow (weapon)'."""
    return re.sub(r'\s+', ' ', name.replace('_', ' ')).strip()


@dataclass(frozen=True)
class Category:
    """One entry of `categories`; `frequency` is LVIS's 'r' / 'c' / 'f' (None for COCO)."""

    id: int
    name: str
    phrase: str
    frequency: str | None = None
    synonyms: tuple[str, ...] = ()


def load_categories(coco: dict[str, Any]) -> list[Category]:
    """Categories sorted by id, with prompts and LVIS metadata where present."""
    return [
        Category(
            id=int(c['id']),
            name=c['name'],
            phrase=category_phrase(c['name']),
            frequency=c.get('frequency'),
            synonyms=tuple(category_phrase(s) for s in c.get('synonyms', ())),
        )
        for c in sorted(coco['categories'], key=lambda c: c['id'])
    ]


def load_image(path: str | Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB; a clear error instead of OpenCV's silent None."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return np.ascontiguousarray(image[..., ::-1])


def image_file_name(info: dict[str, Any]) -> str:
    """`file_name` of an image entry; LVIS entries only have `coco_url`, whose basename it is."""
    if 'file_name' in info:
        return str(info['file_name'])
    if 'coco_url' in info:
        return str(info['coco_url']).rsplit('/', 1)[-1]
    raise KeyError(f'image {info.get("id")} has neither file_name nor coco_url')


class CocoInstances:
    """Map-style dataset over a COCO instances JSON; item i is a `Sample`.

    Args:
        annotation_file: COCO instances JSON (COCO, LVIS or anything in that format).
        image_dir: folder the images' `file_name`s are relative to.
        name: dataset name carried by every sample (the sampler keeps batches single-dataset).
        box_only: drop masks (box-only supervision).
        agnostic: one phrase, "object", for every instance.
        part_nms_iou: if set, drop masks suppressed by mask-IoU NMS at this IoU with the area
            as the score (part-level filter).
        min_area: instances with a smaller box area (pixels) are ignored.
        skip_empty: leave out images without a usable instance.
        transform: callable (sample, rng) -> sample.
        seed: base of the per-item augmentation generator (see `set_epoch`).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        *,
        name: str = 'coco',
        box_only: bool = False,
        agnostic: bool = False,
        part_nms_iou: float | None = None,
        min_area: float = 1.0,
        skip_empty: bool = False,
        transform: Transform | None = None,
        seed: int = 0,
    ) -> None:
        with open(annotation_file) as f:
            coco = json.load(f)
        self.name = name
        self.image_dir = Path(image_dir)
        self.box_only = box_only
        self.agnostic = agnostic
        self.part_nms_iou = part_nms_iou
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.categories = load_categories(coco)
        self.category_index = {c.id: k for k, c in enumerate(self.categories)}
        self.phrases: tuple[str, ...] = (
            (AGNOSTIC_PHRASE,) if agnostic else tuple(c.phrase for c in self.categories)
        )
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in coco.get('annotations', []):
            usable = not ann.get('iscrowd', 0) and ann['bbox'][2] * ann['bbox'][3] >= min_area
            if usable:
                by_image.setdefault(int(ann['image_id']), []).append(ann)
        self.images = [
            img
            for img in sorted(coco['images'], key=lambda im: im['id'])
            if not skip_empty or by_image.get(int(img['id']))
        ]
        self.annotations = by_image
        self.coco = coco  # kept for evaluation (the ground truth of this split)

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws (each item's generator is seeded by seed, epoch, i)."""
        self.epoch = epoch

    def raw_sample(self, index: int) -> Sample:
        """Image and annotations of item `index`, before any transform."""
        info = self.images[index]
        name = image_file_name(info)
        image = load_image(self.image_dir / name)
        h, w = image.shape[:2]
        if (h, w) != (info.get('height', h), info.get('width', w)):
            raise ValueError(f'{name}: {h}x{w} on disk, JSON says otherwise')
        anns = self.annotations.get(int(info['id']), [])
        boxes = box_xywh_to_xyxy(np.asarray([a['bbox'] for a in anns], np.float32).reshape(-1, 4))
        boxes = boxes.clip(0, [w, h, w, h]).astype(np.float32)
        labels = np.asarray(
            [0 if self.agnostic else self.category_index[a['category_id']] for a in anns], np.int64
        )
        masks = None
        if not self.box_only:
            masks = np.zeros((len(anns), h, w), bool)
            for i, ann in enumerate(anns):
                if ann.get('segmentation'):
                    masks[i] = segmentation_to_mask(ann['segmentation'], (h, w))
        sample = Sample(
            image=image,
            boxes=boxes,
            labels=labels,
            masks=masks,
            phrases=self.phrases,
            dataset=self.name,
            image_id=int(info['id']),
            orig_size=(h, w),
        )
        if self.part_nms_iou is not None and masks is not None and len(anns) > 1:
            area = masks.sum(axis=(1, 2))
            sample = sample.select(np.sort(mask_nms(masks, area, self.part_nms_iou)))
        return sample

    def __getitem__(self, index: int) -> Sample:
        sample = self.raw_sample(index)
        if self.transform is None:
            return sample
        return self.transform(sample, np.random.default_rng([self.seed, self.epoch, index]))
