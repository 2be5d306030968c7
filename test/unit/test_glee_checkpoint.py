"""GLEE checkpoint conversion on synthetic full-size GLEE-Lite and GLEE-Plus state dicts.

The committed manifests list every tensor name and shape of GLEE-Lite's and GLEE-Plus's
`GLEE_Model` state dicts as GLEE's own code builds them (`python -m scripts.glee_reference
manifest`); a state dict of exactly those names and shapes must convert with every tensor
mapped or named as unused.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mobius_ros.common.errors import ModelLoadError
from mobius_ros.model.checkpoint import load_checkpoint, sidecar_path
from mobius_ros.model.glee_checkpoint import (
    UNUSED,
    convert_glee,
    convert_state,
    read_glee_checkpoint,
    shared_key,
)

MANIFEST = Path(__file__).parents[2] / 'mobius_ros' / 'assets' / 'glee' / 'GLEE-Lite.json'


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope='module')
def full_state() -> dict[str, torch.Tensor]:
    """Every tensor of the manifest; values from a cheap generator (shared heads stay equal)."""
    state, shared = {}, {}
    for index, (name, shape, _) in enumerate(_manifest()['tensors']):
        key = shared_key(name)
        if key not in shared:
            shared[key] = torch.full(shape, float(index % 7) / 7.0, dtype=torch.float32)
        state[name] = shared[key] if key is not None else shared.pop(None)
    return state


def test_manifest_is_full_size_glee_lite():
    doc = _manifest()
    assert doc['variant'] == 'GLEE-Lite'
    assert doc['num_tensors'] == len(doc['tensors']) == 1153
    names = {n for n, _, _ in doc['tensors']}
    assert 'backbone.stem.conv1.weight' in names and 'lang_projection' in names


def test_full_size_state_dict_maps_every_tensor(full_state):
    conversion = convert_state(full_state)
    assert set(conversion.mapped) | set(conversion.unused) == set(full_state)
    assert not set(conversion.mapped) & set(conversion.unused)
    # Every unused tensor carries one of the documented reasons or names its shared twin.
    reasons = {why for _, why in UNUSED}
    for name, why in conversion.unused.items():
        assert why in reasons or why.startswith('the same shared tensor as '), name
    # The CLIP teacher and the visual-prompt heads are the only sizeable unused parts.
    assert all(
        n.startswith(('text_encoder_teacher.', 'sot_fuser.', 'mask_sptial_embed.', 'pn_indicator'))
        or 'label_enc' in n
        or n.startswith('predictor.confidence_score.')
        or 'bdd_' in n
        or shared_key(n) is not None
        for n in conversion.unused
    )
    config = conversion.config
    assert (config.text.width, config.text.layers, config.hidden_dim) == (512, 12, 256)
    assert (config.decoder.num_layers, config.pixel_decoder.num_layers) == (9, 6)


def test_wrapper_prefixes_are_accepted(full_state):
    wrapped = {f'module.glee.{k}': v for k, v in full_state.items()}
    conversion = convert_state(wrapped)
    assert len(conversion.mapped) + len(conversion.unused) == len(full_state)


def test_unknown_tensor_is_named(full_state):
    state = dict(full_state, **{'predictor.some_new_head.weight': torch.zeros(3)})
    with pytest.raises(ModelLoadError, match=r'predictor\.some_new_head\.weight'):
        convert_state(state)


def test_missing_tensor_is_named(full_state):
    state = dict(full_state)
    del state['pixel_decoder.mask_features.weight']
    with pytest.raises(ModelLoadError, match=r'pixel_decoder\.mask_features\.weight'):
        convert_state(state)


def test_shape_mismatch_is_named(full_state):
    state = dict(full_state)
    state['predictor.enc_output.weight'] = torch.zeros(256, 255)
    with pytest.raises(ModelLoadError, match='shape'):
        convert_state(state)


def test_differing_shared_heads_are_an_error(full_state):
    state = dict(full_state)
    name = next(n for n in state if n.startswith('predictor.decoder.bbox_embed.3.'))
    state[name] = state[name] + 1.0
    with pytest.raises(ModelLoadError, match='bbox_embed'):
        convert_state(state)


def test_wrong_variant_and_non_glee_state(full_state):
    with pytest.raises(ModelLoadError, match='GLEE-Lite file, not GLEE-Plus'):
        convert_state(full_state, variant='GLEE-Plus')
    with pytest.raises(ModelLoadError, match='not a GLEE checkpoint'):
        convert_state({'conv.weight': torch.zeros(3, 3)})


@pytest.mark.slow
def test_cli_converts_full_size_file_and_records_provenance(full_state, tmp_path):
    from mobius_ros.cli import main

    source = tmp_path / 'GLEE_Lite_joint.pth'
    torch.save(full_state, source)
    out = tmp_path / 'glee_lite.safetensors'
    assert main(['convert-glee', str(source), '-o', str(out)]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    provenance = meta['provenance']['source']
    assert provenance['name'] == source.name
    assert provenance['size'] == source.stat().st_size
    import hashlib

    assert provenance['sha256'] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert set(meta['provenance']['unused_tensors']) <= set(full_state)
    model = load_checkpoint(out)
    assert model.config.name == 'GLEE-Lite'
    lang = full_state['lang_projection']
    assert torch.equal(model.text_proj.weight, lang.t())


def _refuses_and_writes_nothing(source: Path, tmp_path: Path, match: str) -> None:
    out = tmp_path / 'out.safetensors'
    with pytest.raises(ModelLoadError, match=match):
        convert_glee(source, out)
    assert not out.exists() and not sidecar_path(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_truncated_file_writes_nothing(tmp_path):
    source = tmp_path / 'glee.pth'
    torch.save({'backbone.stem.conv1.weight': torch.zeros(64, 3, 7, 7)}, source)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    _refuses_and_writes_nothing(source, tmp_path, 'not a readable PyTorch weights file')


class _Payload:
    def __reduce__(self):
        return (print, ('code ran while loading',))


def test_pickled_code_is_refused(tmp_path, capsys):
    source = tmp_path / 'evil.pth'
    torch.save({'x': _Payload()}, source)
    _refuses_and_writes_nothing(source, tmp_path, 'not a readable PyTorch weights file')
    assert 'code ran' not in capsys.readouterr().out


def test_non_glee_file_writes_nothing(tmp_path):
    source = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(8, 3, 3, 3)}, source)
    _refuses_and_writes_nothing(source, tmp_path, 'not a GLEE checkpoint')
    (tmp_path / 'resnet.pth').unlink()
    source = tmp_path / 'list.pth'
    torch.save([torch.zeros(2)], source)
    _refuses_and_writes_nothing(source, tmp_path, 'does not hold a state dict')


def test_nested_model_key_is_read(tmp_path):
    source = tmp_path / 'nested.pth'
    torch.save({'model': {'glee.lang_projection': torch.zeros(4, 2)}}, source)
    assert list(read_glee_checkpoint(source)) == ['lang_projection']


def _plus_state() -> dict[str, torch.Tensor]:
    """Every tensor of the GLEE-Plus manifest; Swin's position indices as the model computes
    them (a buffer the file carries), everything else cheap constants (shared heads equal)."""
    from mobius_ros.model.swin import relative_position_index

    doc = json.loads((MANIFEST.parent / 'GLEE-Plus.json').read_text())
    state, shared = {}, {}
    for name, shape, dtype in doc['tensors']:
        if dtype == 'int64':
            state[name] = relative_position_index(math.isqrt(shape[0]))
            continue
        key = shared_key(name)
        if key is None:
            state[name] = torch.zeros(shape)
        else:
            state[name] = shared.setdefault(key, torch.full(shape, 0.5))
    return state


def test_glee_plus_differs_only_in_its_trunk_and_converts_in_full():
    plus = json.loads((MANIFEST.parent / 'GLEE-Plus.json').read_text())
    lite = {n for n, _, _ in _manifest()['tensors'] if not n.startswith('backbone.')}
    assert {n for n, _, _ in plus['tensors'] if not n.startswith('backbone.')} == lite
    assert plus['num_tensors'] == len(plus['tensors']) == 1245
    state = _plus_state()
    conversion = convert_state(state)
    assert set(conversion.mapped) | set(conversion.unused) == set(state)
    assert not any(n.startswith('backbone.') for n in conversion.unused)
    trunk = conversion.config.backbone
    assert trunk.name == 'd2-swin'
    assert (trunk.swin_embed_dim, trunk.swin_window) == (192, 12)
    assert (trunk.swin_depths, trunk.swin_heads) == ((2, 2, 18, 2), (6, 12, 24, 48))
    with pytest.raises(ModelLoadError, match='GLEE-Plus file, not GLEE-Lite'):
        convert_state(state, variant='GLEE-Lite')
    broken = dict(state)
    del broken['backbone.layers.2.blocks.17.mlp.fc2.weight']
    with pytest.raises(ModelLoadError, match=r'layers\.2\.blocks\.17\.mlp\.fc2\.weight'):
        convert_state(broken)
