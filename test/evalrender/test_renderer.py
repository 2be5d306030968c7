"""The independent evaluation renderer: masks, expressions, determinism, COCO output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobius_ros.evalrender import COLOURS, SHAPES, render_scene
from mobius_ros.evalrender.coco import write_set
from mobius_ros.evalrender.draw import SHADES, coverage, outline
from mobius_ros.evalrender.expressions import EXTREMES, resolve


def test_coverage_of_an_axis_aligned_square_is_exact():
    # square of side 20 with corners on pixel edges: 400 full pixels, nothing else
    ring = [(10, 10), (30, 10), (30, 30), (10, 30)]
    cov = coverage([ring], 40, 40)
    assert cov[10:30, 10:30].min() > 0.9
    assert cov.sum() == pytest.approx(400, rel=0.06)
    assert cov[:9].max() == 0 and cov[31:].max() == 0


def test_ring_has_a_hole():
    cov = coverage(outline('ring', 32, 32, 20, 0.0), 64, 64)
    assert cov[32, 32] == 0 and cov[32, 32 + 16] == 1


def _nearest_colour(rgb: np.ndarray) -> str:
    best = min(
        (
            (np.abs(np.asarray(s, float) / max(s) - rgb / rgb.max()).sum(), name)
            for name, shades in SHADES.items()
            for s in shades
        )
    )
    return best[1]


def test_masks_cover_the_pixels_drawn_in_the_instance_colour():
    hits = total = 0
    for index in range(15):
        scene = render_scene(1, index, 160)
        for inst in scene.instances:
            core = inst.mask
            rgb = np.median(scene.image[core].astype(float), axis=0) + 1
            hits += _nearest_colour(rgb) == inst.colour
            total += 1
        masks = np.stack([i.mask for i in scene.instances])
        assert masks.sum(0).max() <= 1  # the 50 % rule gives each pixel to one shape at most
    assert total > 30 and hits / total > 0.9


def test_boxes_bound_the_masks():
    for inst in render_scene(0, 0, 96).instances:
        ys, xs = np.nonzero(inst.mask)
        assert inst.box_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_every_expression_names_exactly_its_target():
    kinds = {'attribute': 0, 'extreme': 0, 'relation': 0}
    for index in range(30):
        scene = render_scene(0, index, 160)
        for expr in scene.expressions:
            assert resolve(expr['sentence'], scene.instances, 160) == [expr['target']], expr
            kinds[expr['kind']] += 1
            assert all(
                w in ('the', 'left', 'right', 'of', 'above', 'below', 'small', 'large')
                or w in SHAPES
                or w in COLOURS
                or w in EXTREMES
                for w in expr['sentence'].split()
            )
    assert min(kinds.values()) >= 10, kinds


def test_resolve_rejects_ambiguous_sentences():
    scene = next(
        s
        for s in (render_scene(0, i, 160) for i in range(50))
        if len({x.shape for x in s.instances}) < len(s.instances)
    )
    shapes = [x.shape for x in scene.instances]
    twice = next(s for s in shapes if shapes.count(s) > 1)
    assert len(resolve(f'the {twice}', scene.instances, 160)) == shapes.count(twice)


def test_scenes_are_a_pure_function_of_seed_index_size():
    a, b = render_scene(3, 7, 128), render_scene(3, 7, 128)
    assert np.array_equal(a.image, b.image) and a.expressions == b.expressions
    assert not np.array_equal(a.image, render_scene(4, 7, 128).image)
    assert not np.array_equal(a.image, render_scene(3, 8, 128).image)


def test_coco_files_load_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    paths = write_set(tmp_path, num=4, size=96, seed=2)
    coco = COCO(str(paths['annotations']))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES)
    for image_id in coco.getImgIds():
        scene = render_scene(2, image_id - 1, 96)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) == len(scene.instances)
        for ann, inst in zip(anns, scene.instances):
            assert np.array_equal(coco.annToMask(ann).astype(bool), inst.mask)
    referring = json.loads(paths['referring'].read_text())
    assert referring and all(r['ann_id'] in coco.anns for r in referring)
    assert len(list(paths['images'].glob('*.png'))) == 4


def test_backgrounds_are_grey_half_the_time() -> None:
    import numpy as np

    from mobius_ros.evalrender.scene import background

    grey = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        image = background(rng, 32)
        # the base is grey when its channels agree everywhere up to the pattern (flat and
        # stripes keep them equal; gradients and noise add other colours on top)
        grey += bool(np.ptp(image[0, 0]) < 1e-3)
    assert 40 <= grey <= 160, grey  # flat / stripes on a grey base: about a quarter
