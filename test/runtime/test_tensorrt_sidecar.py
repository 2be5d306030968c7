"""Engine sidecars, the rebuild policy and optimisation-profile shapes (no TensorRT needed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mobius_ros.common.errors import ModelLoadError
from mobius_ros.export import io_spec
from mobius_ros.export.engine_cache import (
    DAMAGED,
    SIDECAR_FORMAT,
    EngineAction,
    Sidecar,
    compare,
    config_hash,
    decide,
    file_sha256,
    profile_shapes,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

EXPECTED = Sidecar(
    tensorrt_version='10.3.0',
    gpu_name='Orin',
    compute_capability='8.7',
    precision='fp16',
    profiles={'queries': [[1, 1, 64], [1, 100, 64], [1, 300, 64]]},
    onnx_sha256='ab' * 32,
    config_hash='0123456789abcdef',
)


def _engine(tmp_path: Path, sidecar: Sidecar | None = EXPECTED) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    engine = tmp_path / 'decoder_layer_0.engine'
    engine.write_bytes(b'serialized engine')
    if sidecar is not None:
        write_sidecar(engine, replace(sidecar, build_seconds=12.5, built_at='2026-01-01'))
    return engine


def test_sidecar_round_trips_through_json(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    assert sidecar_path(engine).name == 'decoder_layer_0.json'
    loaded = read_sidecar(engine)
    assert loaded.build_seconds == 12.5
    assert compare(EXPECTED, loaded) == []  # provenance-only fields do not count
    data = json.loads(sidecar_path(engine).read_text())
    assert data['tensorrt_version'] == '10.3.0' and data['format'] == SIDECAR_FORMAT == 3
    assert data['engine_size'] == len(b'serialized engine')
    assert data['engine_sha256'] == file_sha256(engine)
    with pytest.raises(ValueError, match='unknown sidecar keys'):
        Sidecar.from_dict({**data, 'colour': 'red'})
    assert not list(tmp_path.glob('*.tmp'))


@pytest.mark.parametrize(
    ('change', 'field'),
    [
        ({'tensorrt_version': '10.0.1'}, 'tensorrt_version'),
        ({'gpu_name': 'NVIDIA H100'}, 'gpu_name'),
        ({'compute_capability': '9.0'}, 'compute_capability'),
        ({'precision': 'int8'}, 'precision'),
        ({'profiles': {'queries': [[1, 1, 64], [1, 50, 64], [1, 300, 64]]}}, 'profiles'),
        ({'onnx_sha256': 'cd' * 32}, 'onnx_sha256'),
        ({'config_hash': 'ffff'}, 'config_hash'),
    ],
)
def test_every_compared_field_is_a_mismatch(change: dict, field: str) -> None:
    (mismatch,) = compare(EXPECTED, replace(EXPECTED, **change))
    # Dict fields name the one key that differs: "profiles['queries']: ...".
    assert mismatch.startswith(f"{field}['queries']:" if field == 'profiles' else f'{field}:')


def test_policy_table(tmp_path: Path) -> None:
    missing = tmp_path / 'missing.engine'
    good = _engine(tmp_path / 'good')
    stale = _engine(tmp_path / 'stale', replace(EXPECTED, tensorrt_version='8.6.1'))
    bare = _engine(tmp_path / 'bare', None)
    for policy in ('never', 'if_missing', 'if_mismatched'):
        assert decide(policy, good, EXPECTED) == (EngineAction.LOAD, [])
    assert decide('if_missing', missing, EXPECTED)[0] is EngineAction.BUILD
    assert decide('if_mismatched', missing, EXPECTED)[0] is EngineAction.BUILD
    action, reasons = decide('if_mismatched', stale, EXPECTED)
    assert action is EngineAction.BUILD and 'tensorrt_version' in reasons[0]
    for policy in ('if_missing', 'if_mismatched'):
        # No sidecar: the engine cannot be verified, which is a lost engine, not a stale one.
        action, reasons = decide(policy, bare, EXPECTED)
        assert action is EngineAction.BUILD and reasons[0].startswith(DAMAGED)
        assert 'no readable sidecar' in reasons[0]
    with pytest.raises(ModelLoadError, match='missing and build_policy is "never"'):
        decide('never', missing, EXPECTED, build_hint='mobius build-engine --onnx-dir x')
    for policy in ('never', 'if_missing'):
        with pytest.raises(ModelLoadError) as info:
            decide(policy, stale, EXPECTED)
        message = str(info.value)
        assert "'8.6.1'" in message and "'10.3.0'" in message and 'if_mismatched' in message
    with pytest.raises(ModelLoadError, match='damaged: no readable sidecar'):
        decide('never', bare, EXPECTED)
    with pytest.raises(ValueError, match='build policy'):
        decide('sometimes', good, EXPECTED)


def test_corrupt_sidecar_counts_as_mismatch(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    sidecar_path(engine).write_text('{"tensorrt_version": ')
    assert decide('if_mismatched', engine, EXPECTED)[0] is EngineAction.BUILD
    sidecar_path(engine).write_text('[1, 2]')
    assert decide('if_mismatched', engine, EXPECTED)[0] is EngineAction.BUILD


def _damage(engine: Path, how: str) -> None:
    data = engine.read_bytes()
    if how == 'truncated':
        engine.write_bytes(data[: len(data) // 2])
    elif how == 'corrupt':  # same size, one byte flipped
        engine.write_bytes(data[:3] + bytes([data[3] ^ 0xFF]) + data[4:])
    elif how == 'foreign':  # another engine's file copied over this one
        engine.write_bytes(b'another serialized engine')
    elif how == 'old_sidecar':  # a format-2 sidecar (no engine size and sha256)
        sidecar = json.loads(sidecar_path(engine).read_text())
        del sidecar['engine_size'], sidecar['engine_sha256']
        sidecar_path(engine).write_text(json.dumps({**sidecar, 'format': 2}))
    elif how == 'garbled_sidecar':
        sidecar_path(engine).write_bytes(sidecar_path(engine).read_bytes()[:40])
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    ('how', 'says'),
    [
        ('truncated', '8 bytes'),
        ('corrupt', 'sha256'),
        ('foreign', '25 bytes'),
        ('old_sidecar', 'format 2'),
        ('garbled_sidecar', 'no readable sidecar'),
    ],
)
def test_damaged_engine_is_rebuilt_unless_policy_is_never(
    tmp_path: Path, how: str, says: str
) -> None:
    engine = _engine(tmp_path)
    assert decide('if_missing', engine, EXPECTED) == (EngineAction.LOAD, [])
    _damage(engine, how)
    for policy in ('if_missing', 'if_mismatched'):
        action, (reason,) = decide(policy, engine, EXPECTED)
        assert action is EngineAction.BUILD
        # Names the damaged file: the engine, or its sidecar.
        assert reason.startswith(DAMAGED) and str(engine.with_suffix('')) in reason, reason
        assert says in reason, reason
    with pytest.raises(ModelLoadError) as info:
        decide('never', engine, EXPECTED, build_hint='mobius build-engine --onnx-dir x')
    message = str(info.value)
    assert 'is damaged' in message and says in message and 'mobius build-engine' in message
    assert 'if_missing' in message


def test_damage_wins_over_a_mismatch(tmp_path: Path) -> None:
    # A damaged engine of another TensorRT is still a lost engine: if_missing rebuilds it.
    engine = _engine(tmp_path, replace(EXPECTED, tensorrt_version='8.6.1'))
    _damage(engine, 'truncated')
    action, (reason,) = decide('if_missing', engine, EXPECTED)
    assert action is EngineAction.BUILD and reason.startswith(DAMAGED)


def test_hashes(tmp_path: Path) -> None:
    path = tmp_path / 'graph.onnx'
    path.write_bytes(b'abc')
    expected = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
    assert file_sha256(path) == expected
    assert config_hash({'a': 1, 'b': [2]}) == config_hash({'b': [2], 'a': 1})
    assert config_hash({'a': 1}) != config_hash({'a': 2})
    assert config_hash({'a': 1}, {'precision': 'fp16'}) != config_hash({'a': 1})


def test_profile_shapes_from_io_spec_symbols() -> None:
    ranges = {'Q': (1, 100, 300), 'K': (1, 80, 256), 'T': (1, 257, 2048)}
    # A decoder layer exported at C = 64: only the query axis is dynamic for `queries`.
    assert profile_shapes('queries', (1, -1, 64), io_spec.QUERIES.shape, ranges) == [
        [1, 1, 64],
        [1, 100, 64],
        [1, 300, 64],
    ]
    assert profile_shapes('memory', (1, 96, 64), io_spec.MEMORY.shape, ranges) is None
    assert profile_shapes('logits', (1, -1, -1), io_spec.LOGITS.shape, ranges) == [
        [1, 1, 1],
        [1, 100, 80],
        [1, 300, 256],
    ]
    with pytest.raises(ValueError, match="axis 1 is dynamic \\(symbol 'Q'\\)"):
        profile_shapes('queries', (1, -1, 64), io_spec.QUERIES.shape, {'K': (1, 2, 3)})
    with pytest.raises(ValueError, match='symbol None'):
        profile_shapes('unknown', (1, -1), None, ranges)
    with pytest.raises(ValueError, match='min <= opt <= max'):
        profile_shapes('queries', (1, -1, 64), io_spec.QUERIES.shape, {'Q': (5, 1, 300)})
    with pytest.raises(ValueError, match='rank'):
        profile_shapes('queries', (-1, 64), io_spec.QUERIES.shape, ranges)
