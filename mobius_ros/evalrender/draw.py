"""Shape outlines and anti-aliased rasterising (PIL at 4x supersampling, box-filtered down)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4

# Shades per colour name: X11/CSS named colours (RGB 0-255).
SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {
    'red': ((220, 20, 60), (178, 34, 34), (205, 38, 38), (238, 44, 44)),
    'green': ((34, 139, 34), (50, 205, 50), (46, 139, 87), (0, 201, 87)),
    'blue': ((65, 105, 225), (0, 0, 205), (30, 144, 255), (39, 64, 139)),
    'yellow': ((255, 215, 0), (255, 255, 0), (238, 238, 0), (255, 236, 139)),
    'orange': ((255, 140, 0), (255, 127, 36), (238, 118, 0), (255, 165, 79)),
    'purple': ((128, 0, 128), (153, 50, 204), (102, 51, 153), (145, 44, 238)),
    'pink': ((255, 105, 180), (255, 20, 147), (255, 130, 171), (238, 106, 167)),
    'cyan': ((0, 255, 255), (0, 206, 209), (0, 229, 238), (72, 209, 204)),
}


def outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[list[tuple]]:
    """Rings of (x, y) points of `shape` with circumradius `r`: [outer] or [outer, hole]."""

    def regular(n: int, radius: float, phase: float = 0.0) -> list[tuple]:
        return [
            (
                radius * math.cos(phase + 2 * math.pi * k / n),
                radius * math.sin(phase + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]

    if shape == 'circle':
        rings = [regular(72, r)]
    elif shape == 'ring':
        rings = [regular(72, r), regular(72, 0.55 * r)]
    elif shape == 'square':
        rings = [regular(4, r, math.pi / 4)]
    elif shape == 'triangle':
        rings = [regular(3, r, -math.pi / 2)]
    elif shape == 'hexagon':
        rings = [regular(6, r)]
    elif shape == 'diamond':
        rings = [[(0, -r), (0.62 * r, 0), (0, r), (-0.62 * r, 0)]]
    elif shape == 'star':
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.42 * r
            a = -math.pi / 2 + math.pi * k / 5
            points.append((radius * math.cos(a), radius * math.sin(a)))
        rings = [points]
    elif shape == 'cross':
        a, b = 0.3 * r, 0.95 * r  # half arm width, half arm length (corner at radius ~r)
        rings = [
            [
                (-a, -b),
                (a, -b),
                (a, -a),
                (b, -a),
                (b, a),
                (a, a),
                (a, b),
                (-a, b),
                (-a, a),
                (-b, a),
                (-b, -a),
                (-a, -a),
            ]
        ]
    else:
        raise ValueError(f'unknown shape {shape!r}')
    c, s = math.cos(angle), math.sin(angle)
    return [[(cx + x * c - y * s, cy + x * s + y * c) for x, y in ring] for ring in rings]


def coverage(rings: list[list[tuple]], height: int, width: int) -> np.ndarray:
    """Fraction of each pixel covered by the polygon (holes removed): [H, W] float32 in [0, 1]."""
    k = SUPERSAMPLE
    canvas = Image.new('L', (width * k, height * k), 0)
    pen = ImageDraw.Draw(canvas)
    for n, ring in enumerate(rings):
        # pixel centres sit at +0.5; scale so that continuous coordinates map exactly
        pen.polygon([(x * k - 0.5, y * k - 0.5) for x, y in ring], fill=0 if n else 255)
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0
