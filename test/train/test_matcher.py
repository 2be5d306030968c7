"""Hungarian matcher: recovers a known assignment, handles the edge cases."""

from __future__ import annotations

import itertools

import pytest
import torch

from mobius_ros.train.matcher import HungarianMatcher, MatchCosts

SIZE = 64


def _scene(num_targets: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random non-degenerate boxes with box-shaped masks at SIZE x SIZE."""
    centers = torch.rand(num_targets, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(num_targets, 2, generator=generator) * 0.2 + 0.1
    boxes = torch.cat((centers, sizes), dim=1)
    masks = torch.zeros(num_targets, SIZE, SIZE, dtype=torch.bool)
    for n, (cx, cy, w, h) in enumerate(boxes.tolist()):
        x1, x2 = int((cx - w / 2) * SIZE), int((cx + w / 2) * SIZE)
        y1, y2 = int((cy - h / 2) * SIZE), int((cy + h / 2) * SIZE)
        masks[n, y1:y2, x1:x2] = True
    labels = torch.randint(0, 4, (num_targets,), generator=generator)
    return {'labels': labels, 'boxes': boxes, 'masks': masks}


def _predictions_for(
    target: dict[str, torch.Tensor], slots: torch.Tensor, num_queries: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries `slots[n]` predict target n exactly; the rest predict junk."""
    logits = torch.full((1, num_queries, num_classes), -6.0)
    boxes = torch.tensor([0.9, 0.9, 0.05, 0.05]).repeat(1, num_queries, 1)
    masks = torch.full((1, num_queries, SIZE // 4, SIZE // 4), -8.0)
    small = torch.nn.functional.avg_pool2d(target['masks'][:, None].float(), 4)[:, 0]
    for n, q in enumerate(slots.tolist()):
        logits[0, q, target['labels'][n]] = 6.0
        boxes[0, q] = target['boxes'][n]
        masks[0, q] = (small[n] * 16 - 8).clamp(-8, 8)
    return logits, boxes, masks


@pytest.mark.parametrize('with_masks', [True, False])
def test_recovers_a_permuted_assignment(with_masks: bool) -> None:
    g = torch.Generator().manual_seed(0)
    target = _scene(4, g)
    slots = torch.tensor([7, 2, 9, 0])
    logits, boxes, masks = _predictions_for(target, slots, 10, 4)
    if not with_masks:
        del target['masks']
    matcher = HungarianMatcher(MatchCosts(num_points=256))
    [(rows, cols)] = matcher(logits, boxes, masks if with_masks else None, [target], generator=g)
    assert rows.tolist() == sorted(rows.tolist())
    assignment = dict(zip(cols.tolist(), rows.tolist()))
    assert [assignment[n] for n in range(4)] == slots.tolist()


def test_no_targets_gives_empty_match() -> None:
    target = {
        'labels': torch.zeros(0, dtype=torch.int64),
        'boxes': torch.zeros(0, 4),
        'masks': torch.zeros(0, SIZE, SIZE, dtype=torch.bool),
    }
    logits, boxes = torch.randn(1, 5, 3), torch.rand(1, 5, 4)
    [(rows, cols)] = HungarianMatcher()(logits, boxes, torch.randn(1, 5, 16, 16), [target])
    assert rows.numel() == 0 and cols.numel() == 0
    assert rows.dtype == torch.int64


def test_more_targets_than_queries_matches_every_query_once() -> None:
    g = torch.Generator().manual_seed(1)
    target = _scene(7, g)
    logits, boxes, masks = torch.randn(1, 3, 4), torch.rand(1, 3, 4), torch.randn(1, 3, 16, 16)
    [(rows, cols)] = HungarianMatcher(MatchCosts(num_points=64))(
        logits, boxes, masks, [target], generator=g
    )
    assert rows.tolist() == [0, 1, 2]
    assert len(set(cols.tolist())) == 3 and max(cols.tolist()) < 7


def test_assignment_is_the_minimum_cost_one() -> None:
    """Brute force over all injections of 3 targets into 5 queries."""
    g = torch.Generator().manual_seed(2)
    target = _scene(3, g)
    logits, boxes = torch.randn(1, 5, 4, generator=g), torch.rand(1, 5, 4, generator=g)
    boxes[..., 2:] = boxes[..., 2:] * 0.5 + 0.05
    masks = torch.randn(1, 5, 16, 16, generator=g)
    matcher = HungarianMatcher(MatchCosts(num_points=128))
    cost = matcher.cost_matrix(
        logits[0], boxes[0], masks[0], target, generator=torch.Generator().manual_seed(3)
    )
    [(rows, cols)] = matcher(
        logits, boxes, masks, [target], generator=torch.Generator().manual_seed(3)
    )
    found = cost[rows, cols].sum().item()
    best = min(
        sum(cost[q, n].item() for n, q in enumerate(perm))
        for perm in itertools.permutations(range(5), 3)
    )
    assert found == pytest.approx(best, abs=1e-5)


def test_nan_predictions_do_not_crash() -> None:
    g = torch.Generator().manual_seed(4)
    target = _scene(2, g)
    logits = torch.full((1, 4, 4), float('nan'))
    [(rows, cols)] = HungarianMatcher(MatchCosts(num_points=32))(
        logits, torch.rand(1, 4, 4), None, [target]
    )
    assert len(rows) == 2 and sorted(cols.tolist()) == [0, 1]
