"""Training loop pieces: parameter groups, schedule, recipes, data stream, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mobius_ros.train.build_data import SyntheticScenes, build_batches
from mobius_ros.train.loop import build_training_model
from mobius_ros.train.metrics_log import MetricsLog, plot_curves, read_metrics
from mobius_ros.train.optim import OptimConfig, build_optimizer, freeze, lr_factor, param_groups
from mobius_ros.train.recipes import RECIPES, DatasetSpec, Recipe, load_recipe

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


@pytest.mark.slow
def test_resume_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    """2 steps + resume to 4 == 4 steps straight: weights, optimiser, schedule and data."""
    from safetensors.torch import load_file

    from mobius_ros.train.loop import train

    recipe = RECIPES['tiny'].replace(iterations=4, checkpoint_every=2)
    straight = train(recipe, tmp_path / 'straight', progress=False)
    train(recipe.replace(iterations=2), tmp_path / 'resumed', progress=False)
    resumed = train(recipe, tmp_path / 'resumed', resume=True, progress=False)
    assert resumed.steps == 4
    a, b = load_file(straight.model_path), load_file(resumed.model_path)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert read_metrics(tmp_path / 'resumed' / 'metrics.csv')['step'][-1] == 4.0


def test_prediction_pastes_masks_and_boxes_back_to_the_original_image() -> None:
    """A 64x96 image resized to 32x48 inside a 64x64 tensor: outputs come back at 64x96."""
    import numpy as np

    from mobius_ros.runtime.result import Task
    from mobius_ros.train.data.sample import Sample
    from mobius_ros.train.eval_loop import EvalSettings, to_prediction

    sample = Sample(
        image=torch.zeros(3, 32, 48),
        boxes=np.zeros((0, 4), np.float32),
        labels=np.zeros(0, np.int64),
        masks=None,
        phrases=('a', 'b'),
        orig_size=(64, 96),
    )
    logits = torch.tensor([[-5.0, 4.0], [-6.0, -6.0]])
    # query 0: box covering the left half of the image content (x 0..24, y 0..32 of 64x64)
    boxes = torch.tensor([[12 / 64, 16 / 64, 24 / 64, 32 / 64], [0.5, 0.5, 0.1, 0.1]])
    masks = torch.full((2, 16, 16), -10.0)
    masks[0, 0:8, 0:6] = 10.0  # the same left half at stride 4
    prediction = to_prediction(
        logits,
        boxes,
        masks,
        tensor_hw=(64, 64),
        sample=sample,
        task=Task.VOCABULARY,
        settings=EvalSettings(score_threshold=0.5),
    )
    assert len(prediction) == 1 and prediction.labels == ['b']
    np.testing.assert_allclose(prediction.boxes[0], [0, 0, 48, 64], atol=1e-4)
    assert prediction.masks.shape == (1, 64, 96)
    assert prediction.masks[0, :, :44].mean() > 0.95 and not prediction.masks[0, :, 52:].any()
    assert prediction.scores[0] == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), 1e-3)


def test_coco_protocol_ranks_every_query_class_pair() -> None:
    """'all' reports a query under each class it scores; 'one' only under its best class."""
    import numpy as np

    from mobius_ros.runtime.result import Task
    from mobius_ros.train.data.sample import Sample
    from mobius_ros.train.eval_loop import EvalSettings, to_prediction

    sample = Sample(
        image=torch.zeros(3, 32, 32),
        boxes=np.zeros((0, 4), np.float32),
        labels=np.zeros(0, np.int64),
        masks=None,
        phrases=('a', 'b', 'c'),
        orig_size=(32, 32),
    )
    logits = torch.tensor([[2.0, 1.0, -9.0], [-9.0, -9.0, 0.0]])
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    masks = torch.full((2, 8, 8), -10.0)
    masks[0, :4, :4] = 10.0
    masks[1, 4:, 4:] = 10.0
    args = dict(tensor_hw=(32, 32), sample=sample, task=Task.VOCABULARY)
    single = EvalSettings(labels_per_query='one')
    one = to_prediction(logits, boxes, masks, **args, settings=single)
    assert one.labels == ['a', 'c']
    every = to_prediction(logits, boxes, masks, **args, settings=EvalSettings(max_detections=4))
    assert every.labels[:3] == ['a', 'b', 'c'] and len(every) == 4
    np.testing.assert_array_equal(every.masks[0], every.masks[1])  # one query, two classes
    assert list(every.scores) == sorted(every.scores, reverse=True)
    with pytest.raises(ValueError, match='labels_per_query'):
        EvalSettings(labels_per_query='some')


def test_equal_flops_search_finds_the_threshold_that_keeps_the_target_count() -> None:
    from mobius_ros.train.eval_loop import match_upper

    # Queries kept fall linearly from 50 at upper 0 to 10 at upper 1: 30 is kept at 0.5.
    def linear(upper: float) -> float:
        return 50.0 - 40.0 * upper

    found = match_upper(linear, 30.0, low=0.05, start=0.2)
    assert found == pytest.approx(0.5, abs=1e-3)
    assert match_upper(linear, 42.0, low=0.05, start=0.2) == pytest.approx(0.2, abs=1e-3)

    # A count that jumps past the target: no threshold is closer than the starting one.
    def step(upper: float) -> float:
        return 20.0 if upper < 0.3 else 10.0

    assert match_upper(step, 15.0, low=0.05, start=0.2) == 0.2


def test_data_root_resolves_only_relative_dataset_paths(tmp_path: Path) -> None:
    recipe = RECIPES['coco128'].replace(
        datasets=(
            *RECIPES['coco128'].datasets,
            DatasetSpec(name='abs', source='coco', images='/data/x', annotations='/data/x.json'),
        )
    )
    rooted = recipe.with_data_root(tmp_path)
    relative, absolute = rooted.datasets
    assert relative.images == str(tmp_path / 'coco128' / 'train2017')
    assert relative.annotations == str(tmp_path / 'coco128/annotations/instances_train2017.json')
    assert relative.instances == ''  # empty stays empty
    assert (absolute.images, absolute.annotations) == ('/data/x', '/data/x.json')
    synthetic = RECIPES['demo'].with_data_root(tmp_path)
    assert synthetic == RECIPES['demo']


def test_init_from_copies_every_fitting_tensor_and_rejects_wrong_files(tmp_path: Path) -> None:
    from mobius_ros.model.checkpoint import (
        load_matching_weights,
        save_checkpoint,
        transfer_report,
    )

    recipe = RECIPES['tiny']
    torch.manual_seed(1)
    source = build_training_model(recipe).eval()
    path = tmp_path / 'source.safetensors'
    save_checkpoint(source, path)
    torch.manual_seed(2)
    same = build_training_model(recipe)
    loaded, skipped = load_matching_weights(same, path)
    assert loaded and not skipped
    for name, tensor in source.state_dict().items():
        if name in loaded:
            assert torch.equal(same.state_dict()[name], tensor), name
    # A model with other shapes takes what fits and names what it kept as built.
    wider_ffn = (('decoder', {'ffn_dim': 24}),)
    other = build_training_model(recipe.replace(model_overrides=wider_ffn))
    loaded, skipped = load_matching_weights(other, path)
    assert 'decoder.layers.0.ffn.linear1.weight' in skipped
    assert 'decoder.layers.0.self_attn.in_proj_weight' in loaded
    assert all(other.state_dict()[n].shape == source.state_dict()[n].shape for n in loaded)
    report = transfer_report(loaded, skipped).splitlines()
    layer0 = next(line for line in report if line.split()[0] == 'decoder.layers.0')
    copied, total = map(int, layer0.split()[1].split('/'))
    assert 0 < copied < total and 'rest fresh' in layer0
    assert any(line.split()[0] == 'backbone' and line.endswith(' copied') for line in report)

    with pytest.raises(FileNotFoundError):
        load_matching_weights(same, tmp_path / 'missing.safetensors')
    (tmp_path / 'bad.safetensors').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a safetensors'):
        load_matching_weights(same, tmp_path / 'bad.safetensors')


def test_train_command_fine_tunes_from_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mobius_ros.cli import main
    from mobius_ros.model.checkpoint import save_checkpoint

    torch.manual_seed(3)
    model = build_training_model(RECIPES['tiny']).eval()
    start = tmp_path / 'a.safetensors'
    save_checkpoint(model, start)
    argv = ['train', '--recipe', 'tiny', '--out', str(tmp_path / 'run'), '--iterations', '1']
    assert main([*argv, '--init-from', str(start), '--no-progress']) == 0
    assert 'initialised' in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / 'run' / 'recipe.yaml').read_text())
    assert saved['init_from'] == str(start)
