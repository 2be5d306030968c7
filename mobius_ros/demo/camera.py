"""The demo's frames: synthetic test-split scenes (with ground truth) and a few real photos.

Pure numpy/OpenCV, no rclpy: the camera node in `client.py` publishes these. The photos are
scikit-image's bundled samples (`data.astronaut()`, `coffee()`, `chelsea()`), read from the
installed package, never downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mobius_ros.train.data.synthetic import (
    SHAPES,
    Scene,
    SynthConfig,
    generate_scene,
    scene_rng,
)

# What the demo asks for: the synthetic shapes (the demo model's categories).
DEMO_VOCABULARY: tuple[str, ...] = SHAPES
PHOTOS: tuple[str, ...] = ('astronaut', 'coffee', 'chelsea')
PHOTO_LONG_SIDE = 320  # keeps image messages small; the node letterboxes anyway


@dataclass(frozen=True, eq=False)
class DemoFrame:
    """One camera frame.

    Attributes:
        name: 'scene_0003' (synthetic test scene 3) or a photo's name.
        image: [H, W, 3] uint8 RGB.
        scene: the synthetic scene with its instances and expressions (None for photos).
    """

    name: str
    image: np.ndarray
    scene: Scene | None = None

    @property
    def kind(self) -> str:
        return 'synthetic' if self.scene is not None else 'photo'


def load_photo(name: str, long_side: int = PHOTO_LONG_SIDE) -> np.ndarray:
    """A scikit-image sample photo as [H, W, 3] uint8 RGB, longest side at most `long_side`."""
    from skimage import data

    if name not in PHOTOS:
        raise ValueError(f'unknown photo {name!r}; one of {PHOTOS}')
    image = np.ascontiguousarray(getattr(data, name)()[..., :3], dtype=np.uint8)
    scale = long_side / max(image.shape[:2])
    if scale < 1.0:
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


def demo_frames(
    count: int,
    *,
    image_hw: tuple[int, int] = (192, 256),
    seed: int = 0,
    photo_every: int = 4,
) -> list[DemoFrame]:
    """`count` frames: test-split scenes, with a photo every `photo_every`-th frame (1-based).

    Scenes are the generator's test split (held-out colour synonyms and combinations), so the
    demo shows what training never did. Photos cycle through `PHOTOS`.
    """
    if count < 1:
        raise ValueError(f'count must be >= 1, got {count}')
    config = SynthConfig(image_hw=image_hw, min_objects=2)
    photos: dict[str, np.ndarray] = {}
    frames: list[DemoFrame] = []
    scene_index = photo_index = 0
    for n in range(count):
        if photo_every > 0 and (n + 1) % photo_every == 0:
            name = PHOTOS[photo_index % len(PHOTOS)]
            photo_index += 1
            if name not in photos:
                photos[name] = load_photo(name)
            frames.append(DemoFrame(name, photos[name]))
            continue
        scene = generate_scene(scene_rng(seed, 'test', scene_index), split='test', config=config)
        frames.append(DemoFrame(f'scene_{scene_index:04d}', scene.image, scene))
        scene_index += 1
    return frames


def referring_query(frames: Sequence[DemoFrame], seed: int = 0) -> tuple[DemoFrame, dict]:
    """A scene and one of its referring expressions, preferring a spatial relation.

    Returns the frame and the expression record ({'target', 'sentence', 'kind', 'held_out'});
    if no frame has one, a fresh test scene is generated until one does.
    """
    ranked = {'relation': 0, 'extreme': 1, 'attribute': 2}
    best: tuple[int, DemoFrame, dict] | None = None
    for frame in frames:
        for expression in frame.scene.expressions if frame.scene is not None else ():
            rank = ranked.get(expression['kind'], 3)
            if best is None or rank < best[0]:
                best = (rank, frame, expression)
    if best is not None:
        return best[1], best[2]
    config = SynthConfig(image_hw=(192, 256), min_objects=3)
    for index in range(1000, 1100):
        scene = generate_scene(scene_rng(seed, 'test', index), split='test', config=config)
        if scene.expressions:
            return DemoFrame(f'scene_{index:04d}', scene.image, scene), scene.expressions[0]
    raise RuntimeError('no synthetic scene with a referring expression')  # pragma: no cover


def colour_phrases(scene: Scene) -> list[str]:
    """The '<colour> <shape>' phrases of a scene's instances, once each, in drawing order."""
    return list(dict.fromkeys(inst.phrases[0] for inst in scene.instances))
