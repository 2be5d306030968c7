"""Config dicts round-trip (also through JSON); unknown keys are errors; checkpoints round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobius_ros.model.checkpoint import (
    load_checkpoint,
    load_config,
    save_checkpoint,
    sidecar_path,
)
from mobius_ros.model.config import MobiusConfig
from mobius_ros.model.variants import VARIANTS, build_model


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_config_round_trip_through_json(name: str) -> None:
    config = VARIANTS[name]
    data = json.loads(json.dumps(config.to_dict()))
    assert MobiusConfig.from_dict(data) == config


def test_unknown_keys_are_rejected_at_every_level() -> None:
    data = VARIANTS['MOBIUS-tiny'].to_dict()
    with pytest.raises(ValueError, match='unknown MobiusConfig'):
        MobiusConfig.from_dict({**data, 'hiden_dim': 8})
    nested = json.loads(json.dumps(data))
    nested['decoder']['num_querys'] = 5
    with pytest.raises(ValueError, match='unknown DecoderConfig'):
        MobiusConfig.from_dict(nested)


def test_configs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        VARIANTS['MOBIUS-tiny'].hidden_dim = 64  # type: ignore[misc]


def test_replace_merges_nested_fields() -> None:
    config = VARIANTS['MOBIUS-tiny'].replace(hidden_dim=64, decoder={'num_queries': 7})
    assert config.hidden_dim == 64
    assert config.decoder.num_queries == 7
    assert config.decoder.num_layers == VARIANTS['MOBIUS-tiny'].decoder.num_layers


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny', decoder={'num_queries': 12}).eval()
    path = tmp_path / 'tiny.safetensors'
    side = save_checkpoint(model, path)
    assert side == sidecar_path(path) and side.is_file()
    assert load_config(path) == model.config
    loaded = load_checkpoint(path)
    assert not loaded.training
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = model(images, ['cat', 'dog'])
        b = loaded(images, ['cat', 'dog'])
    torch.testing.assert_close(a.final.logits, b.final.logits)
    torch.testing.assert_close(a.final.masks, b.final.masks)
    assert loaded.text_encoder.identity == model.text_encoder.identity


def test_checkpoint_without_text_encoder(tmp_path: Path) -> None:
    model = build_model('MOBIUS-tiny')
    path = tmp_path / 'no_text.safetensors'
    save_checkpoint(model, path, include_text_encoder=False)
    full = tmp_path / 'full.safetensors'
    save_checkpoint(model, full)
    assert path.stat().st_size < full.stat().st_size
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded.text_proj.weight, model.text_proj.weight)


def test_checkpoint_mismatch_and_missing_sidecar_fail_loudly(tmp_path: Path) -> None:
    model = build_model('MOBIUS-tiny')
    path = tmp_path / 'm.safetensors'
    side = save_checkpoint(model, path)
    meta = json.loads(side.read_text())
    meta['config']['hidden_dim'] = 64
    side.write_text(json.dumps(meta))
    with pytest.raises((ValueError, RuntimeError)):
        load_checkpoint(path)
    side.unlink()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(path)
