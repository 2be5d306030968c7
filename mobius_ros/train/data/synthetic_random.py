"""Domain-randomised synthetic scenes: the same vocabulary drawn along many more axes.

Used by `generate_scene` whenever a `SynthConfig` turns on any randomisation axis (see
`SynthConfig.randomised`). Geometry: any size in the configured radius bands, aspect stretch,
any rotation, filleted corners, outlines, truncation at the border. Edges: hard, or
anti-aliased by 2-4x supersampling, where a pixel blends by its coverage and the mask is the
binary silhouette at 50 % coverage. Fills: the existing textures plus brightness/saturation
gradients inside the colour's HSV region. Image: lighting (gamma, brightness, white balance),
noise, blur and JPEG.

Colour names stay true under lighting: the lighting transform L is drawn first and each object
is painted with L^-1(target), so after L the object shows the target colour; a target whose
inverse clips (and so would leave its name's region after L) is redrawn. Noise, blur and JPEG
are zero-mean and local: on a solid patch the median colour stays within its name's region
widened by 4 degrees of hue and 0.06 of saturation/value, less than the gaps between names.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from mobius_ros.train.data.synthetic import (
    COLOUR_REGIONS,
    COLOURS,
    SIZES,
    TEXTURES,
    Instance,
    Scene,
    SynthConfig,
    _polygon,
    _sample_attributes,
    hue_in,
    sample_colour,
    scene_background,
)

_SHIFT = 4  # fractional bits of polygon vertices (sub-pixel geometry)


class _Lighting:
    """out = 255 * gain_c * (in / 255) ** gamma per channel (identity when off)."""

    def __init__(self, rng: np.random.Generator, on: bool) -> None:
        if on:
            self.gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
            balance = rng.uniform(-0.08, 0.08, 3)
            self.gain = (rng.uniform(0.8, 1.1) * (1.0 + balance - balance.mean())).astype(
                np.float32
            )
        else:
            self.gamma, self.gain = 1.0, np.ones(3, np.float32)
        self.on = on

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        if not self.on:
            return rgb
        x = (np.asarray(rgb, np.float32) / 255.0) ** self.gamma * self.gain
        return np.clip(x * 255.0, 0, 255)

    def invert(self, rgb: np.ndarray) -> np.ndarray:
        if not self.on:
            return np.asarray(rgb, np.float32)
        x = np.clip(np.asarray(rgb, np.float32) / 255.0 / self.gain, 0, 1) ** (1.0 / self.gamma)
        return x * 255.0


def in_region(
    rgb: np.ndarray, name: str, *, hue_margin: float = 0.0, sv_margin: float = 0.0
) -> bool:
    """Whether an RGB colour (0-255) lies in `COLOUR_REGIONS[name]`, optionally widened."""
    (lo, hi), (s_lo, s_hi), (v_lo, v_hi) = COLOUR_REGIONS[name]
    r, g, b = (float(v) / 255.0 for v in rgb)
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    return (
        hue_in(hue * 360.0, ((lo - hue_margin) % 360.0, (hi + hue_margin) % 360.0))
        and s_lo - sv_margin <= sat <= s_hi + sv_margin
        and v_lo - sv_margin <= val <= v_hi + sv_margin
    )


def _target(rng: np.random.Generator, name: str, config: SynthConfig) -> np.ndarray:
    """A colour for `name` as it should appear in the final image."""
    if config.colour_sampling == 'hsv':
        return np.asarray(sample_colour(rng, name), np.float32)
    base = np.asarray(COLOURS[name], np.float32)
    return np.clip(base + rng.uniform(-12.0, 12.0, 3), 0, 255)


def _paintable(
    rng: np.random.Generator, name: str, config: SynthConfig, light: _Lighting
) -> np.ndarray:
    """A target colour whose inverse under the lighting does not clip (redrawn up to 20x)."""
    for _ in range(20):
        target = _target(rng, name, config)
        painted = np.clip(light.invert(target), 0, 255)
        shown = light.apply(painted)
        if not light.on or np.abs(shown - target).max() < 1.5:
            return target
    return _target(rng, name, config) if not light.on else light.apply(light.invert(target))


def _fillet(pts: np.ndarray, fraction: float) -> np.ndarray:
    """Round every vertex of a closed polygon: a quadratic arc from `fraction` along each edge."""
    out = []
    t = np.linspace(0.0, 1.0, 6)[:, None]
    for i, v in enumerate(pts):
        a = v + fraction * (pts[i - 1] - v)
        b = v + fraction * (pts[(i + 1) % len(pts)] - v)
        out.append((1 - t) ** 2 * a + 2 * (1 - t) * t * v + t**2 * b)
    return np.concatenate(out)


def _outline_polys(
    rng: np.random.Generator, shape: str, r: float, angle: float, config: SynthConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """(outer polygon, hole polygon or None), centred on the origin, in pixels."""
    if shape in ('circle', 'ring'):
        n = int(np.clip(r, 32, 128))
        t = np.arange(n) * 2 * np.pi / n
        outer = np.stack([np.cos(t), np.sin(t)], 1) * r
    else:
        outer = _polygon(shape, r, 0.0)
        if rng.random() < config.rounding_probability:
            outer = _fillet(outer, rng.uniform(0.15, 0.4))
    hole = 0.55 * outer if shape == 'ring' else None
    # a circle's outline would be a ring: circles and rings stay filled
    if hole is None and shape != 'circle' and rng.random() < config.outline_probability:
        hole = rng.uniform(0.5, 0.75) * outer
    if config.aspect_max > 1.0:
        stretch = float(np.exp(rng.uniform(-np.log(config.aspect_max), np.log(config.aspect_max))))
        scale = np.array([np.sqrt(stretch), 1 / np.sqrt(stretch)])
        outer = outer * scale
        hole = None if hole is None else hole * scale
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    return outer @ rot, None if hole is None else hole @ rot


def render_coverage(
    outer: np.ndarray, hole: np.ndarray | None, *, supersample: int
) -> tuple[int, int, np.ndarray]:
    """Coverage in [0, 1] of a polygon (minus a hole) in image coordinates, on its own box.

    Returns (x0, y0, coverage [h, w] float32); the box may extend past the image.
    """
    x0, y0 = np.floor(outer.min(0)).astype(int) - 1
    x1, y1 = np.ceil(outer.max(0)).astype(int) + 1
    ss = supersample
    canvas = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), np.uint8)

    def fixed(pts: np.ndarray) -> np.ndarray:
        # pixel centres at +0.5 in the supersampled grid
        local = (pts - np.array([x0, y0])) * ss - 0.5
        return np.round(local * (1 << _SHIFT)).astype(np.int32)

    cv2.fillPoly(canvas, [fixed(outer)], 255, cv2.LINE_8, _SHIFT)
    if hole is not None:
        cv2.fillPoly(canvas, [fixed(hole)], 0, cv2.LINE_8, _SHIFT)
    if ss > 1:
        canvas = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return int(x0), int(y0), canvas.astype(np.float32) / 255.0


def _fill(
    rng: np.random.Generator,
    box: tuple[int, int, int, int],
    *,
    name: str,
    texture: str,
    config: SynthConfig,
    light: _Lighting,
) -> np.ndarray:
    """The colours to paint over a box [h, w, 3] float32 (pre-lighting)."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    target = _paintable(rng, name, config, light)
    fill = np.broadcast_to(target, (h, w, 3)).astype(np.float32)
    if config.colour_sampling == 'hsv' and rng.random() < config.shading_probability:
        # a linear ramp of value and saturation, both ends inside the name's region
        _, (s_lo, s_hi), (v_lo, v_hi) = COLOUR_REGIONS[name]
        other = None
        for _ in range(10):
            hue = colorsys.rgb_to_hsv(*(target / 255.0))[0]
            cand = colorsys.hsv_to_rgb(hue, rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi))
            cand = np.asarray(cand, np.float32) * 255.0
            if np.abs(light.apply(np.clip(light.invert(cand), 0, 255)) - cand).max() < 1.5:
                other = cand
                break
        if other is not None:
            hsv = cv2.cvtColor(np.stack([target, other])[None] / 255.0, cv2.COLOR_RGB2HSV)[0]
            angle = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            proj = xx * np.cos(angle) + yy * np.sin(angle)
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
            ramp = np.empty((h, w, 3), np.float32)
            ramp[..., 0] = hsv[0, 0]
            ramp[..., 1] = hsv[0, 1] + (hsv[1, 1] - hsv[0, 1]) * t
            ramp[..., 2] = hsv[0, 2] + (hsv[1, 2] - hsv[0, 2]) * t
            fill = cv2.cvtColor(ramp, cv2.COLOR_HSV2RGB) * 255.0
    if texture != 'solid':
        yy, xx = np.mgrid[y0:y1, x0:x1]
        scale = max(1.0, min(config.image_hw) / 160.0)
        if texture == 'striped':
            angle = rng.uniform(0, np.pi)
            period = rng.uniform(4, 8) * scale
            on = ((xx * np.cos(angle) + yy * np.sin(angle)) // (period / 2)) % 2 == 0
        else:
            period = rng.uniform(5, 8) * scale
            on = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (
                period / 4
            ) ** 2
        fill = np.where(on[..., None], fill * 0.55, fill)
    return light.invert(fill)


def _degrade(rng: np.random.Generator, image: np.ndarray, config: SynthConfig) -> np.ndarray:
    """Noise, blur and JPEG on the final image (RGB uint8)."""
    if config.blur_probability and rng.random() < config.blur_probability:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.2))
    if config.noise_max:
        sigma = rng.uniform(0.0, config.noise_max)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if config.jpeg_probability and rng.random() < config.jpeg_probability:
        quality = int(rng.integers(40, 91))
        ok, data = cv2.imencode('.jpg', image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            image = np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
    return image


def generate_randomised_scene(
    rng: np.random.Generator, *, split: str, config: SynthConfig
) -> Scene:
    """Like `generate_scene`, along every axis `config` turns on."""
    from mobius_ros.train.data.synthetic_expressions import referring_expressions

    h, w = config.image_hw
    short = min(h, w)
    # appearance (colours, fills, lighting, degradations) draws from its own stream, so the
    # photometric axes never move the geometry of a scene
    look = np.random.default_rng(rng.integers(2**63))
    light = _Lighting(look, config.lighting)
    background, image = scene_background(rng, config)
    canvas = image.astype(np.float32)  # relit at the end with the objects
    bands = {'small': config.radius_small, 'large': config.radius_large}
    instances: list[Instance] = []
    full_areas: list[int] = []
    for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1))):
        shape, colour, held_out = _sample_attributes(rng, split, config)
        size = SIZES[int(rng.integers(len(SIZES)))]
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        antialias = rng.random() < config.antialias_probability
        placed = None
        for _attempt in range(10):
            r = rng.uniform(*bands[size]) * short
            if rng.random() < config.truncation_probability:
                margin = -0.45 * r  # up to 45 % of the radius past the border
            else:
                margin = r * min(1.0, config.aspect_max)
            lo_x, hi_x = min(margin, w / 2), max(w - margin, w / 2)
            lo_y, hi_y = min(margin, h / 2), max(h - margin, h / 2)
            centre = np.array([rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)])
            if shape == 'square' and not config.free_rotation:
                angle = rng.uniform(-0.26, 0.26)
            else:
                angle = rng.uniform(0, 2 * np.pi)
            outer, hole = _outline_polys(rng, shape, r, angle, config)
            side = float(np.ptp(outer, 0).max())
            ss = 1 if not antialias else int(np.clip(512 // max(side, 1.0), 2, 4))
            x0, y0, cover = render_coverage(
                outer + centre, None if hole is None else hole + centre, supersample=ss
            )
            full = int(np.count_nonzero(cover >= 0.5))
            # clip the box to the image
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x0 + cover.shape[1], w), min(y0 + cover.shape[0], h)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            cover = cover[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            local = cover >= 0.5
            mask = np.zeros((h, w), bool)
            mask[cy0:cy1, cx0:cx1] = local
            visible = int(np.count_nonzero(local))
            ok = (
                visible >= 16
                and visible >= config.min_visible * max(full, 1)
                and all(
                    (inst.mask & ~mask).sum() >= config.min_visible * full_area
                    for inst, full_area in zip(instances, full_areas)
                )
            )
            if ok:
                placed = (cx0, cy0, cx1, cy1, cover, mask, full, visible < full)
                break
        if placed is None:
            continue
        cx0, cy0, cx1, cy1, cover, mask, full, truncated = placed
        fill = _fill(
            look, (cx0, cy0, cx1, cy1), name=colour, texture=texture, config=config, light=light
        )
        alpha = (cover if antialias else (cover >= 0.5).astype(np.float32))[..., None]
        region = canvas[cy0:cy1, cx0:cx1]
        canvas[cy0:cy1, cx0:cx1] = region * (1 - alpha) + fill * alpha
        for inst in instances:
            inst.mask &= ~mask
        instances.append(
            Instance(shape, colour, size, texture, mask, held_out, truncated=truncated)
        )
        full_areas.append(full)
    image = np.clip(np.round(light.apply(canvas)), 0, 255).astype(np.uint8)
    image = _degrade(look, image, config)
    for inst in instances:
        inst.finalise()
    scene = Scene(image=image, instances=instances, background=background)
    scene.expressions = referring_expressions(rng, scene.instances, split=split, config=config)
    return scene
