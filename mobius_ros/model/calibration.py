"""Calibration loss: make every layer's confidence predict the query's final quality."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def calibration_loss(confidence: torch.Tensor, target_iou: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between confidence and the (detached) IoU target (DESIGN §4.7).

    Args:
        confidence: [B, Q] max_k sigmoid(logits) of one layer, in [0, 1].
        target_iou: [B, Q] IoU of the query's final mask (or box) with its matched ground
            truth, 0 for unmatched queries.

    Returns:
        Scalar mean loss.
    """
    target = target_iou.detach().to(confidence.dtype).clamp(0.0, 1.0)
    # The confidence is a max of sigmoids; clamping keeps the log finite without changing
    # the gradient anywhere it matters.
    eps = torch.finfo(confidence.dtype).eps
    return F.binary_cross_entropy(confidence.clamp(eps, 1.0 - eps), target)
