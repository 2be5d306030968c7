"""Evaluation sets: the synthetic test split (with every referring expression) and COCO files.

The synthetic set is built in memory from the generator, so evaluating needs no files; its
ground truth is the COCO dict the generator's `write_split` would write for the same scenes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobius_ros.ops.boxes import box_xyxy_to_xywh
from mobius_ros.ops.masks import rle_encode, segmentation_to_mask
from mobius_ros.train.data.sample import Sample
from mobius_ros.train.data.synthetic import (
    SHAPES,
    SynthConfig,
    category_list,
    generate_scene,
    scene_rng,
)
from mobius_ros.train.data.transforms import ToTensor, eval_transforms
from mobius_ros.train.eval_loop import EvalSet


def synthetic_eval_set(
    *,
    num_images: int = 200,
    size: int = 160,
    split: str = 'test',
    seed: int = 0,
    randomised: bool = False,
    background_photos: tuple[str, ...] = (),
) -> EvalSet:
    """Scenes 0..num_images-1 of `split`; referring samples for every expression of each.

    `randomised`: the generator's domain-randomised preset (`SynthConfig.randomised`, what the
    randomised recipes train on), over `background_photos` when given."""
    to_tensor = ToTensor()
    rng = np.random.default_rng(0)  # ToTensor draws nothing; the argument is required
    if randomised:
        config = SynthConfig.randomised((size, size), background_photos=background_photos)
    else:
        config = SynthConfig(image_hw=(size, size), background_photos=background_photos)
    samples, referring, annotations = [], [], []
    for index in range(num_images):
        scene = generate_scene(scene_rng(seed, split, index), split=split, config=config)
        image_id = index + 1
        masks = np.stack([inst.mask for inst in scene.instances]).reshape(-1, size, size)
        boxes = np.asarray([inst.box_xyxy for inst in scene.instances], np.float32).reshape(-1, 4)
        labels = np.asarray([SHAPES.index(inst.shape) for inst in scene.instances], np.int64)
        base = Sample(
            image=scene.image,
            boxes=boxes,
            labels=labels,
            masks=masks,
            phrases=SHAPES,
            dataset=f'synthetic_{split}',
            image_id=image_id,
            orig_size=(size, size),
            meta={'held_out': [inst.held_out for inst in scene.instances]},
        )
        tensor_sample = to_tensor(base, rng)
        samples.append(tensor_sample)
        for expr in scene.expressions:
            t = expr['target']
            referring.append(
                Sample(
                    image=tensor_sample.image,
                    boxes=boxes[t : t + 1],
                    labels=np.zeros(1, np.int64),
                    masks=masks[t : t + 1],
                    phrases=(expr['sentence'],),
                    dataset=f'synthetic_{split}_refer',
                    image_id=image_id,
                    referring=True,
                    orig_size=(size, size),
                    meta={'held_out': expr['held_out'], 'kind': expr['kind']},
                )
            )
        for n in range(len(labels)):
            annotations.append(
                _annotation(len(annotations) + 1, image_id, int(labels[n]) + 1, masks[n], boxes[n])
            )
    images = [
        {'id': i + 1, 'height': size, 'width': size, 'file_name': f'{i + 1:06d}.png'}
        for i in range(num_images)
    ]
    ground_truth = {'images': images, 'annotations': annotations, 'categories': category_list()}
    category_ids = {c['name']: c['id'] for c in category_list()}
    return EvalSet(samples, ground_truth, category_ids, referring)


def _annotation(
    ann_id: int, image_id: int, category_id: int, mask: np.ndarray, box: np.ndarray
) -> dict:
    return {
        'id': ann_id,
        'image_id': image_id,
        'category_id': category_id,
        'segmentation': rle_encode(mask),
        'area': float(mask.sum()),
        'bbox': [float(v) for v in box_xyxy_to_xywh(box.astype(np.float64))],
        'iscrowd': 0,
    }


def coco_eval_set(
    annotations: str | Path,
    images: str | Path,
    *,
    short_side: int,
    max_size: int = 1333,
    referring: str | Path | None = None,
) -> EvalSet:
    """A COCO instances file (e.g. coco_val128), with the referring expressions of `referring`.

    `referring` is a JSON list of {'image_id', 'ann_id', 'sentence', 'kind'} (as `mobius
    render-eval` writes); each record names one annotation of `annotations` as its target.
    """
    from mobius_ros.train.data.coco import CocoInstances

    dataset = CocoInstances(
        annotations, images, name='coco_eval', transform=eval_transforms(short_side, max_size)
    )
    samples = [dataset[i] for i in range(len(dataset))]
    category_ids = {c.phrase: c.id for c in dataset.categories}
    refer = [] if referring is None else referring_samples(referring, dataset.coco, samples)
    return EvalSet(samples, dataset.coco, category_ids, refer)


def referring_samples(path: str | Path, coco: dict, samples: list[Sample]) -> list[Sample]:
    """One referring sample per record of the referring file at `path`; bad records are errors."""
    import json

    records = json.loads(Path(path).read_text())
    if not isinstance(records, list):
        raise ValueError(f'{path}: expected a JSON list of referring records')
    by_image = {int(s.image_id): s for s in samples}
    by_ann = {int(a['id']): a for a in coco['annotations']}
    out = []
    for n, record in enumerate(records):
        missing = {'image_id', 'ann_id', 'sentence'} - set(record)
        if missing:
            raise ValueError(f'{path}: record {n} lacks {sorted(missing)}')
        ann = by_ann.get(int(record['ann_id']))
        sample = by_image.get(int(record['image_id']))
        if ann is None or sample is None or int(ann['image_id']) != int(record['image_id']):
            raise ValueError(
                f'{path}: record {n} names annotation {record["ann_id"]} of image '
                f'{record["image_id"]}, which the instances file does not have'
            )
        oh, ow = sample.orig_size
        mask = segmentation_to_mask(ann['segmentation'], (oh, ow))[None]
        x, y, w, h = (float(v) for v in ann['bbox'])
        ih, iw = sample.image_hw
        box = np.array(
            [[x * iw / ow, y * ih / oh, (x + w) * iw / ow, (y + h) * ih / oh]], np.float32
        )
        out.append(
            Sample(
                image=sample.image,
                boxes=box,
                labels=np.zeros(1, np.int64),
                masks=mask,
                phrases=(str(record['sentence']),),
                dataset='coco_eval_refer',
                image_id=int(record['image_id']),
                referring=True,
                orig_size=(oh, ow),
                meta={'kind': record.get('kind')} if record.get('kind') else {},
            )
        )
    return out
