"""The student's training loop of `mobius distill`, built from the training loop's parts.

Distributed setup, seeding, the optimiser and schedule of the student's recipe, checkpoints and
resume are those of `mobius train` (`loop.py`, `state.py`); started by `torchrun` every rank
trains on its own slice of the cached pseudo-labels. The feature projection is trained with the
student (its own parameter group at the recipe's lr), stored beside each checkpoint and restored
on resume; it is not part of the exported student.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mobius_ros.train.criterion import COMPONENTS, SetCriterion
from mobius_ros.train.distill import (
    KD_COMPONENTS,
    DistillCriterion,
    DistillStudent,
    FeatureProjection,
    PseudoLabels,
)
from mobius_ros.train.loop import (
    _autocast,
    _clip,
    _out_of_time,
    _progress,
    _wrap,
    _write_recipe,
    build_training_model,
    seed_everything,
    setup_distributed,
    stores_text_encoder,
)
from mobius_ros.train.matcher import HungarianMatcher
from mobius_ros.train.metrics_log import MetricsLog, plot_curves
from mobius_ros.train.optim import build_optimizer, build_scheduler, freeze
from mobius_ros.train.recipes import Recipe
from mobius_ros.train.state import (
    checkpoint_dir,
    latest_checkpoint,
    load_training_state,
    save_training_state,
)

PROJECTION_FILE = 'feature_projection.safetensors'


@dataclass(frozen=True)
class DistillResult:
    """What a finished (or time-limited) student run produced."""

    out_dir: Path
    steps: int
    final_loss: float
    seconds: float
    model_path: Path


def build_student(recipe: Recipe, teacher_dim: int | None) -> DistillStudent:
    """The student of `recipe` (random init or `init_from`) and, for a teacher width, its
    feature projection."""
    student = build_training_model(recipe)
    if recipe.init_from:
        from mobius_ros.model.checkpoint import load_matching_weights

        load_matching_weights(student, recipe.init_from)
    projection = None
    if teacher_dim is not None:
        projection = FeatureProjection(student.pixel_decoder.dim, teacher_dim)
    return DistillStudent(student, projection)


def distill_student(
    recipe: Recipe,
    data: PseudoLabels,
    out_dir: str | Path,
    *,
    teacher_dim: int | None,
    resume: bool = False,
    device: torch.device | None = None,
    time_limit_s: float | None = None,
    progress: bool = True,
) -> DistillResult:
    """Train the student of `recipe` on `data` into `out_dir` (as `mobius train` lays it out).

    Args:
        recipe: the student's model, optimiser, schedule, batch size and loss weights (its
            datasets are not used).
        data: the cached pseudo-labels.
        teacher_dim: width of the teacher's mask features to distil (None: no feature term).
        resume: continue from the latest checkpoint of `out_dir`.
        time_limit_s: stop early (with a checkpoint) after this much wall time.
    """
    from mobius_ros.model.checkpoint import save_checkpoint

    out_dir = Path(out_dir)
    device = device or torch.device('cpu')
    info = setup_distributed(device)
    seed_everything(recipe.seed)
    module = build_student(recipe, teacher_dim).to(device)
    student = module.student
    freeze(
        student, recipe.optim.frozen + (('text_encoder.',) if recipe.freeze_text_encoder else ())
    )
    optimizer = build_optimizer(student, recipe.optim)
    if module.projection is not None:
        optimizer.add_param_group(
            {
                'params': list(module.projection.parameters()),
                'lr': recipe.optim.lr,
                'weight_decay': 0.0,
                'name': 'feature_projection',
                'lr_factor': 1.0,
            }
        )
    scheduler = build_scheduler(optimizer, recipe.optim)
    start = 0
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_recipe(recipe, out_dir)
    if resume and (last := latest_checkpoint(out_dir)) is not None:
        start = load_training_state(last, model=student, optimizer=optimizer, scheduler=scheduler)
        _load_projection(module, last)
    if start == 0 or info.rank > 0:
        seed_everything(recipe.seed + 1000 * info.rank + start)
    ddp = _wrap(module, info, device)
    with_text = stores_text_encoder(recipe)
    criterion = DistillCriterion(
        SetCriterion(HungarianMatcher(recipe.match), recipe.loss), data.settings
    )
    log = MetricsLog(out_dir) if info.is_main else None
    bar = _progress(recipe.iterations, start, enabled=progress and info.is_main)
    names = ('loss', *(f'loss_{c}' for c in COMPONENTS + KD_COMPONENTS))
    began = time.monotonic()
    autocast = _autocast(device, recipe.amp)
    running: dict[str, float] = {}
    count = 0
    loss_value = math.nan
    done = start
    module.train()
    for step in range(start, recipe.iterations):
        item = data.batch(step, rank=info.rank, world_size=info.world_size)
        with autocast:
            output, projected = ddp(item.batch.images.to(device), item.batch.phrases)
        losses = criterion(output, item.batch.targets, projected, item.teacher_features)
        optimizer.zero_grad(set_to_none=True)
        losses['loss'].backward()
        _clip(module, recipe.optim.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        loss_value = float(losses['loss'].detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f'loss is {loss_value} at step {step}; lower the lr')
        count += 1
        for name in names:
            key = name if name == 'loss' else name[len('loss_') :]
            running[name] = running.get(name, 0.0) + float(losses[key].detach())
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f'{loss_value:.3f}')
        out_of_time = _out_of_time(began, time_limit_s, info)
        last_step = done == recipe.iterations or out_of_time
        if log is not None and (done % recipe.log_every == 0 or last_step):
            values = {k: v / count for k, v in running.items()}
            values['seconds'] = time.monotonic() - began
            log.log(done, values)
            running.clear()
            count = 0
        if info.is_main and (done % recipe.checkpoint_every == 0 or last_step):
            _save(module, optimizer, scheduler, out_dir, done, with_text)
        if out_of_time:
            break
    seconds = time.monotonic() - began
    model_path = out_dir / 'model.safetensors'
    if info.is_main:
        if latest_checkpoint(out_dir) is None:
            _save(module, optimizer, scheduler, out_dir, done, with_text)
        save_checkpoint(student, model_path, include_text_encoder=with_text)
        if log is not None:
            log.close()
            if log.path.is_file():
                plot_curves(log.path, out_dir / 'curves.png')
    if bar is not None:
        bar.close()
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    return DistillResult(out_dir, done, loss_value, seconds, model_path)


def _save(
    module: DistillStudent,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    out_dir: Path,
    step: int,
    with_text: bool,
) -> None:
    """A resumable checkpoint; the projection is written first, the `latest` pointer last."""
    directory = checkpoint_dir(out_dir, step)
    if module.projection is not None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous() for k, v in module.projection.state_dict().items()
        }
        save_file(state, str(directory / PROJECTION_FILE))
    save_training_state(
        directory,
        model=module.student,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        include_text_encoder=with_text,
    )


def _load_projection(module: nn.Module, directory: Path) -> None:
    if module.projection is None:
        return
    path = directory / PROJECTION_FILE
    if not path.is_file():
        raise ValueError(
            f'checkpoint {directory} has no {PROJECTION_FILE}; it is not a'
            ' distillation run with feature distillation'
        )
    from safetensors.torch import load_file

    module.projection.load_state_dict(load_file(str(path)))
