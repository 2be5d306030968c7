"""Training loop pieces: parameter groups, schedule, recipes, data stream, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mobius_ros.train.build_data import SyntheticScenes, build_batches
from mobius_ros.train.metrics_log import MetricsLog, plot_curves, read_metrics
from mobius_ros.train.optim import OptimConfig, build_optimizer, freeze, lr_factor, param_groups
from mobius_ros.train.recipes import RECIPES, Recipe, load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.text_encoder = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


def test_param_groups_scale_encoders_and_skip_decay_on_vectors() -> None:
    model = _Toy()
    groups = {g['name']: g for g in param_groups(model, OptimConfig(lr=1e-4))}
    assert groups['backbone']['lr'] == pytest.approx(1e-5)
    assert groups['text_encoder']['lr'] == pytest.approx(1e-5)
    assert groups['rest']['lr'] == pytest.approx(1e-4)
    assert groups['backbone/no_decay']['weight_decay'] == 0.0
    assert groups['rest']['weight_decay'] == 0.05
    grouped = sum(p.numel() for g in groups.values() for p in g['params'])
    assert grouped == sum(p.numel() for p in model.parameters())


def test_frozen_parameters_leave_the_optimiser() -> None:
    model = _Toy()
    frozen = freeze(model, ('text_encoder.',))
    assert frozen == 20
    names = {g['name'] for g in build_optimizer(model, OptimConfig()).param_groups}
    assert not any(n.startswith('text_encoder') for n in names)


def test_schedule_warms_up_then_decays_at_the_paper_steps() -> None:
    config = OptimConfig(warmup_iters=100, warmup_factor=0.001, decay_steps=(400_000, 500_000))
    assert lr_factor(0, config) == pytest.approx(0.001)
    assert lr_factor(50, config) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(100, config) == 1.0
    assert lr_factor(399_999, config) == 1.0
    assert lr_factor(400_000, config) == pytest.approx(0.1)
    assert lr_factor(500_000, config) == pytest.approx(0.01)


def test_paper_recipe_follows_the_supplementary() -> None:
    paper = RECIPES['paper']
    assert paper.iterations == 500_000
    assert paper.optim.lr == 1e-4 and paper.optim.weight_decay == 0.05
    assert paper.optim.decay_steps == (400_000, 500_000)
    assert dict(paper.optim.lr_multipliers) == {'backbone.': 0.1, 'text_encoder.': 0.1}
    assert (min(paper.short_sides), max(paper.short_sides), paper.max_long_side) == (
        384,
        800,
        1333,
    )
    ratios = {d.name: d.ratio for d in paper.datasets}
    assert ratios['coco'] == 1.5 and ratios['sa1b'] == 2.5 and ratios['bdd'] == 0.15
    assert len(ratios) == 13 and math.isclose(sum(ratios.values()), 14.55)


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipes_round_trip_and_reject_unknown_keys(name: str) -> None:
    recipe = RECIPES[name]
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    broken = recipe.to_dict()
    broken['optim']['learning_rate'] = 1.0
    with pytest.raises(ValueError, match='learning_rate'):
        Recipe.from_dict(broken)


@pytest.mark.parametrize('name', ['demo', 'paper', 'coco128'])
def test_yaml_configs_match_the_named_recipes(name: str) -> None:
    assert load_recipe(str(CONFIGS / f'{name}.yaml')) == RECIPES[name]


def test_yaml_overrides_a_base_recipe(tmp_path: Path) -> None:
    path = tmp_path / 'r.yaml'
    path.write_text('base: demo\niterations: 7\noptim:\n  lr: 0.001\n')
    recipe = load_recipe(str(path))
    assert recipe.iterations == 7 and recipe.optim.lr == 0.001
    assert recipe.optim.weight_decay == RECIPES['demo'].optim.weight_decay
    path.write_text('base: demo\nitterations: 7\n')
    with pytest.raises(ValueError, match='itterations'):
        load_recipe(str(path))


def test_synthetic_referring_samples_have_one_target() -> None:
    data = SyntheticScenes(task='referring', image_hw=(64, 64))
    for index in range(5):
        sample = data[index]
        assert sample.referring and len(sample.phrases) == 1 and sample.boxes.shape == (1, 4)
        assert sample.masks is not None and sample.masks[0].any()


def test_data_stream_is_deterministic_resumable_and_disjoint_across_ranks() -> None:
    recipe = RECIPES['tiny']
    first = [next(build_batches(recipe, start=s)) for s in range(3)]
    stream = build_batches(recipe)
    again = [next(stream) for _ in range(3)]
    for a, b in zip(first, again):
        assert a.phrases == b.phrases and torch.equal(a.images, b.images)
    other_rank = next(build_batches(recipe, rank=1, world_size=2))
    rank0 = next(build_batches(recipe, rank=0, world_size=2))
    assert not torch.equal(other_rank.images, rank0.images)
    assert rank0.images.shape[-2:] == (64, 64)


def test_metrics_csv_and_plot(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, {'loss': 3.0 / step, 'loss_class': 1.0 / step})
    log.close()
    data = read_metrics(tmp_path / 'metrics.csv')
    assert data['step'] == [1.0, 2.0, 3.0] and data['loss'][-1] == pytest.approx(1.0)
    assert plot_curves(tmp_path / 'metrics.csv', tmp_path / 'curves.png') is not None
    assert (tmp_path / 'curves.png').stat().st_size > 1000
