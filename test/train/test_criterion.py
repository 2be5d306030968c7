"""Set criterion: loss values, gradients to every layer, box-only data, calibration targets."""

from __future__ import annotations

import math

import pytest
import torch

from mobius_ros.model.outputs import LayerOutput, MobiusOutput
from mobius_ros.train.criterion import COMPONENTS, LossWeights, SetCriterion
from mobius_ros.train.losses import dice_loss, sigmoid_focal_loss, uncertain_points
from mobius_ros.train.matcher import HungarianMatcher, MatchCosts

SIZE, Q, K = 64, 6, 3
POINTS = 256


def _targets() -> list[dict[str, torch.Tensor]]:
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 8:24, 8:40] = True
    masks[1, 40:60, 32:56] = True
    boxes = torch.tensor([[24, 16, 32, 16], [44, 50, 24, 20]], dtype=torch.float32) / SIZE
    return [{'labels': torch.tensor([0, 2]), 'boxes': boxes, 'masks': masks}]


def _layer(
    targets: list[dict[str, torch.Tensor]], *, perfect: bool, confident: bool = True
) -> LayerOutput:
    """Queries 1 and 4 predict the two targets (exactly when `perfect`), the rest predict junk."""
    g = torch.Generator().manual_seed(0)
    logits = torch.full((1, Q, K), -8.0)
    boxes = torch.tensor([0.5, 0.5, 0.9, 0.9]).repeat(1, Q, 1)
    masks = torch.full((1, Q, SIZE // 4, SIZE // 4), -8.0)
    target = targets[0]
    small = torch.nn.functional.avg_pool2d(target['masks'][:, None].float(), 4)[:, 0]
    for n, q in enumerate((1, 4)):
        if perfect:
            logits[0, q, target['labels'][n]] = 8.0 if confident else -8.0
            boxes[0, q] = target['boxes'][n]
            masks[0, q] = (small[n] * 32 - 16).clamp(-8, 8)
        else:
            logits[0, q] = torch.randn(K, generator=g)
            masks[0, q] = torch.randn(SIZE // 4, SIZE // 4, generator=g)
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    masks.requires_grad_(True)
    return LayerOutput(
        logits=logits, boxes=boxes, confidence=logits.sigmoid().amax(-1), masks=masks
    )


def _output(layers: list[LayerOutput], proposals: LayerOutput) -> MobiusOutput:
    return MobiusOutput(layers=layers, proposals=proposals, mask_features=torch.zeros(1))


def _criterion(**weights: float) -> SetCriterion:
    matcher = HungarianMatcher(MatchCosts(num_points=POINTS))
    return SetCriterion(matcher, LossWeights(num_points=POINTS, **weights))


def test_focal_and_dice_known_values() -> None:
    focal = sigmoid_focal_loss(torch.zeros(1), torch.ones(1))
    assert focal.item() == pytest.approx(0.25 * 0.25 * math.log(2))
    perfect = dice_loss(torch.full((1, 10), 30.0), torch.ones(1, 10))
    wrong = dice_loss(torch.full((1, 10), -30.0), torch.ones(1, 10))
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)
    assert wrong.item() == pytest.approx(10 / 11, abs=1e-6)


def test_uncertain_points_prefer_the_boundary() -> None:
    # A ramp crossing 0 at x = 0.5: the closer to the edge, the less certain.
    x = (torch.arange(32) + 0.5) / 32
    logits = (20 * (0.5 - x)).expand(1, 1, 32, 32)
    generator = torch.Generator().manual_seed(0)
    points = uncertain_points(logits, 100, importance_ratio=1.0, generator=generator)
    assert points.shape == (1, 100, 2)
    distance = (points[0, :, 0] - 0.5).abs()
    assert distance.mean().item() < 0.12  # uniform points: 0.25
    # Bilinear sampling pads with zeros, so the outermost half pixel also looks uncertain
    # (as in Mask2Former); everything else chosen lies near the edge.
    assert (distance < 0.25).float().mean().item() > 0.9


def test_good_predictions_cost_less_and_every_layer_gets_gradients() -> None:
    targets = _targets()
    criterion = _criterion()
    good = criterion(
        _output([_layer(targets, perfect=True)] * 2, _layer(targets, perfect=True)), targets
    )
    layers = [_layer(targets, perfect=False) for _ in range(2)]
    proposals = _layer(targets, perfect=False)
    bad = criterion(_output(layers, proposals), targets)
    assert set(COMPONENTS) | {'loss'} == set(bad)
    for name in ('class', 'box_l1', 'giou', 'mask_bce', 'dice'):
        assert good[name].item() < bad[name].item(), name
    assert good['box_l1'].item() < 1e-4
    bad['loss'].backward()
    for layer in [*layers, proposals]:
        for tensor in (layer.logits, layer.boxes, layer.masks):
            assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def test_box_only_targets_skip_mask_losses() -> None:
    targets = _targets()
    layer, proposals = _layer(targets, perfect=False), _layer(targets, perfect=False)
    del targets[0]['masks']
    losses = _criterion()(_output([layer], proposals), targets)
    assert losses['mask_bce'].item() == 0.0 and losses['dice'].item() == 0.0
    assert losses['box_l1'].item() > 0
    losses['loss'].backward()
    assert layer.masks.grad is None or layer.masks.grad.abs().sum() == 0


def test_no_targets_gives_a_finite_class_only_loss() -> None:
    empty = [
        {
            'labels': torch.zeros(0, dtype=torch.int64),
            'boxes': torch.zeros(0, 4),
            'masks': torch.zeros(0, SIZE, SIZE, dtype=torch.bool),
        }
    ]
    layer = _layer(_targets(), perfect=False)
    losses = _criterion()(_output([layer], _layer(_targets(), perfect=False)), empty)
    assert torch.isfinite(losses['loss'])
    assert losses['class'].item() > 0 and losses['box_l1'].item() == 0.0


def test_calibration_targets_the_final_mask_iou() -> None:
    """Confident queries with perfect final masks are calibrated; with wrong masks they are not."""
    targets = _targets()
    criterion = _criterion(class_weight=0.0)
    perfect = _layer(targets, perfect=True)
    calibrated = criterion(_output([perfect], perfect), targets)['calibration']
    wrong_masks = _layer(targets, perfect=True)
    with torch.no_grad():
        wrong_masks.masks.neg_()
    overconfident = criterion(_output([wrong_masks], wrong_masks), targets)['calibration']
    timid = _layer(targets, perfect=True, confident=False)
    underconfident = criterion(_output([timid], timid), targets)['calibration']
    assert calibrated.item() < 0.01
    assert overconfident.item() > 1.0 and underconfident.item() > 1.0


def test_soft_class_targets_replace_the_one_hot() -> None:
    targets = _targets()
    layers = [_layer(targets, perfect=True)]
    proposals = _layer(targets, perfect=True)
    hard = _criterion()(_output(layers, proposals), targets)
    onehot = torch.nn.functional.one_hot(targets[0]['labels'], K).float()
    same = _criterion()(_output(layers, proposals), [{**targets[0], 'class_targets': onehot}])
    assert same['class'].item() == pytest.approx(hard['class'].item(), rel=1e-6)
    # The perfect queries are certain of their class: a teacher that is only half sure of it
    # makes them overconfident, so the class loss grows.
    unsure = [{**targets[0], 'class_targets': onehot * 0.5}]
    assert _criterion()(_output(layers, proposals), unsure)['class'] > hard['class'] + 0.1
