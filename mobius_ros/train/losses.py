"""Loss and matching-cost primitives for set prediction (pure torch functions).

Box geometry comes from `mobius_ros/ops/boxes.py` (differentiable on tensors). Point sampling
follows Mask2Former: masks are compared on a
set of sampled points instead of full resolution, so predictions at H/4 and targets at H meet in
normalised coordinates without resizing either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Element-wise focal loss of logits and {0, 1} targets of the same shape (no reduction)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def focal_class_cost(
    logits: Tensor, target_labels: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Matching cost of [Q, K] logits against [n] labels -> [Q, n] (positive minus negative)."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob**gamma * -torch.log(1 - prob + 1e-8)
    pos = alpha * (1 - prob) ** gamma * -torch.log(prob + 1e-8)
    return pos[:, target_labels] - neg[:, target_labels]


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss of [N, P] point logits and [N, P] targets -> [N]."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Dice cost of [Q, P] point logits against [n, P] targets -> [Q, n]."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_bce_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid cross-entropy of [Q, P] point logits against [n, P] targets -> [Q, n]."""
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction='none')
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction='none')
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinearly sample [N, C, H, W] maps at [N, P, 2] points (x, y in [0, 1]) -> [N, C, P]."""
    grid = 2.0 * points[:, :, None, :] - 1.0
    return F.grid_sample(maps, grid, mode='bilinear', align_corners=False)[..., 0]


def uncertain_points(
    mask_logits: Tensor,
    num_points: int,
    *,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask2Former's importance sampling: points where [N, 1, H, W] logits are least certain.

    Oversamples uniformly, keeps the `importance_ratio` share with logits closest to 0 and fills
    the rest uniformly, so the loss concentrates on boundaries without ignoring the interior.
    Returns [N, P, 2] points in [0, 1] (x, y).
    """
    n = mask_logits.shape[0]
    device = mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_sampled, 2, device=device, generator=generator)
    uncertainty = -point_sample(mask_logits, candidates)[:, 0].abs()
    num_uncertain = int(importance_ratio * num_points)
    num_random = num_points - num_uncertain
    top = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        uniform = torch.rand(n, num_random, 2, device=device, generator=generator)
        chosen = torch.cat((chosen, uniform), dim=1)
    return chosen
