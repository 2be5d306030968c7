"""`mobius distill` end to end: the bundled demo model teaches a tiny student on a few images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from mobius_ros.cli import main
from mobius_ros.train.criterion import SetCriterion
from mobius_ros.train.data.synthetic import SynthConfig, generate_scene, scene_rng
from mobius_ros.train.distill import DistillCriterion, DistillSettings, PseudoLabels
from mobius_ros.train.distill_cache import CacheIdentity, TeacherCache
from mobius_ros.train.distill_loop import PROJECTION_FILE, build_student
from mobius_ros.train.loop import seed_everything
from mobius_ros.train.matcher import HungarianMatcher
from mobius_ros.train.recipes import load_recipe
from mobius_ros.train.state import latest_checkpoint

SIZE = 128
THREADS = ['--threads', '2', '--no-progress']


def scene_images(n: int, seed: int = 5) -> list[np.ndarray]:
    config = SynthConfig(image_hw=(SIZE, SIZE))
    return [
        generate_scene(scene_rng(seed, 'train', i), split='train', config=config).image
        for i in range(n)
    ]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('distill')
    (root / 'images').mkdir()
    for i, rgb in enumerate(scene_images(4)):
        cv2.imwrite(str(root / 'images' / f'{i}.png'), rgb[..., ::-1])
    (root / 'images' / 'truncated.jpg').write_bytes(b'\xff\xd8\xff')
    recipe = {
        'base': 'tiny',
        'iterations': 30,
        'batch_size': 2,
        'log_every': 1,
        'checkpoint_every': 2,
        'optim': {'lr': 2e-3, 'warmup_iters': 1, 'decay_steps': [1000]},
    }
    (root / 'student.yaml').write_text(yaml.safe_dump(recipe))
    return root


def distill(workdir: Path, out: str, *extra: str) -> int:
    args = ['distill', '--student', str(workdir / 'student.yaml'), '--out', str(workdir / out)]
    args += ['--size', str(SIZE), '--cache-dir', str(workdir / 'cache'), *THREADS]
    if '--bag' not in extra:
        args += ['--images', str(workdir / 'images')]
    return main([*args, *extra])


def fixed_loss(workdir: Path, run: Path | None) -> float:
    """The distillation loss of the first batch, for the initial (None) or a trained student."""
    import json

    recipe = load_recipe(str(workdir / 'student.yaml'))
    recipe = recipe.replace(short_sides=(SIZE,), max_long_side=SIZE)
    report = json.loads((workdir / 'run' / 'distill.json').read_text())
    identity = CacheIdentity(
        report['teacher_identity'], tuple(report['vocabulary']), (SIZE, SIZE), features=True
    )
    cache = TeacherCache(workdir / 'cache', identity)
    hashes = json.loads((workdir / 'run' / 'distill_images.json').read_text())
    settings = DistillSettings(agnostic_ratio=0.0)
    data = PseudoLabels(cache, hashes, settings, batch_size=4, seed=recipe.seed)
    seed_everything(recipe.seed)
    module = build_student(recipe, teacher_dim=64)
    if run is not None:
        module.student.load_state_dict(load_file(str(run / 'model.safetensors')), strict=False)
        projection = load_file(str(latest_checkpoint(run) / PROJECTION_FILE))
        module.projection.load_state_dict(projection)
    criterion = DistillCriterion(
        SetCriterion(HungarianMatcher(recipe.match), recipe.loss), settings
    )
    item = data.batch(0)
    torch.manual_seed(0)
    module.train()
    with torch.no_grad():
        output, projected = module(item.batch.images, item.batch.phrases)
        losses = criterion(output, item.batch.targets, projected, item.teacher_features)
    return float(losses['loss'])


def test_distillation_lowers_the_loss_and_reports_bad_images(workdir: Path) -> None:
    assert distill(workdir, 'run', '--iterations', '30') == 0
    import json

    report = json.loads((workdir / 'run' / 'distill.json').read_text())
    assert report['images'] == 4 and report['unreadable'] == 1
    assert 'truncated.jpg' in report['unreadable_examples'][0]
    assert report['vocabulary'][:2] == ['circle', 'square']  # the teacher's own vocabulary
    # The demo model's text encoder is MiniLM, the student's a tiny transformer: both read the
    # phrases themselves, so different text encoders need no shared embedding space.
    before, after = fixed_loss(workdir, None), fixed_loss(workdir, workdir / 'run')
    assert after < 0.8 * before, (before, after)
    # The student is an ordinary checkpoint, with its training size beside it.
    from mobius_ros.model.checkpoint import load_checkpoint

    load_checkpoint(workdir / 'run' / 'model.safetensors')
    assert yaml.safe_load((workdir / 'run' / 'recipe.yaml').read_text())['short_sides'] == [SIZE]


def test_resume_continues_exactly(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert distill(workdir, 'straight', '--iterations', '6') == 0
    assert distill(workdir, 'split', '--iterations', '4') == 0
    assert distill(workdir, 'split', '--iterations', '6', '--resume') == 0
    assert 'teacher: 0 labelled, 4 from the cache' in capsys.readouterr().out
    straight = load_file(str(workdir / 'straight' / 'model.safetensors'))
    split = load_file(str(workdir / 'split' / 'model.safetensors'))
    assert straight.keys() == split.keys()
    for name, tensor in straight.items():
        torch.testing.assert_close(split[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_bag_source_every_other_frame(workdir: Path) -> None:
    pytest.importorskip('rosbags')
    import json

    from mobius_ros.ros.bag import write_images

    bag = write_images(workdir / 'robot_bag', scene_images(5, seed=9), topic='/cam/image')
    bag_args = ['--bag', str(bag), '--topic', '/cam/image', '--every', '2', '--iterations', '2']
    assert distill(workdir, 'bag', *bag_args, '--cache-dir', str(workdir / 'bag_cache')) == 0
    report = json.loads((workdir / 'bag' / 'distill.json').read_text())
    assert report['images'] == 3 and report['labelled_now'] == 3
    assert '3 of 5 frames of /cam/image' in report['source']
    with pytest.raises(SystemExit, match="no Image or CompressedImage topic '/nope'"):
        distill(workdir, 'bag2', '--bag', str(bag), '--topic', '/nope')


def test_bad_sources_are_clear_errors(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='no image files'):
        distill(workdir, 'x', '--images', str(tmp_path / 'empty'))
    with pytest.raises(SystemExit, match='--bag needs --topic'):
        distill(workdir, 'x', '--bag', str(tmp_path))
    with pytest.raises(SystemExit, match='multiples of 32'):
        distill(workdir, 'x', '--size', '100')
    (tmp_path / 'only_bad').mkdir()
    (tmp_path / 'only_bad' / 'a.png').write_bytes(b'not a png')
    with pytest.raises(SystemExit, match='no readable image'):
        main(['distill', '--student', 'tiny', '--out', str(tmp_path / 'o'), '--images',
              str(tmp_path / 'only_bad'), '--size', '64', *THREADS])  # fmt: skip
    with pytest.raises(SystemExit, match='another vocabulary'):
        distill(workdir, 'x', '--vocabulary', 'circle,square')
