"""Training checkpoints: model weights (safetensors + resolved config) and resumable state.

A checkpoint directory holds `model.safetensors` + `model.json` (written by
`mobius_ros.model.checkpoint`, so any consumer can load the model alone) and `train_state.pt`
with the optimiser, scheduler, step and random states. The latter is read back with
`torch.load(weights_only=True)`: it contains only tensors and plain containers, never pickled
code.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mobius_ros.model.checkpoint import TEXT_PREFIX, save_checkpoint

MODEL_FILE = 'model.safetensors'
STATE_FILE = 'train_state.pt'
LATEST_FILE = 'latest.txt'


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives under a run's output directory."""
    return out_dir / 'checkpoints' / f'step_{step:07d}'


def save_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    include_text_encoder: bool = True,
) -> Path:
    """Write model + resumable state into `directory` and point `latest.txt` of its run at it."""
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, directory / MODEL_FILE, include_text_encoder=include_text_encoder)
    state = {
        'step': step,
        'optimizer': optimizer.state_dict(),
        'scheduler': scheduler.state_dict(),
        'torch_rng': torch.get_rng_state(),
        'numpy_rng': _numpy_state_to_tensors(np.random.get_state()),
        'python_rng': list(random.getstate()[1]),
    }
    tmp = directory / (STATE_FILE + '.tmp')
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)  # a crash mid-write never leaves a torn state file
    (directory.parent / LATEST_FILE).write_text(directory.name + '\n')
    return directory


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    pointer = out_dir / 'checkpoints' / LATEST_FILE
    if not pointer.is_file():
        return None
    directory = out_dir / 'checkpoints' / pointer.read_text().strip()
    return directory if (directory / STATE_FILE).is_file() else None


def load_training_state(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Restore weights, optimiser, scheduler and random states; returns the step to resume at."""
    from safetensors.torch import load_file

    weights = load_file(str(directory / MODEL_FILE))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # A text encoder left out of the checkpoint comes from its package, as when it was built.
    allowed = _non_persistent(model)
    missing = [k for k in missing if k not in allowed and not k.startswith(TEXT_PREFIX)]
    if unexpected or missing:
        raise ValueError(
            f'checkpoint {directory} does not fit the model: missing {missing[:5]}, '
            f'unexpected {unexpected[:5]}'
        )
    state = torch.load(directory / STATE_FILE, weights_only=True, map_location='cpu')
    optimizer.load_state_dict(state['optimizer'])
    scheduler.load_state_dict(state['scheduler'])
    torch.set_rng_state(state['torch_rng'])
    np.random.set_state(_numpy_state_from_tensors(state['numpy_rng']))
    random.setstate((3, tuple(state['python_rng']), None))
    return int(state['step'])


def _non_persistent(model: nn.Module) -> set[str]:
    """Keys a safetensors file may legitimately omit (tied or shared tensors)."""
    names = set(model.state_dict())
    params = {name for name, _ in model.named_parameters(remove_duplicate=True)}
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=True)}
    return names - params - buffers


def _numpy_state_to_tensors(state: tuple) -> dict[str, torch.Tensor | str | int | float]:
    name, keys, pos, has_gauss, cached = state
    return {
        'name': name,
        'keys': torch.from_numpy(keys.astype(np.int64)),
        'pos': int(pos),
        'has_gauss': int(has_gauss),
        'cached': float(cached),
    }


def _numpy_state_from_tensors(state: dict) -> tuple:
    keys = state['keys'].numpy().astype(np.uint32)
    return state['name'], keys, state['pos'], state['has_gauss'], state['cached']
