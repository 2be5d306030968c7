"""Learning test: a short CPU run on synthetic scenes must beat the untrained model by far.

The tiny model learns category-agnostic segmentation ("object") of synthetic shapes; the
metric is agnostic mask AP50 on held-out validation scenes, compared with the same model before
training (chance level for this architecture and data). It exercises the whole training path:
data stream, matcher, criterion, optimiser, schedule, checkpoint and evaluation.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mobius_ros.cli import main
from mobius_ros.model.checkpoint import load_checkpoint
from mobius_ros.ops.image import letterbox, normalize_image
from mobius_ros.runtime.result import Task
from mobius_ros.train.eval_loop import (
    EvalSet,
    EvalSettings,
    evaluate_model,
    letterbox_sample,
    predict,
    sample_rgb,
)
from mobius_ros.train.eval_sets import synthetic_eval_set
from mobius_ros.train.loop import build_training_model, seed_everything, train
from mobius_ros.train.optim import OptimConfig
from mobius_ros.train.recipes import RECIPES, DatasetSpec, Recipe

SIZE = 96
STEPS = 240
# Mask AP50 of 'object': 0 before training, 22 after 240 steps (15 s on 2 idle cores).
METRIC = 'agnostic/segm/AP50'
SETTINGS = EvalSettings(batch_size=12)


def _recipe() -> Recipe:
    return RECIPES['tiny'].replace(
        datasets=(DatasetSpec(name='synthetic_agnostic', source='synthetic', task='agnostic'),),
        iterations=STEPS,
        batch_size=4,
        short_sides=(SIZE,),
        max_long_side=SIZE,
        optim=OptimConfig(
            lr=2e-3, lr_multipliers=(), warmup_iters=10, decay_steps=(200,), clip_grad_norm=1.0
        ),
        checkpoint_every=10**6,
        log_every=20,
    )


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Train once for the module; returns (checkpoint, chance-level metric)."""
    torch.set_num_threads(2)
    recipe = _recipe()
    seed_everything(recipe.seed)
    untrained = build_training_model(recipe)
    chance = evaluate_model(untrained, _data(), settings=SETTINGS, tasks=('agnostic',))[METRIC]
    result = train(recipe, tmp_path_factory.mktemp('learning'), progress=False)
    assert result.steps == STEPS
    return result.model_path, chance


def _data() -> EvalSet:
    return synthetic_eval_set(num_images=24, size=SIZE, split='val')


@pytest.mark.slow
def test_short_training_beats_chance_by_a_wide_margin(trained: tuple[Path, float]) -> None:
    checkpoint, chance = trained
    model = load_checkpoint(checkpoint)
    learned = evaluate_model(model, _data(), settings=SETTINGS, tasks=('agnostic',))[METRIC]
    assert chance <= 2.0, f'{METRIC} of the untrained model is {chance:.1f}'
    assert learned >= chance + 12.0, f'{METRIC}: {learned:.1f} after training, {chance:.1f} before'


@pytest.mark.slow
def test_eval_command_reports_tasks_and_the_pruning_study(
    trained: tuple[Path, float], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, _ = trained
    out = tmp_path / 'eval.json'
    argv = ['eval', '--checkpoint', str(checkpoint), '--num', '4', '--size', str(SIZE)]
    argv += ['--pruning-study', '--min-keep', '4', '--out', str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    for key in ('segm/AP', 'agnostic/segm/AR100', 'referring/all/P@0.5', 'referring/seen/count'):
        assert 0.0 <= results[key] <= 100.0 or key.endswith('count'), key
    # Every synthetic expression has a kind; the per-kind groups partition the whole set.
    kinds = [k for k in results if k.startswith('referring/kind_') and k.endswith('/count')]
    assert {k.split('/')[1] for k in kinds} <= {'kind_attribute', 'kind_extreme', 'kind_relation'}
    assert sum(results[k] for k in kinds) == results['referring/all/count'] > 0
    study = {row['trajectory']: row for row in results['pruning_study']}
    assert set(study) == {'none', 'sigmoid', 'logarithmic', 'exponential'}
    unpruned = study['none']['queries_kept']
    assert len(unpruned) == 2 and unpruned[0] == unpruned[1]
    # Pruning keeps fewer queries after the first layer and never costs more decoder MACs.
    for name in ('sigmoid', 'logarithmic', 'exponential'):
        assert study[name]['queries_kept'][-1] <= unpruned[-1]
        assert study[name]['decoder_MMACs'] <= study['none']['decoder_MMACs'] + 1e-6
    assert 'mask AP' in capsys.readouterr().out


@pytest.mark.slow
def test_equal_flops_study_prunes_as_much_as_the_sigmoid_default(
    trained: tuple[Path, float], tmp_path: Path
) -> None:
    checkpoint, _ = trained
    out = tmp_path / 'eval.json'
    argv = ['eval', '--checkpoint', str(checkpoint), '--num', '4', '--size', str(SIZE)]
    argv += ['--tasks', 'vocabulary', '--pruning-study', '--equal-flops', '--min-keep', '2']
    assert main([*argv, '--out', str(out)]) == 0
    results = json.loads(out.read_text())
    default = {row['trajectory']: row for row in results['pruning_study']}
    matched = {row['trajectory']: row for row in results['pruning_equal_flops']}
    assert set(matched) == {'sigmoid', 'logarithmic', 'exponential'}
    assert matched['sigmoid']['upper'] == default['sigmoid']['upper'] == 0.2
    target = sum(matched['sigmoid']['queries_kept'])
    for name in ('logarithmic', 'exponential'):
        # The 4 images are all searched over (flops_images = 8), so the match can only improve.
        gap = abs(sum(matched[name]['queries_kept']) - target)
        assert gap <= abs(sum(default[name]['queries_kept']) - target) + 0.11, name
        assert 0.05 <= matched[name]['upper'] <= 1.0


@pytest.mark.slow
def test_a_canvas_feeds_the_model_the_letterboxed_frame(trained: tuple[Path, float]) -> None:
    checkpoint, _ = trained
    model = load_checkpoint(checkpoint)
    data = synthetic_eval_set(num_images=6, size=SIZE, split='val')
    shapes: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        native = predict(model, data.samples, task=Task.AGNOSTIC, settings=SETTINGS)
        same = replace(SETTINGS, canvas=(SIZE, SIZE))
        boxed = predict(model, data.samples, task=Task.AGNOSTIC, settings=same)
        shapes.clear()
        wide = replace(SETTINGS, canvas=(2 * SIZE, 3 * SIZE))
        larger = predict(model, data.samples, task=Task.AGNOSTIC, settings=wide)
    finally:
        hook.remove()
    # A canvas of the frame's own size is the native run: the same predictions.
    for a, b in zip(native, boxed):
        assert np.array_equal(a.masks, b.masks) and np.allclose(a.scores, b.scores, atol=1e-5)
    # A larger canvas: the model sees the frame scaled 2x on a 2x-by-3x canvas, and every
    # prediction comes back at the frame's own size.
    assert shapes == [(6, 3, 2 * SIZE, 3 * SIZE)]
    for prediction in larger:
        assert prediction.image_size == (SIZE, SIZE)
        assert prediction.masks.shape[1:] == (SIZE, SIZE)
        assert (prediction.boxes[:, 2:] <= SIZE).all()
    with pytest.raises(ValueError, match='multiples of 32'):
        EvalSettings(canvas=(100, 96))


def test_letterboxed_sample_is_the_runtime_canvas() -> None:
    sample = synthetic_eval_set(num_images=1, size=SIZE, split='val').samples[0]
    scaled, canvas = letterbox_sample(sample, (64, 96))
    expected, scale, pad = letterbox(sample_rgb(sample), (64, 96))
    assert (scale, pad) == (64 / SIZE, (0, 0))
    assert canvas.shape == (3, 64, 96) and scaled.image_hw == (64, 64)
    assert scaled.orig_size == sample.orig_size == (SIZE, SIZE)
    assert torch.equal(canvas, torch.from_numpy(normalize_image(expected)))
    assert torch.equal(scaled.image, canvas[:, :64, :64])
    # Beside the frame, the canvas is black, as the runtime pads it.
    black = torch.from_numpy(normalize_image(np.zeros((1, 1, 3), np.uint8)))[:, 0, 0]
    assert torch.allclose(canvas[:, :, 64:], black[:, None, None].expand(3, 64, 32))


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--canvas', '100', '96'], 'multiples of 32'),
        (['--canvas', '96', '96', '--pruning-study'], 'does not apply'),
    ],
)
def test_eval_command_refuses_a_bad_canvas(extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        main(['eval', '--num', '1', '--size', str(SIZE), *extra])
