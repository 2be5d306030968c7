"""Node parameters: the table, validation and the params files (no rclpy needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mobius_ros.ros import params

CONFIG = Path(__file__).resolve().parents[2] / 'config'


def test_defaults_are_valid_and_mobius_yaml_states_every_default() -> None:
    assert params.validate_all(params.defaults()) == []
    assert params.load_params_file(CONFIG / 'mobius.yaml') == params.defaults()


@pytest.mark.parametrize('preset', ['orin_nano.yaml', 'orin_agx.yaml', 'desktop.yaml'])
def test_presets_are_valid_overrides(preset: str) -> None:
    values = params.load_params_file(CONFIG / preset)
    assert values and set(values) <= set(params.SPECS)


@pytest.mark.parametrize(
    ('name', 'value', 'reason'),
    [
        ('score_threshold', 1.5, r'in \[0.0, 1.0\]'),
        ('score_threshold', float('nan'), 'finite'),
        ('score_threshold', 'high', 'number'),
        ('max_detections', 0, 'in'),
        ('max_detections', True, 'must be int'),
        ('backend', 'cuda', 'one of'),
        ('input_height', 100, 'multiple of 32'),
        ('vocabulary', ('',), 'blank|empty'),
        ('vocabulary', (), 'empty'),
        ('vocabulary', 'cup', 'list of strings'),
        ('pruning.trajectory', 'linear', 'one of'),
        ('nonsense', 1, 'unknown parameter'),
    ],
)
def test_bad_values_are_rejected_with_a_reason(name: str, value: object, reason: str) -> None:
    message = params.validate(name, value)
    assert message is not None
    assert re.search(reason, message, re.IGNORECASE), message


def test_cross_parameter_rule_and_good_values() -> None:
    assert params.validate('vocabulary', ('red mug', 'person')) is None
    assert params.validate('score_threshold', 1) is None  # ints are numbers
    reasons = params.validate_all({'pruning.lower': 0.5, 'pruning.upper': 0.2})
    assert reasons and 'must not exceed' in reasons[0]


def test_pruning_config_follows_the_parameters() -> None:
    values = params.defaults() | {'pruning.max_layers': 3, 'pruning.trajectory': 'none'}
    config = params.pruning_config(values)
    assert (config.max_layers, config.trajectory, config.min_keep) == (3, 'none', 100)
    assert params.pruning_config(params.defaults()).max_layers is None
    assert params.latency_budget(params.defaults()) is None


def test_unknown_keys_in_a_params_file_are_errors(tmp_path: Path) -> None:
    path = tmp_path / 'p.yaml'
    path.write_text('mobius:\n  ros__parameters:\n    score_treshold: 0.5\n')
    with pytest.raises(ValueError, match='unknown parameter'):
        params.load_params_file(path)


def test_describe_lists_every_parameter() -> None:
    table = params.describe()
    assert all(f'`{spec.name}`' in table for spec in params.PARAMETERS)
