"""Domain-randomised synthetic scenes: each axis does what it says, names stay true."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from mobius_ros.train.data.collate import collate
from mobius_ros.train.data.synthetic import (
    COLOUR_REGIONS,
    SynthConfig,
    generate_scene,
    scene_rng,
)
from mobius_ros.train.data.synthetic_random import in_region, render_coverage

OFF = SynthConfig(image_hw=(160, 160), colour_sampling='hsv', radius_large=(0.15, 0.23))


def _scenes(config: SynthConfig, n: int = 30, split: str = 'train'):
    return [generate_scene(scene_rng(3, split, i), split=split, config=config) for i in range(n)]


def test_antialiased_edges_blend_and_the_mask_is_the_half_coverage_silhouette() -> None:
    square = np.array([[10.3, 10.3], [30.7, 10.3], [30.7, 30.7], [10.3, 30.7]])
    x0, y0, cover = render_coverage(square, None, supersample=4)
    soft = (cover > 0.05) & (cover < 0.95)
    assert soft.any()  # edge pixels are partial
    # the 50 % silhouette of an axis-aligned square from 10.3 to 30.7 covers pixels 10..30
    mask = np.zeros((48, 48), bool)
    mask[y0 : y0 + cover.shape[0], x0 : x0 + cover.shape[1]] = cover >= 0.5
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 30, 10, 30)
    # in scenes: anti-aliasing changes pixels only at object edges, and some there
    soft_cfg = dataclasses.replace(OFF, antialias_probability=1.0)
    hard_cfg = dataclasses.replace(OFF, antialias_probability=0.0)
    at_edges = 0
    for i in range(8):
        soft_scene = generate_scene(scene_rng(5, 'train', i), split='train', config=soft_cfg)
        hard_scene = generate_scene(scene_rng(5, 'train', i), split='train', config=hard_cfg)
        edges = np.zeros(soft_scene.image.shape[:2], bool)
        for inst in soft_scene.instances + hard_scene.instances:
            m = inst.mask.astype(np.uint8)
            kernel = np.ones((5, 5), np.uint8)
            edges |= (cv2.dilate(m, kernel) > 0) & ~(cv2.erode(m, kernel) > 0)
        diff = np.abs(soft_scene.image.astype(int) - hard_scene.image.astype(int)).max(-1) > 0
        assert not (diff & ~edges).any()
        at_edges += int((diff & edges).sum())
    assert at_edges > 50


def test_masks_and_truncation_touch_the_border() -> None:
    config = dataclasses.replace(OFF, truncation_probability=1.0, min_visible=0.3)
    truncated = 0
    for scene in _scenes(config, 20):
        h, w = scene.image.shape[:2]
        for inst in scene.instances:
            if inst.truncated:
                truncated += 1
                m = inst.mask
                assert m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
            x1, y1, x2, y2 = inst.box_xyxy
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert truncated >= 5
    assert not any(i.truncated for s in _scenes(OFF, 10) for i in s.instances)


def test_sizes_follow_the_radius_bands_and_expressions_use_them() -> None:
    config = dataclasses.replace(
        OFF, image_hw=(320, 320), radius_small=(0.04, 0.08), radius_large=(0.25, 0.35)
    )
    sized = 0
    for scene in _scenes(config, 20):
        for inst in scene.instances:
            x1, y1, x2, y2 = inst.box_xyxy
            extent = max(x2 - x1, y2 - y1) / 320
            if inst.size == 'small':
                assert extent <= 2 * 0.08 + 0.01
        for expr in scene.expressions:
            words = expr['sentence'].split()
            if expr['kind'] == 'attribute' and ('small' in words or 'large' in words):
                said = 'small' if 'small' in words else 'large'
                assert scene.instances[expr['target']].size == said
                sized += 1
    assert sized >= 5
    with pytest.raises(ValueError, match='radius_small'):
        SynthConfig(radius_small=(0.1, 0.2), radius_large=(0.15, 0.3))


def test_geometry_axes_change_the_silhouette() -> None:
    base = dataclasses.replace(OFF, min_objects=1, max_objects=1)
    areas = {}
    for name, changes in {
        'plain': {},
        'outline': {'outline_probability': 1.0},
        'aspect': {'aspect_max': 2.5},
    }.items():
        config = dataclasses.replace(base, **changes)
        ratios = []
        for scene in _scenes(config, 30):
            inst = scene.instances[0]
            x1, y1, x2, y2 = inst.box_xyxy
            ratios.append((inst.area / max((x2 - x1) * (y2 - y1), 1), (x2 - x1) / (y2 - y1)))
        areas[name] = np.asarray(ratios)
    # outlines fill less of their box; stretched shapes have more extreme box aspect ratios
    assert areas['outline'][:, 0].mean() < areas['plain'][:, 0].mean() - 0.1
    spread = lambda a: np.abs(np.log(a[:, 1])).mean()  # noqa: E731
    assert spread(areas['aspect']) > spread(areas['plain']) + 0.1


def _interior_median(scene, inst) -> np.ndarray:
    core = cv2.erode(inst.mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return np.median(scene.image[core], axis=0) if core.sum() >= 20 else None


def test_degraded_images_keep_named_colours() -> None:
    config = dataclasses.replace(
        SynthConfig.randomised((160, 160)), shading_probability=0.0, outline_probability=0.0
    )
    checked = 0
    for scene in _scenes(config, 40):
        for inst in scene.instances:
            if inst.texture != 'solid':
                continue
            median = _interior_median(scene, inst)
            if median is None:
                continue
            checked += 1
            assert in_region(median, inst.colour, hue_margin=4.0, sv_margin=0.06), (
                inst.colour,
                median,
            )
            others = [n for n in COLOUR_REGIONS if n != inst.colour]
            assert not any(in_region(median, n, hue_margin=4.0, sv_margin=0.06) for n in others)
    assert checked >= 20


def test_lighting_and_degradations_change_the_image_not_the_masks() -> None:
    plain = OFF
    degraded = dataclasses.replace(
        OFF, noise_max=6.0, blur_probability=1.0, jpeg_probability=1.0, lighting=True
    )
    a = generate_scene(scene_rng(0, 'train', 1), split='train', config=plain)
    b = generate_scene(scene_rng(0, 'train', 1), split='train', config=degraded)
    assert [i.shape for i in a.instances] == [i.shape for i in b.instances]
    assert all((x.mask == y.mask).all() for x, y in zip(a.instances, b.instances))
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() > 1.0


def test_mixed_size_batches_collate_with_correct_masks() -> None:
    from mobius_ros.train.build_data import SyntheticScenes
    from mobius_ros.train.data.transforms import ToTensor

    to_tensor = ToTensor()
    data = SyntheticScenes(
        task='vocabulary',
        config=SynthConfig.randomised((160, 160)),
        sizes=(96, 160, 224),
        transform=lambda s, rng: to_tensor(s, rng),
    )
    samples = [data[i] for i in range(12)]
    sides = {s.image_hw for s in samples}
    assert len(sides) > 1 and all(h == w and h in (96, 160, 224) for h, w in sides)
    batch = collate(samples)
    H, W = batch.images.shape[-2:]
    assert H % 32 == 0 and H >= 224
    for s, target, (h, w) in zip(samples, batch.targets, batch.image_sizes):
        assert (h, w) == s.image_hw
        masks = target['masks']
        assert torch.equal(masks[:, :h, :w], torch.from_numpy(s.masks))
        assert not masks[:, h:, :].any() and not masks[:, :, w:].any()
        # normalised boxes scale back to each mask's own extent in the padded frame
        cx, _, bw, _ = (target['boxes'] * torch.tensor([W, H, W, H])).unbind(-1)
        for k, m in enumerate(s.masks):
            xs = np.nonzero(m)[1]
            assert abs(float(cx[k] - bw[k] / 2) - xs.min()) < 1e-3
            assert abs(float(cx[k] + bw[k] / 2) - (xs.max() + 1)) < 1e-3
    grouped = SyntheticScenes(task='vocabulary', sizes=(96, 160, 224), size_group=4)
    for g in range(3):
        assert len({grouped[4 * g + b].image_hw for b in range(4)}) == 1


def test_synth_command_randomised_mixed_sizes(tmp_path) -> None:
    import json

    from mobius_ros.cli import main
    from mobius_ros.ops.masks import rle_decode

    args = ['synth', '--out', str(tmp_path), '--split', 'train', '--num', '6', '--randomised']
    assert main([*args, '--sizes', '64', '96', '--size-weights', '1', '1']) == 0
    coco = json.loads((tmp_path / 'annotations' / 'instances_train.json').read_text())
    sizes = {(im['height'], im['width']) for im in coco['images']}
    assert sizes <= {(64, 64), (96, 96)} and len(sizes) == 2
    by_id = {im['id']: im for im in coco['images']}
    for ann in coco['annotations']:
        im = by_id[ann['image_id']]
        assert rle_decode(ann['segmentation']).shape == (im['height'], im['width'])
    assert main([*args, '--sizes', '64', '--size-weights', '1', '2']) == 2


def test_randomised_study_recipe_draws_native_sizes_per_batch(tmp_path) -> None:
    from pathlib import Path

    from mobius_ros.train.build_data import build_batches, synth_config
    from mobius_ros.train.recipes import RECIPES, SynthSpec, load_recipe

    study = load_recipe(str(Path(__file__).parents[2] / 'configs/studies/demo_randomised.yaml'))
    assert study.synth.domain == 'randomised' and study.synth.sizes[0] == 160
    demo = RECIPES['demo']
    same = study.replace(
        synth=SynthSpec(), name='demo', max_long_side=160, iterations=demo.iterations
    )
    assert same.replace(optim=demo.optim) == demo  # only the keys the file names differ
    photos = tmp_path / 'coco128' / 'train2017'
    photos.mkdir(parents=True)
    cv2.imwrite(str(photos / 'a.jpg'), np.full((80, 120, 3), 128, np.uint8))
    rooted = study.with_data_root(tmp_path)
    assert rooted.synth.background_photos == str(photos)
    assert synth_config(rooted).background_photos == (str(photos / 'a.jpg'),)
    small = rooted.replace(
        batch_size=2, synth=dataclasses.replace(rooted.synth, sizes=(64, 96), size_weights=())
    )
    stream = build_batches(small)
    shapes = set()
    for _ in range(6):
        batch = next(stream)
        assert len(set(batch.image_sizes)) == 1  # one size per batch
        shapes.add(batch.image_sizes[0])
    assert shapes == {(64, 64), (96, 96)}
    with pytest.raises(FileNotFoundError, match='never downloaded'):
        synth_config(study.with_data_root(tmp_path / 'nowhere'))
    with pytest.raises(ValueError, match=r'synth\.domain'):
        SynthSpec(domain='wild')


def test_eval_set_of_the_randomised_preset_is_its_own_split() -> None:
    """`mobius eval --renderer randomised`: the test split drawn by the preset, with ground truth
    that is the preset's scenes (not the default generator's)."""
    from mobius_ros.ops.image import normalize_image
    from mobius_ros.train.data.synthetic import SynthConfig, generate_scene, scene_rng
    from mobius_ros.train.eval_sets import synthetic_eval_set

    default = synthetic_eval_set(num_images=3, size=96)
    randomised = synthetic_eval_set(num_images=3, size=96, randomised=True)
    for index in range(3):
        scene = generate_scene(
            scene_rng(0, 'test', index), split='test', config=SynthConfig.randomised((96, 96))
        )
        sample = randomised.samples[index]
        image = sample.image.numpy()
        np.testing.assert_allclose(image, normalize_image(scene.image), atol=1e-5)
        assert len(sample.labels) == len(scene.instances)
        assert not np.allclose(image, default.samples[index].image.numpy())
