"""The distillation teacher cache: records, hits, and invalidation that never reuses silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobius_ros.model.checkpoint import save_checkpoint
from mobius_ros.model.variants import build_model
from mobius_ros.ops.masks import rle_encode
from mobius_ros.train.data.synthetic import SHAPES, SynthConfig, generate_scene, scene_rng
from mobius_ros.train.distill_cache import (
    CacheIdentity,
    CacheMismatchError,
    TeacherCache,
    TeacherRecord,
    image_sha256,
    teacher_identity,
)
from mobius_ros.train.distill_sources import SourceImage
from mobius_ros.train.distill_teacher import label_images

SIZE = 64


def scenes(n: int) -> list[SourceImage]:
    config = SynthConfig(image_hw=(SIZE, SIZE))
    return [
        SourceImage(
            f'scene{i}',
            generate_scene(scene_rng(3, 'train', i), split='train', config=config).image,
        )
        for i in range(n)
    ]


def tiny_teacher(path: Path, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model('MOBIUS-tiny').eval()
    save_checkpoint(model, path)
    return model


def identity(teacher: str = 'a', vocabulary: tuple[str, ...] = SHAPES, size: int = SIZE):
    return CacheIdentity(teacher, vocabulary, (size, size), features=True)


class Counting:
    """Counts the images the real teacher model is run on."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images = 0
        model.register_forward_hook(self._count)

    def _count(self, module: torch.nn.Module, inputs: tuple, output: object) -> None:
        self.images += int(inputs[0].shape[0])


def test_record_round_trip(tmp_path: Path) -> None:
    cache = TeacherCache(tmp_path / 'c', identity())
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[0, 4:20, 4:30] = True
    masks[1, 40:60, 10:20] = True
    record = TeacherRecord(
        canvas=np.full((SIZE, SIZE, 3), 7, np.uint8),
        boxes=np.array([[0.3, 0.2, 0.4, 0.25], [0.2, 0.8, 0.15, 0.3]], np.float32),
        scores=np.random.default_rng(0).random((2, len(SHAPES))).astype(np.float32),
        masks=tuple(rle_encode(m) for m in masks),
        features=np.random.default_rng(1).standard_normal((32, 16, 16)).astype(np.float32),
    )
    cache.put('img', record)
    assert 'img' in cache and 'other' not in cache
    back = cache.get('img')
    np.testing.assert_array_equal(back.decoded_masks(), masks)
    np.testing.assert_array_equal(back.canvas, record.canvas)
    np.testing.assert_allclose(back.scores, record.scores)
    assert back.features.dtype == np.float16
    np.testing.assert_allclose(back.features, record.features, atol=2e-3)
    with pytest.raises(KeyError):
        cache.get('other')


def test_second_pass_hits_the_cache_and_never_runs_the_teacher(tmp_path: Path) -> None:
    teacher = tiny_teacher(tmp_path / 't.safetensors')
    counter = Counting(teacher)
    cache = TeacherCache(tmp_path / 'c', identity(teacher_identity(tmp_path / 't.safetensors')))
    images = [*scenes(5), SourceImage('broken.png', None, 'not a decodable image')]
    first = label_images(teacher, images, cache, batch_size=2, progress=False)
    assert (first.labelled, first.cached, first.skipped) == (5, 0, 1)
    assert first.errors == ['broken.png: not a decodable image']
    assert counter.images == 5
    again = label_images(teacher, images, cache, batch_size=2, progress=False)
    assert (again.labelled, again.cached, again.skipped) == (0, 5, 1)
    assert counter.images == 5  # no teacher pass the second time
    assert again.hashes == first.hashes
    record = cache.get(first.hashes[0])
    assert record.scores.shape[1] == len(SHAPES) and len(record.masks) == len(record.boxes)
    assert record.features.shape == (32, SIZE // 4, SIZE // 4)


@pytest.mark.parametrize(
    'changed',
    [
        identity(teacher='b'),
        identity(vocabulary=('circle', 'square')),
        identity(size=96),
        CacheIdentity('a', SHAPES, (SIZE, SIZE), features=False),
    ],
    ids=['teacher', 'vocabulary', 'size', 'features'],
)
def test_another_identity_is_refused_or_rebuilt(tmp_path: Path, changed: CacheIdentity) -> None:
    root = tmp_path / 'c'
    old = TeacherCache(root, identity())
    record = TeacherRecord(
        np.zeros((SIZE, SIZE, 3), np.uint8),
        np.zeros((0, 4), np.float32),
        np.zeros((0, len(SHAPES)), np.float32),
        (),
        np.zeros((32, 16, 16), np.float32),
    )
    old.put('img', record)
    assert changed.record_key('img') != identity().record_key('img')
    with pytest.raises(CacheMismatchError, match='--rebuild-cache'):
        TeacherCache(root, changed)
    rebuilt = TeacherCache(root, changed, rebuild=True)
    assert 'img' not in rebuilt
    assert not list(root.glob('*/*.npz'))  # the old records are gone, not hidden
    # The old identity is now the stranger.
    with pytest.raises(CacheMismatchError):
        TeacherCache(root, identity())


def test_teacher_identity_follows_the_weights(tmp_path: Path) -> None:
    tiny_teacher(tmp_path / 'a.safetensors', seed=0)
    tiny_teacher(tmp_path / 'b.safetensors', seed=1)
    tiny_teacher(tmp_path / 'c.safetensors', seed=0)
    a, b, c = (teacher_identity(tmp_path / f'{n}.safetensors') for n in 'abc')
    assert a != b and a == c


def test_image_hash_is_of_pixels_and_shape() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    other = image.copy()
    other[3, 3, 1] = 1
    assert image_sha256(image) == image_sha256(image.copy())
    assert image_sha256(image) != image_sha256(other)
    assert image_sha256(image) != image_sha256(np.zeros((4, 16, 3), np.uint8))


def test_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'something.txt').write_text('x')
    with pytest.raises(CacheMismatchError, match='no distillation manifest'):
        TeacherCache(tmp_path / 'c', identity())
