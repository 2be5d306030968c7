"""Synthetic open-vocabulary scenes (DESIGN §7): shapes with colours, sizes and textures.

Vocabulary scheme: a *category* is a shape ("circle"); attributes are colour, size and texture,
and each instance carries its attribute phrases "<colour> <shape>" and "<size> <colour> <shape>".
Referring expressions (`synthetic_expressions.py`) combine attributes, extremes and spatial
relations ("the small blue triangle left of the red circle").

Generalisation is measured on things training never shows: the test split uses colour synonyms
("crimson" for red) in its expressions and draws colour-shape combinations that train and val
never contain (`HELD_OUT_COMBINATIONS`); the records that use either are flagged.

Everything is a function of (seed, split, image index), so a split is reproducible image by image
whatever `num` is. numpy/OpenCV only.
"""

from __future__ import annotations

import colorsys
import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from mobius_ros.ops.masks import rle_encode

SHAPES: tuple[str, ...] = (
    'circle',
    'square',
    'triangle',
    'star',
    'ring',
    'hexagon',
    'cross',
    'diamond',
)
COLOURS: dict[str, tuple[int, int, int]] = {  # RGB, saturated so names are unambiguous
    'red': (215, 30, 35),
    'green': (40, 170, 60),
    'blue': (35, 75, 215),
    'yellow': (235, 215, 40),
    'orange': (240, 130, 20),
    'purple': (140, 50, 180),
    'pink': (245, 120, 190),
    'cyan': (40, 205, 215),
}
# `SynthConfig.colour_sampling='hsv'`: each name covers a region of HSV space (hue in degrees,
# half-open [lo, hi), wrapping past 360; saturation and value in [0, 1]). Hue bands are disjoint
# and separated by unsampled gaps, so no drawn colour lies near the boundary between two names:
# a hue in a gap has no name and is never drawn.
COLOUR_REGIONS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    'red': ((350.0, 12.0), (0.6, 1.0), (0.5, 1.0)),
    'orange': ((20.0, 38.0), (0.7, 1.0), (0.7, 1.0)),
    'yellow': ((48.0, 62.0), (0.6, 1.0), (0.75, 1.0)),
    'green': ((95.0, 145.0), (0.5, 1.0), (0.4, 1.0)),
    'cyan': ((175.0, 195.0), (0.55, 1.0), (0.6, 1.0)),
    'blue': ((212.0, 245.0), (0.6, 1.0), (0.45, 1.0)),
    'purple': ((268.0, 292.0), (0.5, 1.0), (0.4, 0.9)),
    'pink': ((312.0, 338.0), (0.3, 0.6), (0.8, 1.0)),
}
SIZES: tuple[str, ...] = ('small', 'large')
TEXTURES: tuple[str, ...] = ('solid', 'striped', 'dotted')
BACKGROUNDS: tuple[str, ...] = ('noise', 'gradient', 'clutter')
# Seen only in the test split.
HELD_OUT_SYNONYMS: dict[str, str] = {'red': 'crimson', 'purple': 'violet'}
HELD_OUT_COMBINATIONS: frozenset[tuple[str, str]] = frozenset(
    {('green', 'star'), ('orange', 'ring'), ('purple', 'square'), ('cyan', 'triangle')}
)
SPLITS: dict[str, int] = {'train': 0, 'val': 1, 'test': 2}
# radius as a fraction of the shorter image side
_RADIUS = {'small': (0.07, 0.11), 'large': (0.15, 0.22)}


@dataclass(frozen=True)
class SynthConfig:
    """What a scene may contain."""

    image_hw: tuple[int, int] = (128, 128)
    min_objects: int = 1
    max_objects: int = 6
    min_visible: float = 0.6  # drop placements that hide more of an object than this allows
    held_out_probability: float = 0.3  # test split: chance to draw a held-out combination
    synonym_probability: float = 0.5  # test split: chance to name a colour by its synonym
    # 'fixed': one RGB value per name (`COLOURS`, jittered); 'hsv': uniform over the name's
    # region (`COLOUR_REGIONS`). 'fixed' draws the same scenes as before the option existed.
    colour_sampling: str = 'fixed'
    # photo backgrounds (e.g. COCO128 images read from a data root, never downloaded): with
    # probability `photo_probability` a scene's background is a random crop of one of these
    # files, flipped at random; none given draws the same scenes as before the option existed
    background_photos: tuple[str, ...] = ()
    photo_probability: float = 0.5
    # Domain randomisation (`SynthConfig.randomised` turns every axis on). With all of these at
    # their defaults a scene is drawn by the original code path, byte for byte.
    # Object size: radius as a fraction of the shorter side; the bands never overlap, so the
    # name follows the drawn radius (small < 'large' lower bound), occlusion or truncation aside.
    radius_small: tuple[float, float] = (0.07, 0.11)
    radius_large: tuple[float, float] = (0.15, 0.22)
    aspect_max: float = 1.0  # stretch one axis by a factor in [1/a, a] (circles become ellipses)
    free_rotation: bool = False  # squares at any angle (they are otherwise drawn near upright)
    rounding_probability: float = 0.0  # polygon corners filleted (up to 40 % of each edge)
    outline_probability: float = 0.0  # drawn as a thick outline (the shape minus a shrunk copy)
    truncation_probability: float = 0.0  # centre may lie past the border; the mask is clipped
    antialias_probability: float = 0.0  # soft edges blend by coverage; mask = coverage >= 50 %
    shading_probability: float = 0.0  # a value/saturation gradient inside the colour's region
    noise_max: float = 0.0  # gaussian noise, sigma uniform in [0, noise_max] grey levels
    blur_probability: float = 0.0  # gaussian blur, sigma 0.3-1.2 px
    jpeg_probability: float = 0.0  # JPEG round trip, quality 40-90
    lighting: bool = False  # per-scene gamma, brightness and white balance (see `_Lighting`)

    def __post_init__(self) -> None:
        if self.colour_sampling not in ('fixed', 'hsv'):
            raise ValueError(
                f"colour_sampling must be 'fixed' or 'hsv', got {self.colour_sampling!r}"
            )
        for name in ('radius_small', 'radius_large'):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 0.5:
                raise ValueError(f'{name} must satisfy 0 < lo <= hi <= 0.5, got {(lo, hi)}')
        if self.radius_small[1] >= self.radius_large[0]:
            raise ValueError('radius_small must lie below radius_large, so size names stay true')
        if self.aspect_max < 1.0:
            raise ValueError(f'aspect_max must be >= 1, got {self.aspect_max}')
        if self.noise_max < 0:
            raise ValueError(f'noise_max must be >= 0, got {self.noise_max}')
        for name in (
            'rounding_probability',
            'outline_probability',
            'truncation_probability',
            'antialias_probability',
            'shading_probability',
            'blur_probability',
            'jpeg_probability',
            'photo_probability',
            'min_visible',
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must lie in [0, 1], got {getattr(self, name)}')

    @classmethod
    def randomised(
        cls, image_hw: tuple[int, int] = (160, 160), background_photos: tuple[str, ...] = ()
    ) -> SynthConfig:
        """Every randomisation axis on: the preset the randomised demo recipe trains on."""
        return cls(
            image_hw=image_hw,
            min_visible=0.35,
            colour_sampling='hsv',
            background_photos=tuple(background_photos),
            radius_small=(0.04, 0.11),
            radius_large=(0.15, 0.35),
            aspect_max=1.6,
            free_rotation=True,
            rounding_probability=0.3,
            outline_probability=0.15,
            truncation_probability=0.25,
            antialias_probability=0.7,
            shading_probability=0.4,
            noise_max=6.0,
            blur_probability=0.3,
            jpeg_probability=0.3,
            lighting=True,
        )

    @property
    def classic(self) -> bool:
        """Whether scenes come from the original drawing code (no randomisation axis on)."""
        defaults = SynthConfig()
        return all(
            getattr(self, name) == getattr(defaults, name)
            for name in (
                'radius_small',
                'radius_large',
                'aspect_max',
                'free_rotation',
                'rounding_probability',
                'outline_probability',
                'truncation_probability',
                'antialias_probability',
                'shading_probability',
                'noise_max',
                'blur_probability',
                'jpeg_probability',
                'lighting',
            )
        )


@dataclass
class Instance:
    """One drawn object; `mask` is its visible part after occlusion."""

    shape: str
    colour: str
    size: str
    texture: str
    mask: np.ndarray  # [H, W] bool
    held_out: bool = False
    # filled by `finalise` once no later object can occlude this one
    box_xyxy: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    area: int = 0
    truncated: bool = False  # part of the object lies past the image border (randomised scenes)

    def finalise(self) -> None:
        x, y, w, h = cv2.boundingRect(self.mask.astype(np.uint8))
        self.box_xyxy = (float(x), float(y), float(x + w), float(y + h))
        self.area = int(np.count_nonzero(self.mask))

    @property
    def phrases(self) -> list[str]:
        return [f'{self.colour} {self.shape}', f'{self.size} {self.colour} {self.shape}']

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box_xyxy
        return (x1 + x2) / 2, (y1 + y2) / 2


@dataclass
class Scene:
    """An image [H, W, 3] uint8 RGB, its instances (drawing order) and referring expressions."""

    image: np.ndarray
    instances: list[Instance]
    background: str
    expressions: list[dict] = field(default_factory=list)


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image `index` of `split` (independent of how many images are made)."""
    return np.random.default_rng([seed, SPLITS[split], index])


def _polygon(shape: str, r: float, angle: float) -> np.ndarray:
    """Unit polygon of `shape` scaled by r and rotated, [P, 2] centred on the origin."""
    if shape == 'square':
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == 'triangle':
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == 'hexagon':
        t = np.arange(6) * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == 'star':
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * rad[:, None]
    elif shape == 'diamond':
        pts = np.array([[0, -r], [0.58 * r, 0], [0, r], [-0.58 * r, 0]])
    elif shape == 'cross':
        a, b = r, 0.34 * r
        arm = [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b]]
        pts = np.array([*arm, *(-np.array(arm)).tolist()])
    else:
        raise ValueError(f'no polygon for {shape!r}')
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def shape_mask(
    shape: str, centre: tuple[float, float], r: float, angle: float, image_hw: tuple[int, int]
) -> np.ndarray:
    """[H, W] bool silhouette of one shape (aliased, so mask and drawn pixels agree exactly)."""
    mask = np.zeros(image_hw, np.uint8)
    cx, cy = centre
    if shape in ('circle', 'ring'):
        cv2.circle(mask, (round(cx), round(cy)), max(1, round(r)), 1, -1, cv2.LINE_8)
        if shape == 'ring':
            cv2.circle(mask, (round(cx), round(cy)), max(1, round(0.55 * r)), 0, -1, cv2.LINE_8)
    else:
        pts = _polygon(shape, r, angle) + np.array([cx, cy])
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    return mask.astype(bool)


def hue_in(hue: float, band: tuple[float, float]) -> bool:
    """Whether `hue` (degrees) lies in the half-open band [lo, hi), which may wrap past 360."""
    lo, hi = band
    hue %= 360.0
    return lo <= hue < hi if lo < hi else hue >= lo or hue < hi


def sample_colour(rng: np.random.Generator, name: str) -> tuple[int, int, int]:
    """An RGB colour drawn uniformly from the HSV region `COLOUR_REGIONS[name]`."""
    (lo, hi), (s_lo, s_hi), (v_lo, v_hi) = COLOUR_REGIONS[name]
    width = (hi - lo) % 360.0
    hue = (lo + rng.uniform(0.0, width)) % 360.0
    sat, val = rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi)
    return tuple(round(v * 255) for v in colorsys.hsv_to_rgb(hue / 360.0, sat, val))


def _background(rng: np.random.Generator, kind: str, image_hw: tuple[int, int]) -> np.ndarray:
    """Low-saturation backgrounds, so no background pixel looks like a named colour."""
    h, w = image_hw

    def muted() -> np.ndarray:
        return (rng.uniform(60, 200) + rng.uniform(-20, 20, 3)).astype(np.float32)

    if kind == 'gradient':
        horizontal = rng.random() < 0.5
        t = np.linspace(0, 1, w if horizontal else h, dtype=np.float32)
        t = (t[None, :] if horizontal else t[:, None])[..., None]
        image = muted() * (1 - t) + muted() * t
    else:
        image = muted()[None, None, :]
    noise = rng.standard_normal((h, w, 1), dtype=np.float32) * (8 if kind == 'noise' else 3)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if kind == 'clutter':
        for _ in range(int(rng.integers(4, 12))):
            grey = int(rng.uniform(40, 220))
            p1 = tuple(int(v) for v in rng.integers(0, (w, h)))
            p2 = tuple(int(v) for v in rng.integers(0, (w, h)))
            cv2.line(image, p1, p2, (grey, grey, grey), int(rng.integers(1, 3)))
    return image


@functools.lru_cache(maxsize=256)
def _read_photo(path: str) -> np.ndarray:
    """A photo decoded once per process (scenes are drawn per training sample); read-only."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'background photo {path} cannot be read as an image')
    bgr.flags.writeable = False
    return bgr


def photo_background(
    rng: np.random.Generator, photos: tuple[str, ...], image_hw: tuple[int, int]
) -> np.ndarray:
    """A random crop (30-100 % of the shorter side, any position) of a random photo, flipped
    left-right half the time, resized to `image_hw`; RGB uint8."""
    bgr = _read_photo(photos[int(rng.integers(len(photos)))])
    ph, pw = bgr.shape[:2]
    h, w = image_hw
    scale = rng.uniform(0.3, 1.0) * min(ph / h, pw / w)
    ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = bgr[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def scene_background(rng: np.random.Generator, config: SynthConfig) -> tuple[str, np.ndarray]:
    """(kind, [H, W, 3] uint8 RGB) of a scene: a photo crop with `config.photo_probability`
    where photos are given, else one of `BACKGROUNDS`."""
    if config.background_photos and rng.random() < config.photo_probability:
        return 'photo', photo_background(rng, config.background_photos, config.image_hw)
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return background, _background(rng, background, config.image_hw)


def _paint(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    texture: str,
    colour: tuple[int, int, int],
    jitter: float = 12.0,
) -> None:
    """Fill `mask` in `image` (in place); stripes and dots stay within the colour's name.

    Works on the mask's bounding box only, which keeps a scene at about a millisecond.
    """
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    crop = mask[y : y + h, x : x + w]
    base = np.asarray(colour, np.float32)
    if jitter:
        base = np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255)
    region = image[y : y + h, x : x + w]
    if texture == 'solid':
        region[crop] = base.astype(np.uint8)
        return
    yy, xx = np.mgrid[y : y + h, x : x + w]
    if texture == 'striped':
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(4, 8)
        on = ((xx * np.cos(angle) + yy * np.sin(angle)) // (period / 2)) % 2 == 0
    else:
        period = rng.uniform(5, 8)
        on = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (
            period / 4
        ) ** 2
    fill = np.where(on[..., None], base * 0.55, base).astype(np.uint8)
    region[crop] = fill[crop]


def _sample_attributes(
    rng: np.random.Generator, split: str, config: SynthConfig
) -> tuple[str, str, bool]:
    """(shape, colour, held_out); train/val never see a held-out combination."""
    if split == 'test' and rng.random() < config.held_out_probability:
        combos = sorted(HELD_OUT_COMBINATIONS)
        colour, shape = combos[int(rng.integers(len(combos)))]
        return shape, colour, True
    while True:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        if (colour, shape) not in HELD_OUT_COMBINATIONS:
            return shape, colour, False


def generate_scene(
    rng: np.random.Generator, *, split: str, config: SynthConfig = SynthConfig()
) -> Scene:
    """Draw one scene: background, then objects back to front with occlusion.

    A placement is rejected (and retried) if it would leave an earlier object, or itself, with
    less than `config.min_visible` of its area visible, so every instance stays recognisable.
    """
    from mobius_ros.train.data.synthetic_expressions import referring_expressions

    if not config.classic:
        from mobius_ros.train.data.synthetic_random import generate_randomised_scene

        return generate_randomised_scene(rng, split=split, config=config)
    h, w = config.image_hw
    background, image = scene_background(rng, config)
    instances: list[Instance] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        shape, colour, held_out = _sample_attributes(rng, split, config)
        size = SIZES[int(rng.integers(len(SIZES)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        for _attempt in range(10):
            r = rng.uniform(*_RADIUS[size]) * min(h, w)
            centre = (rng.uniform(r, w - r), rng.uniform(r, h - r))
            angle = rng.uniform(-0.26, 0.26) if shape == 'square' else rng.uniform(0, 2 * np.pi)
            mask = shape_mask(shape, centre, r, angle, (h, w))
            ok = mask.sum() >= 16 and all(
                (inst.mask & ~mask).sum() >= config.min_visible * full
                for inst, full in zip(instances, full_areas)
            )
            if ok:
                break
        else:
            continue
        if config.colour_sampling == 'hsv':
            _paint(rng, image, mask, texture=texture, colour=sample_colour(rng, colour), jitter=0)
        else:
            _paint(rng, image, mask, texture=texture, colour=COLOURS[colour])
        for inst in instances:
            inst.mask &= ~mask
        instances.append(Instance(shape, colour, size, texture, mask, held_out))
        full_areas.append(int(mask.sum()))
    for inst in instances:
        inst.finalise()
    scene = Scene(image=image, instances=instances, background=background)
    scene.expressions = referring_expressions(rng, scene.instances, split=split, config=config)
    return scene


def category_list() -> list[dict]:
    """COCO `categories`: one per shape, ids from 1."""
    return [{'id': i + 1, 'name': s, 'supercategory': 'shape'} for i, s in enumerate(SHAPES)]


def write_split(
    out_dir: str | Path,
    *,
    split: str = 'train',
    num: int = 500,
    image_hw: tuple[int, int] = (128, 128),
    seed: int = 0,
    config: SynthConfig | None = None,
    sizes: tuple[int, ...] = (),
    size_weights: tuple[float, ...] = (),
) -> dict[str, Path]:
    """Write `num` scenes of `split` as PNGs plus COCO instances and RefCOCO-style refs JSON.

    `sizes` (square sides, optionally weighted) draws each image natively at a side picked from
    (seed, index), as training's `SyntheticScenes` does; empty keeps `config.image_hw`.

    Layout: `images/<split>/<id>.png`, `annotations/instances_<split>.json`,
    `annotations/refs_<split>.json`. Returns those paths (keys 'images', 'instances', 'refs').
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
    config = config or SynthConfig(image_hw=image_hw)
    out = Path(out_dir)
    image_dir = out / 'images' / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    category_id = {s: i + 1 for i, s in enumerate(SHAPES)}
    images, annotations, refs = [], [], []
    if size_weights and len(size_weights) != len(sizes):
        raise ValueError('size_weights needs one weight per size')
    weights = np.asarray(size_weights or [1.0] * len(sizes), np.float64)
    for index in range(num):
        scene_config = config
        if sizes:
            pick = np.random.default_rng([seed, 11, index]).choice(
                len(sizes), p=weights / weights.sum()
            )
            side = int(sizes[int(pick)])
            scene_config = replace(config, image_hw=(side, side))
        scene = generate_scene(scene_rng(seed, split, index), split=split, config=scene_config)
        image_id = index + 1
        file_name = f'{image_id:06d}.png'
        cv2.imwrite(str(image_dir / file_name), scene.image[..., ::-1])
        h, w = scene.image.shape[:2]
        images.append({'id': image_id, 'file_name': file_name, 'height': h, 'width': w})
        ann_ids = []
        for inst in scene.instances:
            x1, y1, x2, y2 = inst.box_xyxy
            ann_ids.append(len(annotations) + 1)
            annotations.append(
                {
                    'id': ann_ids[-1],
                    'image_id': image_id,
                    'category_id': category_id[inst.shape],
                    'segmentation': rle_encode(inst.mask),
                    'area': inst.area,
                    'bbox': [x1, y1, x2 - x1, y2 - y1],
                    'iscrowd': 0,
                    'attributes': {
                        'colour': inst.colour,
                        'size': inst.size,
                        'texture': inst.texture,
                    },
                    'phrases': inst.phrases,
                    'held_out_combination': inst.held_out,
                }
            )
        for expr in scene.expressions:
            target = expr['target']
            refs.append(
                {
                    'ref_id': len(refs) + 1,
                    'ann_id': ann_ids[target],
                    'image_id': image_id,
                    'category_id': category_id[scene.instances[target].shape],
                    'split': split,
                    'sentences': [
                        {
                            'sent_id': len(refs) + 1,
                            'sent': expr['sentence'],
                            'raw': expr['sentence'],
                            'tokens': expr['sentence'].split(),
                        }
                    ],
                    'synthetic': True,
                    'held_out': expr['held_out'],
                }
            )
    info = {
        'description': 'mobius_ros synthetic open-vocabulary scenes (synthetic data)',
        'split': split,
        'seed': seed,
        'held_out_synonyms': HELD_OUT_SYNONYMS,
        'held_out_combinations': sorted(list(c) for c in HELD_OUT_COMBINATIONS),
    }
    instances_path = out / 'annotations' / f'instances_{split}.json'
    refs_path = out / 'annotations' / f'refs_{split}.json'
    coco = {'info': info, 'images': images, 'annotations': annotations}
    coco['categories'] = category_list()
    instances_path.write_text(json.dumps(coco))
    refs_path.write_text(json.dumps({'info': info, 'refs': refs}))
    return {'images': image_dir, 'instances': instances_path, 'refs': refs_path}
