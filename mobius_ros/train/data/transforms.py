"""Training and evaluation transforms on `Sample`s: resize, flip, crop, normalise.

Each transform is a callable `(sample, rng) -> sample`, so augmentation is reproducible from the
generator the dataset derives per item. Geometry stays consistent: boxes, masks and (for
referring samples) the expression's left/right words change together with the image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from mobius_ros.ops.boxes import box_area, masks_to_boxes
from mobius_ros.ops.image import normalize_image, shortest_side_size
from mobius_ros.train.data.sample import Sample

_LEFT_RIGHT = {'left': 'right', 'right': 'left', 'leftmost': 'rightmost', 'rightmost': 'leftmost'}
_LEFT_RIGHT_RE = re.compile(r'\b(' + '|'.join(_LEFT_RIGHT) + r')\b', re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'the cup left of the leftmost plate' -> 'the cup right of the rightmost plate'."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        out = _LEFT_RIGHT[word.lower()]
        return out.capitalize() if word[0].isupper() else out

    return _LEFT_RIGHT_RE.sub(swap, text)


def _resize_masks(masks: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray | None:
    if masks is None or masks.shape[1:] == hw:
        return masks
    out = np.zeros((len(masks), *hw), bool)
    for i, mask in enumerate(masks):
        out[i] = cv2.resize(mask.astype(np.uint8), hw[::-1], interpolation=cv2.INTER_NEAREST) > 0
    return out


@dataclass(frozen=True)
class ResizeShortestSide:
    """Resize so the shorter side is one of `short_sides` (drawn uniformly), longer <= max."""

    short_sides: Sequence[int] = tuple(range(384, 801, 32))
    max_size: int = 1333

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample.image_hw
        short = int(self.short_sides[int(rng.integers(len(self.short_sides)))])
        nh, nw = shortest_side_size((h, w), short, self.max_size)
        if (nh, nw) == (h, w):
            return sample
        interpolation = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        image = cv2.resize(sample.image, (nw, nh), interpolation=interpolation)
        scale = np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        return replace(
            sample,
            image=image,
            boxes=(sample.boxes * scale).astype(np.float32),
            masks=_resize_masks(sample.masks, (nh, nw)),
        )


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Mirror the image; referring expressions swap 'left' and 'right'."""

    probability: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.probability:
            return sample
        _, w = sample.image_hw
        boxes = sample.boxes.copy()
        boxes[:, [0, 2]] = w - sample.boxes[:, [2, 0]]
        phrases = sample.phrases
        if sample.referring:
            phrases = tuple(swap_left_right(p) for p in phrases)
        return replace(
            sample,
            image=np.ascontiguousarray(sample.image[:, ::-1]),
            boxes=boxes,
            masks=None if sample.masks is None else np.ascontiguousarray(sample.masks[:, :, ::-1]),
            phrases=phrases,
        )


@dataclass(frozen=True)
class RandomCrop:
    """Crop a random window of `min_scale`..1 of each side, with `probability`.

    Instances keeping less than `min_visible` of their box area are dropped. A referring sample
    must keep its instance (and the crop must not cut away what "leftmost" referred to), so it is
    never cropped.
    """

    min_scale: float = 0.5
    probability: float = 0.5
    min_visible: float = 0.3

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.referring or rng.random() >= self.probability:
            return sample
        h, w = sample.image_hw
        ch = int(h * rng.uniform(self.min_scale, 1.0))
        cw = int(w * rng.uniform(self.min_scale, 1.0))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
        offset = np.array([x0, y0, x0, y0], np.float32)
        boxes = (sample.boxes - offset).clip(0, [cw, ch, cw, ch]).astype(np.float32)
        masks = None
        if sample.masks is not None:
            masks = np.ascontiguousarray(sample.masks[:, y0 : y0 + ch, x0 : x0 + cw])
            # a cut mask's box is tighter than the clipped box
            from_masks = masks_to_boxes(masks)
            nonempty = masks.any(axis=(1, 2))
            boxes[nonempty] = from_masks[nonempty]
        before = np.maximum(box_area(sample.boxes), 1e-6)
        keep = box_area(boxes) >= self.min_visible * before
        cropped = replace(
            sample,
            image=np.ascontiguousarray(sample.image[y0 : y0 + ch, x0 : x0 + cw]),
            boxes=boxes,
            masks=masks,
        )
        return cropped.select(keep)


@dataclass(frozen=True)
class ToTensor:
    """Normalise with PIXEL_MEAN / PIXEL_STD -> image tensor [3, H, W] float32."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        import torch

        return replace(sample, image=torch.from_numpy(normalize_image(sample.image)))


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order with the same generator."""

    transforms: Sequence[object]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)  # type: ignore[operator]
        return sample


def train_transforms(
    short_sides: Sequence[int] = tuple(range(384, 801, 32)),
    max_size: int = 1333,
    *,
    crop_probability: float = 0.3,
    flip_probability: float = 0.5,
) -> Compose:
    """The paper's multi-scale recipe (short side 384..800, long side <= 1333) + flip + crop."""
    return Compose(
        (
            RandomHorizontalFlip(flip_probability),
            RandomCrop(probability=crop_probability),
            ResizeShortestSide(tuple(short_sides), max_size),
            ToTensor(),
        )
    )


def eval_transforms(short_side: int = 800, max_size: int = 1333) -> Compose:
    """Deterministic resize + normalise."""
    return Compose((ResizeShortestSide((short_side,), max_size), ToTensor()))
