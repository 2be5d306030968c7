"""GLEE's released checkpoints -> our checkpoints (safetensors + JSON sidecar).

GLEE (CVPR 2024) publishes GLEE_Lite (ResNet-50) and GLEE_Plus (Swin-L) as plain state dicts of
its `GLEE_Model` (keys such as `backbone.stem.conv1.weight`, or prefixed `glee.` / `module.` by
its training wrappers). `convert_glee` reads one with `torch.load(weights_only=True)` only, maps
every tensor onto our GLEE-style configuration (`VARIANTS['GLEE-Lite']`) and writes our
checkpoint with the config and the source's provenance. Every source tensor is either mapped or
named in `UNUSED` with the reason; anything else, and any shape mismatch, is an error that names
the tensors, and nothing is written.

The mapping itself lives beside each module (`d2_resnet_from_glee` in backbone.py, ...): each
takes `take(glee_name) -> Tensor` and returns its module's state dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mobius_ros.common.errors import ModelLoadError
from mobius_ros.model.checkpoint import FORMAT, sidecar_path
from mobius_ros.model.config import MobiusConfig

WRAPPER_PREFIXES = ('module.', 'glee.')
# Tensors of a GLEE checkpoint that our model deliberately does not use, with the reason.
UNUSED: tuple[tuple[str, str], ...] = (
    (
        r'text_encoder_teacher\.',
        'the frozen CLIP teacher GLEE distils its text tower from during training only',
    ),
    (r'text_encoder\.embeddings\.position_ids$', 'a constant 0..76 index buffer'),
    (r'sot_fuser\.', 'visual prompts (box / point / scribble prompts, single-object tracking)'),
    (r'mask_sptial_embed\.', 'visual prompts (spatial embedding of a prompt region)'),
    (r'pn_indicator\.', 'visual prompts (positive / negative prompt indicator)'),
    (
        r'predictor\.(coco|obj365|vg|grounding|ytvis19|ytvis21|ovis|uvo)_label_enc\.'
        r'|predictor\.bdd_(det|inst)\.',
        'per-dataset label embeddings of the denoising queries, used in training only',
    ),
    (
        r'predictor\.confidence_score\.',
        'objectness head GLEE uses only to select queries for visual prompts and in training '
        'losses; text-prompted inference scores queries by their class logits',
    ),
    (r'.*num_batches_tracked$', 'a batch-norm counter, not a weight'),
)
# MaskDINO shares one box head among the decoder layers and the encoder's proposals, and one
# norm between the decoder and its heads; a state dict lists each shared tensor under every
# name. One is mapped, the others must equal it.
SHARED = (
    re.compile(r'predictor\.(?:_bbox_embed|bbox_embed\.\d+|decoder\.bbox_embed\.\d+)\.(.+)$'),
    re.compile(r'predictor\.(?:decoder_norm|decoder\.norm)\.(.+)$'),
)


def shared_key(name: str) -> tuple[int, str] | None:
    """Names with the same key hold one shared GLEE tensor; None for unshared names."""
    for index, pattern in enumerate(SHARED):
        if m := pattern.match(name):
            return index, m.group(1)
    return None


GLEE_MARKERS = ('pixel_decoder.', 'predictor.', 'lang_projection')
SUPPORTED = ('GLEE-Lite',)


@dataclass
class Conversion:
    """What a conversion produced.

    Attributes:
        state: our state dict.
        config: our MobiusConfig it loads into.
        mapped: GLEE tensor names that went into `state`.
        unused: GLEE tensor name -> why our model leaves it out.
        source: provenance of the source file (name, size, sha256), or {} for in-memory input.
    """

    state: dict[str, Tensor]
    config: MobiusConfig
    mapped: list[str]
    unused: dict[str, str]
    source: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        mapped_numel = sum(v.numel() for v in self.state.values())
        return (
            f'{len(self.mapped)} GLEE tensors mapped into {len(self.state)} of ours '
            f'({mapped_numel / 1e6:.1f} M values); {len(self.unused)} deliberately unused'
        )


class _Taker:
    """`take(name)` over a GLEE state dict, recording what was taken."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def __call__(self, name: str) -> Tensor:
        if name not in self.state:
            raise ModelLoadError(f'GLEE checkpoint lacks tensor {name!r} (not a GLEE-Lite file?)')
        self.used.add(name)
        return self.state[name]

    def has(self, name: str) -> bool:
        return name in self.state


def strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the `module.` / `glee.` prefixes GLEE's training wrappers add (any order) and the
    `text_model.` level older transformers put in the text towers' names."""
    out = {}
    for key, value in state.items():
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        # transformers 4 (GLEE's release) nests CLIPTextModel's tower under `text_model.`.
        for tower in ('text_encoder.', 'text_encoder_teacher.'):
            if name.startswith(tower + 'text_model.'):
                name = tower + name[len(tower + 'text_model.') :]
        if name in out:
            raise ModelLoadError(f'GLEE checkpoint has {key!r} twice once prefixes are removed')
        out[name] = value
    return out


def detect_variant(state: Mapping[str, Tensor]) -> str:
    """'GLEE-Lite' (ResNet-50 trunk) or 'GLEE-Plus' (Swin-L) from the tensor names."""
    if not any(k.startswith(GLEE_MARKERS) for k in state):
        sample = sorted(state)[:3]
        raise ModelLoadError(
            f'not a GLEE checkpoint: no {GLEE_MARKERS[0]!r} / {GLEE_MARKERS[1]!r} tensors '
            f'(first keys: {sample})'
        )
    if 'backbone.stem.conv1.weight' in state:
        return 'GLEE-Lite'
    if any(k.startswith('backbone.layers.') for k in state):
        return 'GLEE-Plus'
    raise ModelLoadError('GLEE checkpoint with an unknown trunk (neither ResNet-50 nor Swin-L)')


def glee_config(state: Mapping[str, Tensor], base: MobiusConfig) -> MobiusConfig:
    """`base` with the widths and depths the checkpoint's shapes fix (reduced files included).

    Head counts, sampling points and the number of queries are not visible in the weights and
    come from `base`.
    """
    stem = state['backbone.stem.conv1.weight']
    res2 = [k for k in state if re.fullmatch(r'backbone\.res2\.0\.conv[13]\.weight', k)]
    token = state['text_encoder.embeddings.token_embedding.weight']
    position = state['text_encoder.embeddings.position_embedding.weight']
    text_layers = _count(state, r'text_encoder\.encoder\.layers\.(\d+)\.')
    fc1 = state['text_encoder.encoder.layers.0.mlp.fc1.weight']
    enc_layers = _count(state, r'pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.')
    dec_layers = _count(state, r'predictor\.decoder\.layers\.(\d+)\.')
    enc_ffn = state['pixel_decoder.transformer.encoder.layers.0.linear1.weight']
    dec_ffn = state['predictor.decoder.layers.0.linear1.weight']
    lang = state['lang_projection']
    if len(res2) != 2:
        raise ModelLoadError('GLEE checkpoint lacks backbone.res2.0.conv1/conv3 weights')
    return base.replace(
        hidden_dim=int(lang.shape[1]),
        backbone={
            'd2_stem_width': int(stem.shape[0]),
            'd2_width_per_group': int(state['backbone.res2.0.conv1.weight'].shape[0]),
            'd2_res2_out': int(state['backbone.res2.0.conv3.weight'].shape[0]),
        },
        text={
            'width': int(token.shape[1]),
            'vocab_size': int(token.shape[0]),
            'context_length': int(position.shape[0]),
            'layers': text_layers,
            'ffn_dim': int(fc1.shape[0]),
        },
        pixel_decoder={'num_layers': enc_layers, 'ffn_dim': int(enc_ffn.shape[0])},
        decoder={'num_layers': dec_layers, 'ffn_dim': int(dec_ffn.shape[0])},
    )


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if not found:
        raise ModelLoadError(f'GLEE checkpoint has no tensors matching {pattern!r}')
    return max(found) + 1


def map_glee_state(
    state: Mapping[str, Tensor], config: MobiusConfig
) -> tuple[dict[str, Tensor], list[str], dict[str, str]]:
    """Map a GLEE state dict (prefixes stripped) onto our model of `config`.

    Returns:
        (our state dict, mapped GLEE names, {unused GLEE name: reason}).

    Raises:
        ModelLoadError: a GLEE tensor neither mapped nor known as unused, a missing tensor, or
            a shape that does not fit; the message names the tensors.
    """
    from mobius_ros.model.backbone import d2_resnet_from_glee
    from mobius_ros.model.maskdino import maskdino_decoder_from_glee, maskdino_encoder_from_glee
    from mobius_ros.model.text_encoder import hf_clip_from_glee

    take = _Taker(state)
    parts: list[tuple[str, Callable[[], dict[str, Tensor]]]] = [
        ('backbone.', lambda: d2_resnet_from_glee(take, config.backbone)),
        ('text_encoder.', lambda: hf_clip_from_glee(take, config.text)),
        ('pixel_decoder.', lambda: maskdino_encoder_from_glee(take, config.pixel_decoder)),
        ('', lambda: maskdino_decoder_from_glee(take, config)),
    ]
    ours: dict[str, Tensor] = {}
    for prefix, part in parts:
        try:
            mapped = part()
        except KeyError as error:  # a mapping asked for a name the file lacks
            raise ModelLoadError(f'GLEE checkpoint lacks tensor {error}') from error
        for key, value in mapped.items():
            ours[prefix + key] = value
    lang = take('lang_projection')  # [D_text, C]: GLEE computes tokens @ lang_projection
    ours['text_proj.weight'] = lang.t().contiguous()
    ours['text_proj.bias'] = torch.zeros(lang.shape[1], dtype=lang.dtype)

    unused, unknown = {}, []
    shared = {key: n for n in sorted(take.used) if (key := shared_key(n)) is not None}
    for name in sorted(set(state) - take.used):
        reason = next((why for pattern, why in UNUSED if re.match(pattern, name)), None)
        key = shared_key(name)
        if key in shared:
            twin = shared[key]
            if not torch.equal(state[name], state[twin]):
                raise ModelLoadError(
                    f'GLEE checkpoint: shared tensors {name} and {twin} differ '
                    '(a corrupt or edited file?)'
                )
            reason = f'the same shared tensor as {twin}'
        if reason is None:
            unknown.append(name)
        else:
            unused[name] = reason
    if unknown:
        raise ModelLoadError(
            f'{len(unknown)} GLEE tensors are neither mapped nor known to be unused: '
            f'{_names(unknown)}'
        )
    _check_fits(ours, config)
    return ours, sorted(take.used), unused


def _check_fits(ours: Mapping[str, Tensor], config: MobiusConfig) -> None:
    from mobius_ros.model.variants import build_from_config

    with torch.device('meta'):
        expected = {k: v.shape for k, v in build_from_config(config).state_dict().items()}
    missing = sorted(set(expected) - set(ours))
    extra = sorted(set(ours) - set(expected))
    wrong = sorted(
        f'{k} {tuple(ours[k].shape)} != {tuple(expected[k])}'
        for k in set(ours) & set(expected)
        if tuple(ours[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f'no GLEE tensor for {len(missing)} of ours: {_names(missing)}')
    if extra:
        problems.append(f'{len(extra)} mapped names our model lacks: {_names(extra)}')
    if wrong:
        problems.append(f'{len(wrong)} shape mismatches: {_names(wrong)}')
    if problems:
        raise ModelLoadError('GLEE conversion does not fit the model: ' + '; '.join(problems))


def _names(items: list[str], limit: int = 12) -> str:
    shown = ', '.join(items[:limit])
    return shown + (f' ... and {len(items) - limit} more' if len(items) > limit else '')


def read_glee_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Load a GLEE .pth with `weights_only=True`; a state dict, or one under 'model'."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'GLEE checkpoint {path} not found')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as error:  # truncated zip, not a torch file, or pickled code
        raise ModelLoadError(
            f'{path} is not a readable PyTorch weights file ({type(error).__name__}: '
            f'{str(error).splitlines()[0] if str(error) else ""}); is the download complete?'
        ) from error
    for key in ('model', 'state_dict'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ModelLoadError(f'{path} does not hold a state dict (got {type(obj).__name__})')
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ModelLoadError(
            f'{path} is not a state dict of tensors: {_names([str(k) for k in bad])}'
        )
    return strip_wrappers(obj)


def file_provenance(path: str | Path) -> dict[str, object]:
    """name, size and sha256 of a file."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open('rb') as stream:
        for block in iter(lambda: stream.read(1 << 22), b''):
            digest.update(block)
    return {'name': path.name, 'size': path.stat().st_size, 'sha256': digest.hexdigest()}


def convert_state(
    state: Mapping[str, Tensor], *, variant: str | None = None, config: MobiusConfig | None = None
) -> Conversion:
    """Convert an in-memory GLEE state dict.

    Args:
        state: GLEE_Model state dict (wrapper prefixes allowed).
        variant: 'GLEE-Lite' or 'GLEE-Plus'; detected from the names when None.
        config: our config to convert into; default `VARIANTS[variant]` with the widths and
            depths read from the shapes.
    """
    from mobius_ros.model.variants import VARIANTS

    state = strip_wrappers(state)
    found = detect_variant(state)
    if variant is not None and variant != found:
        raise ModelLoadError(f'checkpoint is a {found} file, not {variant}')
    if found not in SUPPORTED:
        raise ModelLoadError(
            f'{found} checkpoints need the Swin-L trunk, which mobius_ros does not implement yet; '
            f'supported: {", ".join(SUPPORTED)}'
        )
    if config is None:
        try:
            config = glee_config(state, VARIANTS[found])
        except KeyError as error:
            raise ModelLoadError(f'GLEE checkpoint lacks tensor {error}') from error
    ours, mapped, unused = map_glee_state(state, config)
    # safetensors stores no aliases: a GLEE tensor feeding two of ours (the decoder norm also
    # used by the mask head) gets its own copy for the second.
    seen: set[int] = set()
    for key, value in ours.items():
        value = value.detach().to(torch.float32).contiguous()
        if value.data_ptr() in seen:
            value = value.clone()
        seen.add(value.data_ptr())
        ours[key] = value
    return Conversion(ours, config, mapped, unused)


def convert_glee(
    checkpoint: str | Path,
    out: str | Path,
    *,
    variant: str | None = None,
    config: MobiusConfig | None = None,
) -> Conversion:
    """Convert GLEE checkpoint file `checkpoint` into our checkpoint `out` (.safetensors).

    Writes `out` and its JSON sidecar atomically (both or neither); the sidecar records the
    config, the source's name, size and sha256, and the unused tensors with their reasons.
    """
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out)
    if out.suffix != '.safetensors':
        raise ValueError(f'output must be a .safetensors file, got {out}')
    conversion = convert_state(read_glee_checkpoint(checkpoint), variant=variant, config=config)
    conversion.source = file_provenance(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(out)
    tmp_weights = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    tmp_side = side.with_name(f'.{side.name}.{os.getpid()}.tmp')
    meta = {
        'format': FORMAT,
        'config': conversion.config.to_dict(),
        'includes_text_encoder': True,
        'provenance': {
            'converted_from': 'GLEE',
            'source': conversion.source,
            'mapped_tensors': len(conversion.mapped),
            'unused_tensors': conversion.unused,
        },
    }
    try:
        save_file(conversion.state, str(tmp_weights), metadata={'format': FORMAT})
        tmp_side.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
        os.replace(tmp_weights, out)
        os.replace(tmp_side, side)
    finally:
        for tmp in (tmp_weights, tmp_side):
            tmp.unlink(missing_ok=True)
    return conversion
