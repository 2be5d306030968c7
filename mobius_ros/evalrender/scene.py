"""One evaluation scene as a pure function of (seed, index, size).

Layout: shapes are thrown as darts (Poisson-disc-like: centres at least 0.7 x the sum of radii
apart); a dart is kept only if every shape so far keeps at least 45 % of its in-image area visible
and 20 pixels, so occlusion and border truncation occur but never hide a shape. Masks follow the
50 % rule: a pixel belongs to a shape where its share of the final pixel colour is >= 0.5.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from mobius_ros.evalrender.draw import SHADES, coverage, outline
from mobius_ros.evalrender.expressions import make_expressions

SHAPES = ('circle', 'square', 'triangle', 'star', 'ring', 'hexagon', 'cross', 'diamond')
COLOURS = tuple(SHADES)
SMALL_RADIUS = (0.055, 0.095)  # circumradius / image side
LARGE_RADIUS = (0.14, 0.21)
MIN_VISIBLE_FRACTION = 0.45
MIN_VISIBLE_PIXELS = 20


@dataclass(frozen=True)
class Instance:
    shape: str
    colour: str
    size: str  # 'small' | 'large'
    mask: np.ndarray  # [H, W] bool, visible pixels
    box_xyxy: tuple[float, float, float, float]

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def centre(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()), float(ys.mean())


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    instances: list[Instance]
    expressions: list[dict] = field(default_factory=list)  # sentence, target, kind


def scene_seed(seed: int, index: int, size: int) -> np.random.Generator:
    digest = hashlib.sha256(f'evalrender/{seed}/{index}/{size}'.encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], 'little'))


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[H, W, 3] float32 0-255: flat, two-colour gradient, value noise or checker/stripes, on
    a grey base half the time and a coloured one otherwise."""
    kind = rng.choice(['flat', 'gradient', 'noise', 'stripes'])
    base = np.full(3, rng.uniform(20, 235)) if rng.random() < 0.5 else rng.uniform(20, 235, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 'flat':
        img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == 'gradient':
        other = rng.uniform(20, 235, 3)
        theta = rng.uniform(0, 2 * np.pi)
        t = np.clip((np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5)) + 0.5, 0, 1)
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == 'noise':
        cells = int(rng.integers(3, 9))
        grid = rng.normal(0, 25, (cells + 1, cells + 1, 3))
        gy = yy * cells
        gx = xx * cells
        y0, x0 = gy.astype(int), gx.astype(int)
        fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
        y1, x1 = np.minimum(y0 + 1, cells), np.minimum(x0 + 1, cells)
        top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
        bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
        img = base + top * (1 - fy) + bottom * fy
    else:
        other = np.clip(base + rng.choice([-1, 1]) * rng.uniform(15, 35), 0, 255)
        period = rng.uniform(0.04, 0.12)
        theta = rng.uniform(0, np.pi)
        phase = (np.cos(theta) * xx + np.sin(theta) * yy) / period
        t = (np.floor(phase) % 2)[..., None]
        img = base * (1 - t) + other * t
    return np.clip(img, 0, 255).astype(np.float32)


def render_scene(seed: int, index: int, size: int) -> Scene:
    """Scene `index` of set `seed` at `size` x `size` pixels, with its referring expressions."""
    if size < 32:
        raise ValueError(f'size must be at least 32 px, got {size}')
    rng = scene_seed(seed, index, size)
    img = background(rng, size)
    wanted = int(rng.integers(2, 8))
    placed: list[dict] = []  # shape, colour, size, radius, centre, cov, rgb
    for _ in range(wanted):
        shape = str(rng.choice(SHAPES))
        colour = str(rng.choice(COLOURS))
        size_word = 'large' if rng.random() < 0.4 else 'small'
        lo, hi = LARGE_RADIUS if size_word == 'large' else SMALL_RADIUS
        radius = rng.uniform(lo, hi) * size
        shade = np.asarray(SHADES[colour][int(rng.integers(len(SHADES[colour])))], np.float32)
        rgb = np.clip(shade * rng.uniform(0.85, 1.1), 0, 255)
        spin = {'square': 0.4, 'diamond': 0.25}.get(shape, np.pi)
        for _dart in range(25):
            cx, cy = rng.uniform(-0.25 * radius, size + 0.25 * radius, 2)
            if any(np.hypot(cx - p['cx'], cy - p['cy']) < 0.7 * (radius + p['r']) for p in placed):
                continue
            cov = coverage(outline(shape, cx, cy, radius, rng.uniform(-spin, spin)), size, size)
            trial = [*placed, {'cov': cov, 'full': float(cov.sum())}]
            visible = _visible(trial)
            if all(
                v.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * p['full'])
                for v, p in zip(visible, trial)
            ):
                placed.append(
                    {
                        'shape': shape,
                        'colour': colour,
                        'size': size_word,
                        'r': radius,
                        'cx': cx,
                        'cy': cy,
                        'cov': cov,
                        'full': float(cov.sum()),
                        'rgb': rgb,
                    }
                )
                break
    for p in placed:
        img = img * (1 - p['cov'][..., None]) + p['rgb'] * p['cov'][..., None]
    # lighting: a soft multiplicative light from one side, then sensor noise
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.15) * (np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5))
    img = img * light[..., None] + rng.normal(0, rng.uniform(0, 4), img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    instances = []
    for p, vis in zip(placed, _visible(placed)):
        mask = vis >= 0.5
        if mask.sum() < MIN_VISIBLE_PIXELS // 2:
            continue  # (not reached in practice: darts keep 20 visible pixels)
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        instances.append(Instance(p['shape'], p['colour'], p['size'], mask, box))
    return Scene(image, instances, make_expressions(instances, rng, size))


def _visible(placed: list[dict]) -> list[np.ndarray]:
    """Share of each pixel's final colour that each shape contributes (later ones on top)."""
    out, above = [], None
    for p in reversed(placed):
        share = p['cov'] if above is None else p['cov'] * above
        out.append(share)
        above = (1 - p['cov']) if above is None else above * (1 - p['cov'])
    return out[::-1]
