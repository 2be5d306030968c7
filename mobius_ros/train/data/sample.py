"""One training sample as it moves from a loader through the transforms to `collate`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Sample:
    """An image with its instances, before batching.

    Loaders produce `image` as [H, W, 3] uint8 RGB; the final `ToTensor` transform turns it into
    a normalised float tensor [3, H, W]. Geometry is always in pixels of the current `image`.

    Attributes:
        image: [H, W, 3] uint8 RGB, or (after ToTensor) a torch float tensor [3, H, W].
        boxes: [n, 4] float32 xyxy pixels.
        labels: [n] int64 indices into `phrases` (all 0 for agnostic and referring samples).
        masks: [n, H, W] bool, or None for box-only data.
        phrases: the dataset's vocabulary (("object",) when agnostic), or, for a referring
            sample, the single expression.
        dataset: name of the dataset it came from (one dataset per batch).
        image_id: the annotation file's image id.
        referring: True when `phrases` is one expression and `labels` point to its instance.
        orig_size: (H, W) of the image as stored on disk.
        meta: free-form provenance (e.g. {'synthetic': True, 'held_out': [...]}).
    """

    image: Any
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    phrases: tuple[str, ...]
    dataset: str = ''
    image_id: int = -1
    referring: bool = False
    orig_size: tuple[int, int] = (0, 0)
    meta: dict[str, Any] | None = None

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of `image`, whether still numpy [H, W, 3] or already a tensor [3, H, W]."""
        if isinstance(self.image, np.ndarray):
            return int(self.image.shape[0]), int(self.image.shape[1])
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def select(self, keep: np.ndarray) -> Sample:
        """The same sample restricted to the instances `keep` (bool [n] or indices)."""
        return replace(
            self,
            boxes=self.boxes[keep],
            labels=self.labels[keep],
            masks=None if self.masks is None else self.masks[keep],
        )
