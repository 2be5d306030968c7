"""The synthetic scene generator: determinism, masks, expressions, held-out splits, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mobius_ros.ops.masks import rle_decode
from mobius_ros.train.data.coco import CocoInstances
from mobius_ros.train.data.synthetic import (
    COLOURS,
    HELD_OUT_COMBINATIONS,
    HELD_OUT_SYNONYMS,
    SHAPES,
    SynthConfig,
    generate_scene,
    scene_rng,
    shape_mask,
    write_split,
)
from mobius_ros.train.data.synthetic_expressions import _matches, _relation_holds


def test_deterministic_per_image() -> None:
    a = generate_scene(scene_rng(3, 'train', 7), split='train')
    b = generate_scene(scene_rng(3, 'train', 7), split='train')
    c = generate_scene(scene_rng(3, 'train', 8), split='train')
    np.testing.assert_array_equal(a.image, b.image)
    assert [e['sentence'] for e in a.expressions] == [e['sentence'] for e in b.expressions]
    assert not np.array_equal(a.image, c.image)


def test_masks_are_visible_disjoint_and_coloured() -> None:
    for i in range(20):
        scene = generate_scene(scene_rng(0, 'val', i), split='val')
        masks = np.stack([inst.mask for inst in scene.instances])
        assert masks.sum(0).max() <= 1  # occlusion: visible parts never overlap
        for inst in scene.instances:
            assert inst.area >= 16 and inst.area == inst.mask.sum()
            # solid pixels have the named colour (within the jitter); textures darken some
            pixels = scene.image[inst.mask].astype(int)
            distance = np.abs(pixels - np.array(COLOURS[inst.colour])).max(1)
            assert (distance <= 13).mean() > 0.4


def test_shape_mask_known_area() -> None:
    circle = shape_mask('circle', (32, 32), 10, 0.0, (64, 64))
    assert abs(circle.sum() - np.pi * 100) < 0.1 * np.pi * 100
    ring = shape_mask('ring', (32, 32), 10, 0.0, (64, 64))
    assert not ring[32, 32] and ring.sum() < circle.sum()
    for shape in SHAPES:
        assert shape_mask(shape, (32, 32), 12, 0.3, (64, 64)).sum() > 50


def test_expressions_pick_exactly_one_instance() -> None:
    for i in range(40):
        scene = generate_scene(scene_rng(1, 'train', i), split='train')
        for expr in scene.expressions:
            words = expr['sentence'].split()
            target = scene.instances[expr['target']]
            assert target.shape in words
            assert expr['held_out'] == []  # never outside the test split
            if expr['kind'] == 'relation':
                relation = next(
                    r
                    for r in ('left of', 'right of', 'above', 'below')
                    if f' {r} ' in expr['sentence']
                )
                anchors = [
                    inst
                    for inst in scene.instances
                    if inst is not target and _relation_holds(target, inst, relation, 0.05 * 128)
                ]
                assert anchors
            if expr['kind'] == 'attribute' and len(words) == 2:
                d = (None, None, words[1])
                assert sum(_matches(inst, d) for inst in scene.instances) == 1


def test_held_out_only_in_test_split() -> None:
    seen = set()
    for i in range(150):
        for inst in generate_scene(scene_rng(0, 'train', i), split='train').instances:
            seen.add((inst.colour, inst.shape))
    assert not seen & HELD_OUT_COMBINATIONS
    flags, synonyms = set(), 0
    for i in range(150):
        scene = generate_scene(scene_rng(0, 'test', i), split='test')
        for expr in scene.expressions:
            flags.update(expr['held_out'])
            synonyms += any(s in expr['sentence'] for s in HELD_OUT_SYNONYMS.values())
        for inst in scene.instances:
            assert inst.held_out == ((inst.colour, inst.shape) in HELD_OUT_COMBINATIONS)
    assert flags == {'synonym', 'combination'} and synonyms > 0


def test_write_split_is_coco_and_loads(tmp_path: Path) -> None:
    paths = write_split(tmp_path, split='test', num=6, image_hw=(64, 96), seed=0)
    coco = json.loads(paths['instances'].read_text())
    refs = json.loads(paths['refs'].read_text())['refs']
    assert len(coco['images']) == 6 and coco['images'][0]['width'] == 96
    assert all(r['synthetic'] for r in refs)
    ann = coco['annotations'][0]
    assert rle_decode(ann['segmentation']).sum() == ann['area']
    assert ann['phrases'][0] == f'{ann["attributes"]["colour"]} {SHAPES[ann["category_id"] - 1]}'
    ds = CocoInstances(paths['instances'], paths['images'])
    sample = ds[0]
    assert sample.image.shape == (64, 96, 3) and ds.phrases == SHAPES
    # rewriting with the same seed gives the same bytes
    again = write_split(tmp_path / 'again', split='test', num=6, image_hw=(64, 96), seed=0)
    assert again['instances'].read_text() == paths['instances'].read_text()


def test_generation_is_fast() -> None:
    config = SynthConfig(image_hw=(128, 128))
    start = time.perf_counter()
    for i in range(50):
        generate_scene(scene_rng(0, 'train', i), split='train', config=config)
    per_image_ms = (time.perf_counter() - start) / 50 * 1000
    assert per_image_ms < 20  # ~2-3 ms here; generous for a loaded CI machine


def test_synth_command(tmp_path: Path) -> None:
    from mobius_ros.cli import main

    code = main(['synth', '--out', str(tmp_path), '--split', 'val', '--num', '3', '--size', '64'])
    assert code == 0
    coco = json.loads((tmp_path / 'annotations' / 'instances_val.json').read_text())
    assert len(coco['images']) == 3 and (tmp_path / 'images' / 'val' / '000003.png').exists()


def test_relation_expressions_are_unique_in_the_loose_reading_too() -> None:
    """'the star right of the triangle' must not fit a second star that is right of and well
    below the triangle: a reader (and a model) takes that one as right of it too."""
    for i in range(40):
        scene = generate_scene(scene_rng(0, 'test', i), split='test')
        for expr in scene.expressions:
            if expr['kind'] != 'relation':
                continue
            sentence = expr['sentence']
            relations = ('left of', 'right of', 'above', 'below')
            relation = next(r for r in relations if f' {r} ' in sentence)
            target_text, anchor_text = expr['sentence'].split(f' {relation} ')
            shape = target_text.split()[-1]
            anchor_shape = anchor_text.split()[-1]
            target = scene.instances[expr['target']]
            anchors = [
                a for a in scene.instances
                if a.shape == anchor_shape and a is not target
                and _relation_holds(target, a, relation, 0.05 * 256)
            ]  # fmt: skip
            assert anchors, expr
            for anchor in anchors:
                rivals = [
                    inst for inst in scene.instances
                    if inst is not target and inst is not anchor and inst.shape == shape
                    and all(w in inst.phrases[-1].split() for w in target_text.split()[1:-1])
                    and _relation_holds(inst, anchor, relation, 0.05 * 256, dominant=False)
                ]  # fmt: skip
                assert not rivals, (expr, [r.phrases for r in rivals])


def test_hsv_colour_sampling_stays_inside_each_name() -> None:
    import colorsys

    from mobius_ros.train.data.synthetic import COLOUR_REGIONS, hue_in

    config = SynthConfig(image_hw=(96, 96), colour_sampling='hsv')
    seen: dict[str, set[tuple[int, int, int]]] = {}
    for index in range(60):
        scene = generate_scene(scene_rng(3, 'train', index), split='train', config=config)
        for inst in scene.instances:
            if inst.texture != 'solid' or not inst.mask.any():
                continue
            rgb = scene.image[inst.mask][0]
            assert (scene.image[inst.mask] == rgb).all()
            h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
            (band, (s_lo, s_hi), (v_lo, v_hi)) = COLOUR_REGIONS[inst.colour]
            assert hue_in(h * 360.0, (band[0] - 1.5, band[1] + 1.5)), (inst.colour, h * 360)
            assert s_lo - 0.03 <= s <= s_hi + 0.03 and v_lo - 0.01 <= v <= v_hi + 0.01
            # and no other name claims it
            others = [n for n, r in COLOUR_REGIONS.items() if n != inst.colour]
            assert not any(hue_in(h * 360.0, COLOUR_REGIONS[n][0]) for n in others)
            seen.setdefault(inst.colour, set()).add(tuple(int(c) for c in rgb))
    assert len(seen) >= 6 and all(len(values) > 1 for values in seen.values())


def test_colour_sampling_rejects_unknown_mode() -> None:
    import pytest

    with pytest.raises(ValueError, match='colour_sampling'):
        SynthConfig(colour_sampling='rainbow')


def test_photo_backgrounds_are_crops_of_the_given_files(tmp_path: Path) -> None:
    import cv2
    import pytest

    photo = np.zeros((200, 300, 3), np.uint8)
    photo[:, :150] = (0, 0, 255)  # BGR red left half, blue right half
    photo[:, 150:] = (255, 0, 0)
    cv2.imwrite(str(tmp_path / 'p.png'), photo)
    config = SynthConfig(
        image_hw=(64, 64), background_photos=(str(tmp_path / 'p.png'),), photo_probability=1.0
    )
    kinds = set()
    for index in range(10):
        scene = generate_scene(scene_rng(0, 'train', index), split='train', config=config)
        assert scene.background == 'photo'
        free = ~np.any([inst.mask for inst in scene.instances], axis=0)
        pixels = scene.image[free]
        # background pixels come from the photo: pure red or pure blue (or their blend at the seam)
        assert (pixels[:, 1] == 0).all()
        kinds.add((pixels[:, 0] > 128).mean().round(1))
    assert len(kinds) > 1  # crops differ
    with pytest.raises(ValueError, match='cannot be read'):
        bad = SynthConfig(
            background_photos=(str(tmp_path / 'missing.png'),), photo_probability=1.0
        )
        generate_scene(scene_rng(0, 'train', 0), split='train', config=bad)


def _scene_digest(config: SynthConfig, split: str, count: int = 6) -> str:
    import hashlib

    digest = hashlib.sha256()
    for i in range(count):
        scene = generate_scene(scene_rng(0, split, i), split=split, config=config)
        digest.update(scene.image.tobytes())
        for inst in scene.instances:
            digest.update(inst.mask.tobytes())
            key = (inst.shape, inst.colour, inst.size, inst.texture, inst.box_xyxy)
            digest.update(repr(key).encode())
        digest.update(repr([(e['sentence'], e['target']) for e in scene.expressions]).encode())
    return digest.hexdigest()


def test_default_scenes_are_unchanged_by_the_randomisation_options() -> None:
    # digests computed before the randomisation options existed
    expected = {
        ((128, 128), 'train'): '7d9acb790fa4882ab0d561157d8c0155b760cd752619924ecc712448ee8e49fb',
        ((128, 128), 'test'): '796fb865f239617cb5f0c700095da056962ae42e59ad9448574b3a945d445a68',
        ((160, 160), 'train'): '6d35d99a0f9322716aa9b535aa3c7421e1d11be0feea4b440f382c04da7fdb37',
        ((160, 160), 'test'): '91dfe3ff2ff4acdd17a312790757a3134e4cbbfa9202919552437870478729fe',
    }
    for (hw, split), digest in expected.items():
        assert _scene_digest(SynthConfig(image_hw=hw), split) == digest, (hw, split)
    assert SynthConfig().classic and not SynthConfig.randomised().classic
