"""The training data of a recipe: datasets from its specs, mixed by ratio, one dataset per batch.

Which dataset and which items a step draws is a pure function of (seed, step, rank), so a resumed
run continues the same data stream and the ranks of a torchrun job draw disjoint items without a
sampler handshake. Synthetic scenes are generated on the fly from (seed, split, index): an
endless stream of fresh scenes costs ~2 ms per 160 px image and never repeats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from mobius_ros.train.data.collate import Batch, collate
from mobius_ros.train.data.sample import Sample
from mobius_ros.train.data.synthetic import SHAPES, SynthConfig, generate_scene, scene_rng
from mobius_ros.train.recipes import DatasetSpec, Recipe

Transform = Callable[[Sample, np.random.Generator], Sample]
AGNOSTIC = ('object',)
# Large enough to be endless in practice, small enough for index arithmetic.
ENDLESS = 2**40


class SyntheticScenes:
    """Map-style dataset of synthetic scenes as `Sample`s for one task.

    Item i is scene i of `split` (see `scene_rng`). Vocabulary samples use the shape names as
    classes, agnostic ones the prompt "object"; a referring sample is one of the scene's
    expressions (chosen by the item's generator) with its single target instance.
    """

    def __init__(
        self,
        *,
        task: str,
        split: str = 'train',
        seed: int = 0,
        image_hw: tuple[int, int] = (128, 128),
        num_images: int = 0,
        transform: Transform | None = None,
        name: str = 'synthetic',
        config: SynthConfig | None = None,
        sizes: Sequence[int] = (),
        size_weights: Sequence[float] = (),
        size_group: int = 1,
    ) -> None:
        self.task = task
        self.split = split
        self.seed = seed
        self.config = config or SynthConfig(image_hw=image_hw)
        # mixed resolutions: item i is drawn natively at a side drawn from (seed, i // size_group),
        # so the items of one batch of an endless stream (size_group = batch size) share a size
        self.size_group = max(1, int(size_group))
        self.sizes = tuple(int(s) for s in sizes)
        weights = np.asarray(size_weights or [1.0] * len(self.sizes), np.float64)
        self.size_p = weights / weights.sum() if self.sizes else None
        self.num_images = num_images or ENDLESS
        self.transform = transform
        self.name = name

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        config = self.config
        if self.sizes:
            pick = np.random.default_rng([self.seed, 11, index // self.size_group]).choice(
                len(self.sizes), p=self.size_p
            )
            side = self.sizes[int(pick)]
            config = dataclasses.replace(config, image_hw=(side, side))
        rng = scene_rng(self.seed, self.split, index)
        scene = generate_scene(rng, split=self.split, config=config)
        h, w = config.image_hw
        masks = np.stack([inst.mask for inst in scene.instances]).reshape(-1, h, w)
        boxes = np.asarray([inst.box_xyxy for inst in scene.instances], np.float32)
        boxes = boxes.reshape(-1, 4)
        meta = {'synthetic': True, 'held_out': [inst.held_out for inst in scene.instances]}
        if self.task == 'referring':
            if not scene.expressions:  # a scene without an unambiguous expression: try the next
                return self[(index + 1) % self.num_images]
            expr = scene.expressions[int(rng.integers(len(scene.expressions)))]
            keep = [expr['target']]
            sample = Sample(
                image=scene.image,
                boxes=boxes[keep],
                labels=np.zeros(1, np.int64),
                masks=masks[keep],
                phrases=(expr['sentence'],),
                dataset=self.name,
                image_id=index,
                referring=True,
                orig_size=(h, w),
                meta={**meta, 'held_out': expr['held_out'], 'kind': expr['kind']},
            )
        else:
            agnostic = self.task == 'agnostic'
            labels = [0 if agnostic else SHAPES.index(inst.shape) for inst in scene.instances]
            sample = Sample(
                image=scene.image,
                boxes=boxes,
                labels=np.asarray(labels, np.int64),
                masks=masks,
                phrases=AGNOSTIC if agnostic else SHAPES,
                dataset=self.name,
                image_id=index,
                orig_size=(h, w),
                meta=meta,
            )
        if self.transform is None:
            return sample
        return self.transform(sample, np.random.default_rng([self.seed, 7, index]))


def build_dataset(spec: DatasetSpec, recipe: Recipe, transform: Transform) -> Sequence[Sample]:
    """One dataset of the mixture, with the training transforms."""
    if spec.source == 'synthetic':
        side = recipe.short_sides[0]
        return SyntheticScenes(
            task=spec.task,
            seed=recipe.seed,
            image_hw=(side, side),
            num_images=spec.num_images,
            transform=transform,
            name=spec.name,
            config=synth_config(recipe),
            sizes=recipe.synth.sizes,
            size_weights=recipe.synth.size_weights,
            size_group=recipe.batch_size,
        )
    if spec.source == 'coco':
        from mobius_ros.train.data.coco import CocoInstances

        return CocoInstances(
            spec.annotations,
            spec.images,
            name=spec.name,
            box_only=spec.box_only,
            agnostic=spec.task == 'agnostic',
            part_nms_iou=0.8 if spec.task == 'agnostic' else None,
            skip_empty=True,
            transform=transform,
            seed=recipe.seed,
        )
    from mobius_ros.train.data.refer import ReferringDataset

    return ReferringDataset(
        spec.annotations,
        spec.instances,
        spec.images,
        split='train',
        name=spec.name,
        box_only=spec.box_only,
        transform=transform,
        seed=recipe.seed,
    )


def synth_config(recipe: Recipe) -> SynthConfig:
    """The generator settings of a recipe's synthetic scenes (`recipe.synth`)."""
    side = recipe.short_sides[0]
    photos: tuple[str, ...] = ()
    if recipe.synth.background_photos:
        from mobius_ros.common.images import image_files

        folder = Path(recipe.synth.background_photos)
        if not folder.is_dir():
            raise FileNotFoundError(
                f'synth.background_photos {folder} is not a folder (photos are never downloaded;'
                ' pass --data-root if the path is relative)'
            )
        photos = tuple(str(p) for p in image_files(folder))
        if not photos:
            raise FileNotFoundError(f'synth.background_photos {folder} holds no images')
    if recipe.synth.domain == 'randomised':
        return SynthConfig.randomised(image_hw=(side, side), background_photos=photos)
    return SynthConfig(image_hw=(side, side), background_photos=photos)


class _Source:
    """A dataset of the mixture and its epoch-wise shuffled item order."""

    def __init__(self, spec: DatasetSpec, dataset: Sequence[Sample], seed: int) -> None:
        self.spec = spec
        self.dataset = dataset
        self.seed = seed
        self._order: tuple[int, np.ndarray] | None = None

    def item(self, position: int) -> Sample:
        """The item at a global stream position (an endless dataset is never reshuffled)."""
        n = len(self.dataset)
        if n >= ENDLESS:
            return self.dataset[position]
        epoch, offset = divmod(position, n)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch, 99]).permutation(n))
        return self.dataset[int(self._order[1][offset])]


def build_batches(
    recipe: Recipe, *, rank: int = 0, world_size: int = 1, start: int = 0
) -> Iterator[Batch]:
    """Endless batches for steps `start`, `start + 1`, ... of this rank.

    Batch element b of step s on rank r is stream position (s * world_size + r) * B + b of the
    dataset the step drew, so ranks and steps never share an item within an epoch.
    """
    from mobius_ros.train.data.transforms import (
        Compose,
        RandomHorizontalFlip,
        ToTensor,
        train_transforms,
    )

    synthetic_only = all(s.source == 'synthetic' for s in recipe.datasets)
    # Synthetic scenes are drawn at the training size, so only flip (with left/right swapped in
    # expressions) applies; real images get the full multi-scale recipe.
    transform = train_transforms(
        recipe.short_sides, recipe.max_long_side, crop_probability=0.0 if synthetic_only else 0.3
    )
    if synthetic_only and recipe.synth.sizes:
        # scenes are drawn natively at their own sizes: no resize
        transform = Compose((RandomHorizontalFlip(0.5), ToTensor()))
    sources = [
        _Source(s, build_dataset(s, recipe, transform), recipe.seed) for s in recipe.datasets
    ]
    ratios = np.asarray([s.ratio for s in recipe.datasets], np.float64)
    ratios /= ratios.sum()
    step = start
    while True:
        rng = np.random.default_rng([recipe.seed, step, rank])
        source = sources[int(rng.choice(len(sources), p=ratios))]
        first = (step * world_size + rank) * recipe.batch_size
        samples = [source.item(first + b) for b in range(recipe.batch_size)]
        yield collate(samples, max_phrases=source.spec.max_vocabulary, rng=rng)
        step += 1
