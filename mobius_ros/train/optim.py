"""Optimiser and learning-rate schedule (DESIGN §4.8; supplementary §6).

AdamW, lr 1e-4, weight decay 0.05; the image and text encoders learn at 0.1x; linear warm-up,
then x0.1 at each scheduled step. Parameter groups are decided here, by parameter name, so the
model never needs to know how it is trained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and clipping.

    `lr_multipliers` maps a parameter-name prefix to a learning-rate factor (the first matching
    prefix wins); `frozen` prefixes are excluded from training altogether.
    """

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    lr_multipliers: tuple[tuple[str, float], ...] = (('backbone.', 0.1), ('text_encoder.', 0.1))
    frozen: tuple[str, ...] = ()
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    decay_steps: tuple[int, ...] = (400_000, 500_000)
    decay_factor: float = 0.1
    clip_grad_norm: float = 0.1


def freeze(model: nn.Module, prefixes: Iterable[str]) -> int:
    """Turn off gradients of parameters whose name starts with any prefix; returns how many."""
    prefixes = tuple(prefixes)
    count = 0
    for name, param in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            param.requires_grad_(False)
            count += param.numel()
    return count


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """AdamW groups: one per (lr factor, decay or not); norms, biases and scales get no decay.

    Each group carries a readable 'name' (for logs) and its 'lr_factor'.
    """
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix, factor = next(
            ((p, f) for p, f in config.lr_multipliers if name.startswith(p)), ('', 1.0)
        )
        # 1-d tensors are norms, biases and logit scales: decaying them only hurts.
        decay = param.ndim > 1
        key = (prefix, decay)
        if key not in groups:
            label = (prefix.rstrip('.') or 'rest') + ('' if decay else '/no_decay')
            groups[key] = {
                'name': label,
                'params': [],
                'lr': config.lr * factor,
                'lr_factor': factor,
                'weight_decay': config.weight_decay if decay else 0.0,
            }
        groups[key]['params'].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups(model, config)`."""
    return torch.optim.AdamW(param_groups(model, config), lr=config.lr, betas=config.betas)


def lr_factor(step: int, config: OptimConfig) -> float:
    """LR multiplier at `step`: linear warm-up, then x`decay_factor` per decay step passed."""
    factor = config.decay_factor ** sum(step >= s for s in config.decay_steps)
    if step < config.warmup_iters:
        alpha = step / config.warmup_iters
        factor *= config.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR applying `lr_factor` to every group's own base lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
