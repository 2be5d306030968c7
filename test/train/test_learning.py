"""Learning test: a short CPU run on synthetic scenes must beat the untrained model by far.

The tiny model learns category-agnostic segmentation ("object") of synthetic shapes; the
metric is agnostic mask AP50 on held-out validation scenes, compared with the same model before
training (chance level for this architecture and data). It exercises the whole training path:
data stream, matcher, criterion, optimiser, schedule, checkpoint and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mobius_ros.train.eval_loop import EvalSettings, evaluate_model
from mobius_ros.train.eval_sets import synthetic_eval_set
from mobius_ros.train.loop import build_training_model, seed_everything, train
from mobius_ros.train.optim import OptimConfig
from mobius_ros.train.recipes import RECIPES, DatasetSpec, Recipe

SIZE = 96
STEPS = 80
# Mask AP50 of 'object': 0 before training; ~17 after 80 steps (2 idle cores, ~30 s of training).
METRIC = 'agnostic/segm/AP50'


def _recipe() -> Recipe:
    return RECIPES['tiny'].replace(
        datasets=(DatasetSpec(name='synthetic_agnostic', source='synthetic', task='agnostic'),),
        iterations=STEPS,
        batch_size=4,
        short_sides=(SIZE,),
        max_long_side=SIZE,
        optim=OptimConfig(
            lr=2e-3, lr_multipliers=(), warmup_iters=10, decay_steps=(64,), clip_grad_norm=1.0
        ),
        checkpoint_every=10**6,
        log_every=20,
    )


def test_short_training_beats_chance_by_a_wide_margin(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    recipe = _recipe()
    data = synthetic_eval_set(num_images=24, size=SIZE, split='val')
    settings = EvalSettings(batch_size=12)

    seed_everything(recipe.seed)
    untrained = build_training_model(recipe)
    chance = evaluate_model(untrained, data, settings=settings, tasks=('agnostic',))[METRIC]

    result = train(recipe, tmp_path, progress=False)
    assert result.steps == STEPS
    from mobius_ros.model.checkpoint import load_checkpoint

    trained = load_checkpoint(result.model_path)
    learned = evaluate_model(trained, data, settings=settings, tasks=('agnostic',))[METRIC]
    assert chance <= 2.0, f'{METRIC} of the untrained model is {chance:.1f}'
    assert learned >= chance + 8.0, f'{METRIC}: {learned:.1f} after training, {chance:.1f} before'
