"""What a prediction is, independent of backend and of ROS.

Everything here is numpy; coordinates are in the pixels of the *original* image (never the
network's letterboxed canvas), so consumers never rescale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Task(str, Enum):
    """The three tasks of the paper's Fig. 5."""

    VOCABULARY = 'vocabulary'  # category-guided: a list of class phrases
    AGNOSTIC = 'agnostic'  # category-agnostic: the single prompt "object"
    REFERRING = 'referring'  # one expression, one best instance


@dataclass(frozen=True)
class Prediction:
    """Instances found in one image.

    Attributes:
        boxes: [N, 4] float32 x1, y1, x2, y2 in original image pixels.
        scores: [N] float32 in [0, 1], sorted descending.
        class_ids: [N] int64 indices into `phrases`.
        phrases: the vocabulary the image was segmented with (class id k -> phrases[k]).
        masks: [N, H, W] bool at the original resolution (H, W = image_size).
        image_size: (H, W) of the original image.
        task: which task produced this.
        vocabulary_version: version of the vocabulary used (changes on every swap).
        queries_kept: surviving queries after each executed decoder layer.
        timings_ms: wall time per stage ('preprocess', 'encoder', 'decoder', 'masks',
            'postprocess', 'total').
        budget: what the latency controller chose for this frame (empty without a budget).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    phrases: tuple[str, ...]
    masks: np.ndarray
    image_size: tuple[int, int]
    task: Task = Task.VOCABULARY
    vocabulary_version: int = 0
    queries_kept: tuple[int, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float | int | bool | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.class_ids.shape != (n,):
            raise ValueError(
                f'inconsistent prediction: boxes {self.boxes.shape}, scores {self.scores.shape},'
                f' class_ids {self.class_ids.shape}'
            )
        if self.masks.shape != (n, *self.image_size):
            raise ValueError(
                f'masks {self.masks.shape} do not match {n} instances at {self.image_size}'
            )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labels(self) -> list[str]:
        """The phrase of each instance."""
        return [self.phrases[int(k)] for k in self.class_ids]

    def label_image(self) -> np.ndarray:
        """[H, W] uint16: 0 background, n = instance n (1-based, in score order).

        Where instances overlap, the higher-scoring one wins (it is drawn last).
        """
        label = np.zeros(self.image_size, np.uint16)
        for n in range(len(self) - 1, -1, -1):
            label[self.masks[n]] = n + 1
        return label

    @classmethod
    def empty(
        cls, image_size: tuple[int, int], phrases: tuple[str, ...], **kwargs: object
    ) -> Prediction:
        """A prediction with no instances."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            phrases=phrases,
            masks=np.zeros((0, *image_size), bool),
            image_size=image_size,
            **kwargs,  # type: ignore[arg-type]
        )
