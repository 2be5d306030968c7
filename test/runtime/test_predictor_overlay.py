"""Overlays: masks blended with the instance colour, nothing drawn outside them."""

from __future__ import annotations

import numpy as np
import pytest

from mobius_ros.runtime.overlay import PALETTE, draw_prediction, instance_color
from mobius_ros.runtime.result import Prediction


def _prediction(masks: np.ndarray) -> Prediction:
    n = masks.shape[0]
    return Prediction(
        boxes=np.tile(np.array([[2.0, 2.0, 8.0, 6.0]], np.float32), (n, 1)),
        scores=np.linspace(0.9, 0.5, n).astype(np.float32),
        class_ids=np.zeros(n, np.int64),
        phrases=('cup',),
        masks=masks,
        image_size=masks.shape[1:],
    )


def test_masks_are_blended_and_the_best_instance_is_on_top() -> None:
    image = np.full((12, 20, 3), 100, np.uint8)
    masks = np.zeros((2, 12, 20), bool)
    masks[0, 3:9, 3:9] = True
    masks[1, 5:11, 5:15] = True  # overlaps instance 0
    out = draw_prediction(image, _prediction(masks), alpha=0.5, boxes=False, labels=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    expected0 = ((100 * 0.5) + np.array(instance_color(0)) * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[6, 6], expected0)  # overlap: the higher score wins
    expected1 = ((100 * 0.5) + np.array(instance_color(1)) * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[9, 12], expected1)
    assert (out[0:2] == 100).all() and (out[:, 17:] == 100).all()  # untouched background
    assert (image == 100).all()  # the input is not modified


def test_colours_cycle_and_sizes_must_match() -> None:
    assert instance_color(len(PALETTE)) == instance_color(0)
    masks = np.zeros((1, 12, 20), bool)
    with pytest.raises(ValueError):
        draw_prediction(np.zeros((10, 20, 3), np.uint8), _prediction(masks))
    drawn = draw_prediction(np.zeros((12, 20, 3), np.uint8), _prediction(masks))
    assert drawn.any()  # box and label drawn even for an empty mask
