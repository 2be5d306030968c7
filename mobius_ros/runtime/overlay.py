"""Drawing a `Prediction` over its image (numpy/OpenCV): CLI overlays and debug images."""

from __future__ import annotations

import cv2
import numpy as np

from mobius_ros.runtime.result import Prediction

# Distinct, colour-blind-friendly-ish RGB colours (Tableau 10), cycled per instance.
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    np.uint8,
)


def instance_color(index: int) -> tuple[int, int, int]:
    """RGB colour of instance `index` (stable across frames for the same index)."""
    r, g, b = PALETTE[index % len(PALETTE)]
    return int(r), int(g), int(b)


def draw_prediction(
    image: np.ndarray,
    prediction: Prediction,
    *,
    alpha: float = 0.5,
    boxes: bool = True,
    labels: bool = True,
) -> np.ndarray:
    """Masks blended in, outlines, boxes and 'phrase score' labels over a copy of `image`.

    Args:
        image: [H, W, 3] uint8 RGB, the image the prediction was made on.
        prediction: its instances (masks at the image's resolution).
        alpha: mask opacity.

    Returns:
        [H, W, 3] uint8 RGB.
    """
    if image.shape[:2] != prediction.image_size:
        raise ValueError(
            f'image {image.shape[:2]} does not match the prediction {prediction.image_size}'
        )
    out = image.copy()
    # Each pixel takes the colour of the best instance covering it (blending every overlapping
    # mask in turn would mix colours into ones no instance has).
    label = prediction.label_image()
    for n in range(len(prediction)):
        color = np.array(instance_color(n), np.float32)
        top = label == n + 1
        out[top] = (image[top] * (1.0 - alpha) + color * alpha).astype(np.uint8)
    for n in range(len(prediction) - 1, -1, -1):
        contours, _ = cv2.findContours(
            prediction.masks[n].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, instance_color(n), 1)
    thickness = max(1, round(min(prediction.image_size) / 300))
    scale = max(0.35, min(prediction.image_size) / 800)
    for n in range(len(prediction)):
        x1, y1, x2, y2 = (int(v) for v in np.round(prediction.boxes[n]))
        if boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), instance_color(n), thickness)
        if labels:
            text = f'{prediction.labels[n]} {prediction.scores[n]:.2f}'
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = max(th + base, y1)
            cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), instance_color(n), -1)
            cv2.putText(
                out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1
            )
    return out
