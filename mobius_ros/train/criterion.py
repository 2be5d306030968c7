"""The training loss of MOBIUS (DESIGN §4.7-4.8).

Every decoder layer and the two-stage proposals are matched and supervised on their own (deep
supervision) with focal class loss, point-sampled mask BCE + dice, box L1 + GIoU. Every decoder
layer's confidence is additionally calibrated against how good the query *ends up*: the IoU of its
final-layer mask (box IoU for box-only data) with the ground truth that the final layer matched it
to, 0 when unmatched. Training on the final outcome is what lets an early layer's confidence decide
which queries to prune. Denoising queries (DN-DETR) are not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.calibration import calibration_loss
from mobius_ros.model.outputs import LayerOutput, MobiusOutput
from mobius_ros.ops.boxes import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from mobius_ros.train.losses import (
    dice_loss,
    point_sample,
    sigmoid_focal_loss,
    uncertain_points,
)
from mobius_ros.train.matcher import HungarianMatcher, Match, Target

COMPONENTS = ('class', 'box_l1', 'giou', 'mask_bce', 'dice', 'calibration')


@dataclass(frozen=True)
class LossWeights:
    """Loss weights (the paper uses the matching-cost weights) and mask point sampling."""

    class_weight: float = 4.0
    mask_bce_weight: float = 5.0
    dice_weight: float = 5.0
    box_l1_weight: float = 5.0
    giou_weight: float = 2.0
    calibration_weight: float = 1.0
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


class SetCriterion(nn.Module):
    """Matches, then sums the weighted losses of every layer and of the proposals."""

    def __init__(self, matcher: HungarianMatcher, weights: LossWeights = LossWeights()) -> None:
        super().__init__()
        self.matcher = matcher
        self.weights = weights

    def forward(
        self,
        output: MobiusOutput,
        targets: Sequence[Target],
        *,
        final_matches: Sequence[Match] | None = None,
    ) -> dict[str, Tensor]:
        """Losses of one batch.

        Args:
            output: the model's training output; every layer carries masks [B, Q, H/4, W/4].
            targets: per image `labels` [n], `boxes` [n, 4] cxcywh normalised to the input
                tensor, optionally `masks` [n, H, W] bool at input-tensor resolution and
                `class_targets` [n, K] float in [0, 1]: soft class targets (a teacher's scores)
                that replace the one-hot of `labels` in the class loss.
            final_matches: the final layer's matching, when the caller already computed it
                (distillation reuses it for its own terms).

        Returns:
            'loss' (the total to backpropagate) and the weighted sum of each component over all
            layers ('class', 'box_l1', 'giou', 'mask_bce', 'dice', 'calibration').
        """
        device = output.layers[-1].logits.device
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        num_boxes = _global_count(sum(len(t['labels']) for t in targets), device)
        num_masks = _global_count(sum(len(t['labels']) for t in targets if 'masks' in t), device)
        totals = {name: torch.zeros((), device=device) for name in COMPONENTS}

        final = output.layers[-1]
        if final_matches is None:
            final_matches = self.matcher(final.logits, final.boxes, final.masks, targets)
        else:
            final_matches = [(i.to(device), j.to(device)) for i, j in final_matches]
        calibration_target = self._calibration_target(final, targets, final_matches)
        supervised = [(layer, None) for layer in output.layers[:-1]]
        supervised += [(final, final_matches), (output.proposals, None)]
        for layer, matches in supervised:
            if matches is None:
                matches = self.matcher(layer.logits, layer.boxes, layer.masks, targets)
            losses = self._layer_losses(layer, targets, matches, num_boxes, num_masks)
            for name, value in losses.items():
                totals[name] = totals[name] + value
        w = self.weights
        if w.calibration_weight > 0:
            for layer in output.layers:
                loss = calibration_loss(layer.confidence.float(), calibration_target)
                totals['calibration'] = totals['calibration'] + w.calibration_weight * loss
        totals['loss'] = sum(totals[name] for name in COMPONENTS)
        return totals

    def _layer_losses(
        self,
        layer: LayerOutput,
        targets: Sequence[Target],
        matches: Sequence[Match],
        num_boxes: Tensor,
        num_masks: Tensor,
    ) -> dict[str, Tensor]:
        w = self.weights
        logits = layer.logits.float()
        batch_idx, query_idx = _flat_query_index(matches)
        onehot = torch.zeros_like(logits)
        if targets and all('class_targets' in t for t in targets):
            soft = torch.cat([t['class_targets'][j] for t, (_, j) in zip(targets, matches)])
            onehot[batch_idx, query_idx] = soft.to(onehot)
        else:
            labels = torch.cat([t['labels'][j] for t, (_, j) in zip(targets, matches)])
            onehot[batch_idx, query_idx, labels] = 1.0
        focal = sigmoid_focal_loss(logits, onehot, w.focal_alpha, w.focal_gamma)
        losses = {'class': w.class_weight * focal.sum() / num_boxes}

        pred_boxes = layer.boxes.float()[batch_idx, query_idx]
        gt_boxes = torch.cat([t['boxes'][j] for t, (_, j) in zip(targets, matches)]).float()
        l1 = F.l1_loss(pred_boxes, gt_boxes, reduction='none').sum()
        giou = generalized_box_iou(
            box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes)
        ).diagonal()
        losses['box_l1'] = w.box_l1_weight * l1 / num_boxes
        losses['giou'] = w.giou_weight * (1 - giou).sum() / num_boxes
        losses.update(self._mask_losses(layer, targets, matches, num_masks))
        return losses

    def _mask_losses(
        self,
        layer: LayerOutput,
        targets: Sequence[Target],
        matches: Sequence[Match],
        num_masks: Tensor,
    ) -> dict[str, Tensor]:
        w = self.weights
        zero = layer.logits.sum() * 0.0  # keeps the graph connected when nothing is supervised
        if layer.masks is None:
            return {'mask_bce': zero, 'dice': zero}
        pred, gt = [], []
        for b, (t, (i, j)) in enumerate(zip(targets, matches)):
            if 'masks' not in t or len(i) == 0:
                continue  # box-only data: no mask supervision
            pred.append(layer.masks[b, i])
            gt.append(t['masks'][j])
        if not pred:
            return {'mask_bce': zero, 'dice': zero}
        pred_masks = torch.cat(pred)[:, None].float()
        gt_masks = torch.cat(gt)[:, None].float()
        with torch.no_grad():
            points = uncertain_points(
                pred_masks,
                w.num_points,
                oversample_ratio=w.oversample_ratio,
                importance_ratio=w.importance_ratio,
            )
            gt_points = point_sample(gt_masks, points)[:, 0]
        pred_points = point_sample(pred_masks, points)[:, 0]
        bce = F.binary_cross_entropy_with_logits(pred_points, gt_points, reduction='none')
        return {
            'mask_bce': w.mask_bce_weight * bce.mean(1).sum() / num_masks,
            'dice': w.dice_weight * dice_loss(pred_points, gt_points).sum() / num_masks,
        }

    @torch.no_grad()
    def _calibration_target(
        self, final: LayerOutput, targets: Sequence[Target], matches: Sequence[Match]
    ) -> Tensor:
        """[B, Q] IoU of each query's final prediction with its matched target, 0 if unmatched."""
        target = torch.zeros_like(final.confidence, dtype=torch.float32)
        for b, (t, (i, j)) in enumerate(zip(targets, matches)):
            if len(i) == 0:
                continue
            if final.masks is not None and 'masks' in t:
                target[b, i] = _mask_iou(final.masks[b, i], t['masks'][j])
            else:
                pred = box_cxcywh_to_xyxy(final.boxes[b, i].float())
                gt = box_cxcywh_to_xyxy(t['boxes'][j].float())
                target[b, i] = box_iou(pred, gt).diagonal()
        return target


def _mask_iou(pred_logits: Tensor, gt_masks: Tensor) -> Tensor:
    """IoU of [m, h, w] mask logits (> 0) with [m, H, W] bool masks, compared at h x w -> [m]."""
    size = pred_logits.shape[-2:]
    gt = F.interpolate(gt_masks[:, None].float(), size=size, mode='area')[:, 0] >= 0.5
    pred = pred_logits > 0
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return inter / union.clamp(min=1)


def _flat_query_index(matches: Sequence[Match]) -> tuple[Tensor, Tensor]:
    batch = torch.cat([torch.full_like(i, b) for b, (i, _) in enumerate(matches)])
    query = torch.cat([i for i, _ in matches])
    return batch, query


def _global_count(count: int, device: torch.device) -> Tensor:
    """Number of targets over all processes (so every rank normalises alike), at least 1."""
    total = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return total.clamp(min=1.0)
