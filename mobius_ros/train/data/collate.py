"""Batching: pad images to a multiple of 32 and build the batch's text prompts.

Targets follow the model contract: per image `labels` [n] int64 (into the batch's phrases),
`boxes` [n, 4] cx, cy, w, h normalised to the *padded* tensor, and `masks` [n, H, W] bool at the
padded tensor resolution (absent for box-only data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mobius_ros.ops.boxes import box_xyxy_to_cxcywh
from mobius_ros.ops.image import pad_to_multiple
from mobius_ros.train.data.sample import Sample


@dataclass
class Batch:
    """What one training step consumes.

    Attributes:
        images: [B, 3, H, W] normalised float32, H and W multiples of `size_divisor`; padding is
            zero (the mean colour after normalisation) at the bottom and right.
        targets: B dicts with 'labels' [n], 'boxes' [n, 4] and, unless box-only, 'masks'
            [n, H, W].
        phrases: the K vocabulary phrases shared by the batch, or, when `referring`, the B
            expressions (expression b belongs to image b).
        referring: selects the model's referring mode.
        dataset: the one dataset the batch came from.
        image_ids: annotation image ids.
        image_sizes: (h, w) of each image inside the padded tensor.
        orig_sizes: (H, W) of each image as stored on disk.
    """

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    phrases: tuple[str, ...]
    referring: bool
    dataset: str
    image_ids: list[int]
    image_sizes: list[tuple[int, int]]
    orig_sizes: list[tuple[int, int]]


def batch_vocabulary(
    labels: Sequence[np.ndarray],
    phrases: Sequence[str],
    *,
    max_phrases: int = 100,
    rng: np.random.Generator | None = None,
) -> tuple[tuple[str, ...], np.ndarray]:
    """Choose the batch's prompts and the label remapping.

    A vocabulary of at most `max_phrases` is used whole, in its own order. A larger one (LVIS,
    Objects365) is cut to `max_phrases`: the classes present in the batch first, then random
    negatives (the present classes are always kept, even if more than `max_phrases`).

    Returns (batch phrases, old index -> new index [len(phrases)], -1 for dropped classes).
    """
    if len(phrases) <= max_phrases:
        return tuple(phrases), np.arange(len(phrases), dtype=np.int64)
    rng = rng or np.random.default_rng()
    positives = list(dict.fromkeys(int(k) for lab in labels for k in lab))
    taken = set(positives)
    negatives = [k for k in rng.permutation(len(phrases)).tolist() if k not in taken]
    chosen = positives + negatives[: max(0, max_phrases - len(positives))]
    remap = np.full(len(phrases), -1, np.int64)
    remap[chosen] = np.arange(len(chosen))
    return tuple(phrases[k] for k in chosen), remap


def collate(
    samples: Sequence[Sample],
    *,
    max_phrases: int = 100,
    size_divisor: int = 32,
    rng: np.random.Generator | None = None,
) -> Batch:
    """Samples of one dataset (images already tensors, see `ToTensor`) -> a `Batch`."""
    if not samples:
        raise ValueError('cannot collate an empty list')
    names = {s.dataset for s in samples}
    referring = {s.referring for s in samples}
    if len(names) > 1 or len(referring) > 1:
        raise ValueError(f'a batch must come from one dataset and task, got {sorted(names)}')
    is_referring = referring.pop()
    if not isinstance(samples[0].image, torch.Tensor):
        raise TypeError('collate needs tensor images; end the transforms with ToTensor()')
    sizes = [s.image_hw for s in samples]
    H = pad_to_multiple(max(h for h, _ in sizes), size_divisor)
    W = pad_to_multiple(max(w for _, w in sizes), size_divisor)
    images = torch.zeros((len(samples), 3, H, W), dtype=torch.float32)
    for b, (s, (h, w)) in enumerate(zip(samples, sizes)):
        images[b, :, :h, :w] = s.image

    if is_referring:
        if any(len(s.phrases) != 1 for s in samples):
            raise ValueError('a referring sample carries exactly one expression')
        phrases = tuple(s.phrases[0] for s in samples)
        remap = None
    else:
        if len({s.phrases for s in samples}) > 1:
            raise ValueError('samples of one dataset must share its vocabulary')
        phrases, remap = batch_vocabulary(
            [s.labels for s in samples], samples[0].phrases, max_phrases=max_phrases, rng=rng
        )

    scale = np.array([W, H, W, H], np.float32)
    targets = []
    for s, (h, w) in zip(samples, sizes):
        labels = np.zeros_like(s.labels) if remap is None else remap[s.labels]
        target = {
            'labels': torch.from_numpy(labels.astype(np.int64)),
            'boxes': torch.from_numpy((box_xyxy_to_cxcywh(s.boxes) / scale).astype(np.float32)),
        }
        if s.masks is not None:
            masks = torch.zeros((len(s.masks), H, W), dtype=torch.bool)
            masks[:, :h, :w] = torch.from_numpy(s.masks)
            target['masks'] = masks
        targets.append(target)
    return Batch(
        images=images,
        targets=targets,
        phrases=phrases,
        referring=is_referring,
        dataset=samples[0].dataset,
        image_ids=[s.image_id for s in samples],
        image_sizes=sizes,
        orig_sizes=[s.orig_size for s in samples],
    )
