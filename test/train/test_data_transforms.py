"""Transforms and collate: geometry stays consistent, batches follow the model contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobius_ros.ops.boxes import box_cxcywh_to_xyxy, masks_to_boxes
from mobius_ros.ops.image import PIXEL_MEAN, PIXEL_STD
from mobius_ros.train.data.collate import batch_vocabulary, collate
from mobius_ros.train.data.sample import Sample
from mobius_ros.train.data.transforms import (
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShortestSide,
    ToTensor,
    swap_left_right,
    train_transforms,
)


def _sample(h: int = 60, w: int = 90, referring: bool = False) -> Sample:
    masks = np.zeros((2, h, w), bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 35:55, 50:85] = True
    image = np.zeros((h, w, 3), np.uint8)
    image[masks[0]] = (255, 0, 0)
    return Sample(
        image=image,
        boxes=masks_to_boxes(masks),
        labels=np.array([0, 2], np.int64) if not referring else np.zeros(2, np.int64),
        masks=masks,
        phrases=('cat', 'dog', 'cup') if not referring else ('the leftmost cat',),
        dataset='toy',
        referring=referring,
    )


def test_swap_left_right() -> None:
    assert swap_left_right('the cup left of the Leftmost plate') == (
        'the cup right of the Rightmost plate'
    )
    assert swap_left_right('a leftover bright light') == 'a leftover bright light'


def test_flip_keeps_boxes_on_masks_and_swaps_expression() -> None:
    rng = np.random.default_rng(0)
    flipped = RandomHorizontalFlip(1.0)(_sample(referring=True), rng)
    np.testing.assert_allclose(flipped.boxes, masks_to_boxes(flipped.masks))
    assert flipped.phrases == ('the rightmost cat',)
    assert flipped.image[20, 90 - 1 - 10, 0] == 255


def test_resize_scales_everything() -> None:
    out = ResizeShortestSide((30,), 1000)(_sample(), np.random.default_rng(0))
    assert out.image.shape == (30, 45, 3) and out.masks.shape == (2, 30, 45)
    np.testing.assert_allclose(out.boxes, masks_to_boxes(_sample().masks) / 2)
    capped = ResizeShortestSide((120,), 100)(_sample(), np.random.default_rng(0))
    assert capped.image.shape[:2] == (67, 100)


def test_crop_drops_lost_instances_and_tightens_boxes() -> None:
    crop = RandomCrop(min_scale=0.3, probability=1.0)
    for seed in range(20):
        out = crop(_sample(), np.random.default_rng(seed))
        h, w = out.image_hw
        assert out.masks.shape == (len(out.labels), h, w)
        assert out.masks.any(axis=(1, 2)).all()
        np.testing.assert_allclose(out.boxes, masks_to_boxes(out.masks))
    assert crop(_sample(referring=True), np.random.default_rng(0)).image_hw == (60, 90)


def test_to_tensor_normalises() -> None:
    out = ToTensor()(_sample(), np.random.default_rng(0))
    assert out.image.shape == (3, 60, 90) and out.image.dtype == torch.float32
    expected = (255 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    assert out.image[0, 20, 10].item() == pytest.approx(expected, rel=1e-5)


def test_collate_pads_and_normalises_boxes() -> None:
    transform = Compose((ToTensor(),))
    rng = np.random.default_rng(0)
    samples = [transform(_sample(60, 90), rng), transform(_sample(40, 100), rng)]
    batch = collate(samples)
    assert batch.images.shape == (2, 3, 64, 128)
    assert batch.image_sizes == [(60, 90), (40, 100)] and batch.phrases == ('cat', 'dog', 'cup')
    target = batch.targets[0]
    assert target['masks'].shape == (2, 64, 128) and target['labels'].tolist() == [0, 2]
    xyxy = box_cxcywh_to_xyxy(target['boxes']) * torch.tensor([128, 64, 128, 64])
    torch.testing.assert_close(xyxy, masks_to_boxes(target['masks']))
    assert batch.images[0, :, 60:].abs().sum() == 0  # padding is the mean colour


def test_collate_referring_and_box_only() -> None:
    transform = ToTensor()
    rng = np.random.default_rng(0)
    refs = [transform(_sample(referring=True), rng) for _ in range(2)]
    batch = collate(refs)
    assert batch.referring and batch.phrases == ('the leftmost cat', 'the leftmost cat')
    box_only = transform(_sample(), rng)
    box_only = Sample(**{**box_only.__dict__, 'masks': None})
    assert 'masks' not in collate([box_only]).targets[0]
    with pytest.raises(ValueError):
        collate([refs[0], box_only])


def test_batch_vocabulary_positives_first() -> None:
    phrases = [f'class {i}' for i in range(300)]
    labels = [np.array([250, 7]), np.array([7, 42])]
    chosen, remap = batch_vocabulary(labels, phrases, max_phrases=100,
                                     rng=np.random.default_rng(0))  # fmt: skip
    assert len(chosen) == 100 and chosen[:3] == ('class 250', 'class 7', 'class 42')
    assert remap[250] == 0 and remap[7] == 1 and remap[42] == 2
    assert (remap >= 0).sum() == 100 and len(set(chosen)) == 100
    small, identity = batch_vocabulary(labels, phrases[:80], max_phrases=100)
    assert small == tuple(phrases[:80]) and identity.tolist() == list(range(80))


def test_train_transforms_end_to_end() -> None:
    transform = train_transforms((48, 64), 128)
    out = transform(_sample(), np.random.default_rng(3))
    assert isinstance(out.image, torch.Tensor) and min(out.image_hw) in (48, 64)
    assert out.masks.shape[1:] == out.image_hw


def test_synthetic_to_dataloader(tmp_path: Path) -> None:
    """The whole path: generator -> COCO loader -> transforms -> sampler -> DataLoader."""
    from functools import partial

    from mobius_ros.train.data.coco import CocoInstances
    from mobius_ros.train.data.refer import ReferringDataset
    from mobius_ros.train.data.sampler import MultiDataset, MultiDatasetBatchSampler
    from mobius_ros.train.data.synthetic import write_split

    paths = write_split(tmp_path, split='train', num=6, image_hw=(64, 64))
    transform = train_transforms((64, 80), 128)
    datasets = [
        CocoInstances(paths['instances'], paths['images'], name='synth', transform=transform),
        CocoInstances(
            paths['instances'],
            paths['images'],
            name='synth-agnostic',
            agnostic=True,
            transform=transform,
        ),
        ReferringDataset(
            paths['refs'],
            paths['instances'],
            paths['images'],
            name='synth-ref',
            transform=transform,
        ),
    ]
    data = MultiDataset(datasets)
    sampler = MultiDatasetBatchSampler(data.sizes, [1, 1, 1], batch_size=2, num_batches=6)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=sampler, collate_fn=partial(collate, max_phrases=100)
    )
    seen = set()
    for batch in loader:
        seen.add(batch.dataset)
        assert batch.images.shape[0] == 2 and batch.images.shape[-1] % 32 == 0
        k = len(batch.phrases)
        for target in batch.targets:
            assert (target['labels'] < k).all()
            assert ((target['boxes'] >= 0) & (target['boxes'] <= 1)).all()
        assert batch.referring == (batch.dataset == 'synth-ref')
        if batch.dataset == 'synth-agnostic':
            assert batch.phrases == ('object',)
    assert len(seen) >= 2
