"""Image normalisation (numpy, the runtime's preprocessing)."""

from __future__ import annotations

import numpy as np

from mobius_ros.ops.image import PIXEL_MEAN, PIXEL_STD, letterbox, normalize_image


def test_normalize_image_known_values_and_layout() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 1] = (255, 0, 128)
    image[1, 2] = (10, 20, 30)
    out = normalize_image(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    expected = (np.array([255, 0, 128], np.float32) - PIXEL_MEAN) / PIXEL_STD
    np.testing.assert_allclose(out[:, 0, 1], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        out[:, 1, 2], (np.array([10, 20, 30]) - PIXEL_MEAN) / PIXEL_STD, atol=1e-6
    )
    np.testing.assert_allclose(out[:, 0, 0], -PIXEL_MEAN / PIXEL_STD, atol=1e-6)


def test_normalize_image_of_a_letterboxed_view_matches_the_definition() -> None:
    image = (np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8)
    canvas = letterbox(image, (64, 64))[0]
    reference = (canvas.astype(np.float64).transpose(2, 0, 1) - PIXEL_MEAN[:, None, None]) / (
        PIXEL_STD[:, None, None]
    )
    np.testing.assert_allclose(normalize_image(canvas), reference, atol=1e-5)
    # A non-contiguous crop normalises like its copy.
    np.testing.assert_array_equal(
        normalize_image(canvas[5:40, 3:61]), normalize_image(canvas[5:40, 3:61].copy())
    )
