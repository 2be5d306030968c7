"""Hungarian matching of predicted queries to ground-truth instances (DESIGN §4.8).

Cost = class 4 (focal) + mask BCE 5 + dice 5 (on sampled points) + box L1 5 + GIoU 2, solved per
image with scipy's `linear_sum_assignment`. Images whose targets carry no masks (box-only data)
are matched without the mask terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mobius_ros.ops.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from mobius_ros.train.losses import (
    focal_class_cost,
    pairwise_bce_cost,
    pairwise_dice_cost,
    point_sample,
)

Target = Mapping[str, Tensor]
Match = tuple[Tensor, Tensor]  # (query indices [m], target indices [m]), int64


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching cost terms and the number of points masks are compared on."""

    class_weight: float = 4.0
    mask_bce_weight: float = 5.0
    dice_weight: float = 5.0
    box_l1_weight: float = 5.0
    giou_weight: float = 2.0
    num_points: int = 12544
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


class HungarianMatcher:
    """One-to-one assignment of queries to targets, per image.

    Matching needs no gradients, so it is a plain callable rather than an nn.Module.
    """

    def __init__(self, costs: MatchCosts = MatchCosts()) -> None:
        self.costs = costs

    @torch.no_grad()
    def __call__(
        self,
        logits: Tensor,
        boxes: Tensor,
        masks: Tensor | None,
        targets: Sequence[Target],
        *,
        generator: torch.Generator | None = None,
    ) -> list[Match]:
        """Match the queries of each image to its targets.

        Args:
            logits: [B, Q, K] class logits.
            boxes: [B, Q, 4] cx, cy, w, h normalised.
            masks: [B, Q, h, w] mask logits, or None when the layer predicts no masks.
            targets: per image `labels` [n] int64, `boxes` [n, 4] cxcywh normalised and optionally
                `masks` [n, H, W] bool.
            generator: random source for the point positions (reproducible matching).

        Returns:
            Per image (query indices [m], target indices [m]) with m = min(Q, n), sorted by query,
            on the device of `logits`.
        """
        matches = []
        for b, target in enumerate(targets):
            cost = self.cost_matrix(
                logits[b],
                boxes[b],
                None if masks is None else masks[b],
                target,
                generator=generator,
            )
            rows, cols = _solve(cost)
            matches.append((rows.to(logits.device), cols.to(logits.device)))
        return matches

    def cost_matrix(
        self,
        logits: Tensor,
        boxes: Tensor,
        masks: Tensor | None,
        target: Target,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Total cost [Q, n] for one image (logits [Q, K], boxes [Q, 4], masks [Q, h, w])."""
        c = self.costs
        labels = target['labels']
        num_queries, num_targets = logits.shape[0], labels.shape[0]
        if num_targets == 0:
            return logits.new_zeros(num_queries, 0)
        logits, boxes = logits.float(), boxes.float()
        target_boxes = target['boxes'].to(boxes)
        cost = c.class_weight * focal_class_cost(logits, labels, c.focal_alpha, c.focal_gamma)
        cost = cost + c.box_l1_weight * torch.cdist(boxes, target_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        cost = cost - c.giou_weight * giou
        target_masks = target.get('masks')
        if masks is not None and target_masks is not None:
            # The same random points for every query and target keep the costs comparable.
            points = torch.rand(1, c.num_points, 2, device=masks.device, generator=generator)
            pred = point_sample(masks[None].float(), points)[0]
            gt = point_sample(target_masks[None].to(pred), points)[0]
            cost = cost + c.mask_bce_weight * pairwise_bce_cost(pred, gt)
            cost = cost + c.dice_weight * pairwise_dice_cost(pred, gt)
        return cost


def _solve(cost: Tensor) -> Match:
    """Minimum-cost assignment of a [Q, n] cost matrix; rectangular in either direction."""
    if cost.shape[1] == 0 or cost.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty.clone()
    # A diverged prediction must not crash the solver; it simply becomes the worst choice.
    cost = torch.nan_to_num(cost.cpu(), nan=1e8, posinf=1e8, neginf=-1e8)
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
