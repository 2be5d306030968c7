"""The node's parameters, declared once: names, defaults, descriptions, ranges, mutability.

The table is plain data so that it can be validated, documented and checked against
`config/*.yaml` without rclpy; `declare` turns it into rclpy descriptors (imported lazily).
Runtime-changeable parameters are applied through `Segmenter.configure` or the vocabulary swap;
read-only ones (model, backend, engine, input) need a new node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobius_ros.model.pruning import PruningConfig

ParamValue = bool | int | float | str | tuple[str, ...]

# The demo model's shapes (mobius_ros.train.data.synthetic.SHAPES), so the default node finds
# something in the demo scenes; robots set their own in the params file.
DEFAULT_VOCABULARY = (
    'circle',
    'square',
    'triangle',
    'star',
    'ring',
    'hexagon',
    'cross',
    'diamond',
)
TRAJECTORIES = ('sigmoid', 'logarithmic', 'exponential', 'none')


@dataclass(frozen=True)
class ParamSpec:
    """One parameter.

    Attributes:
        range: inclusive (low, high) for numbers.
        choices: allowed strings.
        read_only: fixed for the node's lifetime (rclpy rejects changes).
    """

    name: str
    default: ParamValue
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()


PARAMETERS: tuple[ParamSpec, ...] = (
    # Model and runtime: loaded in on_configure, fixed afterwards.
    ParamSpec('checkpoint', '', 'model weights; empty = the embedded demo model', read_only=True),
    ParamSpec(
        'backend',
        'onnxruntime',
        'inference backend',
        read_only=True,
        choices=('torch', 'onnxruntime', 'tensorrt'),
    ),
    ParamSpec(
        'engine_dir',
        '~/.cache/mobius_ros/engines',
        'ONNX/TensorRT engine cache (writable; never the install tree)',
        read_only=True,
    ),
    ParamSpec(
        'build_policy',
        'if_mismatched',
        'when to (re)build engines',
        read_only=True,
        choices=('never', 'if_missing', 'if_mismatched'),
    ),
    ParamSpec(
        'engine_precision',
        'fp16',
        'TensorRT engine precision (int8: build ahead with calibration images)',
        read_only=True,
        choices=('fp16', 'fp32', 'int8'),
    ),
    ParamSpec('input_height', 384, 'letterbox canvas height (multiple of 32)', True, (32, 4096)),
    ParamSpec('input_width', 512, 'letterbox canvas width (multiple of 32)', True, (32, 4096)),
    ParamSpec('device', 'cpu', "torch/onnxruntime device ('cpu', 'cuda', 'cuda:1')", True),
    ParamSpec('cache_dir', '~/.cache/mobius_ros/text', 'text-embedding cache', read_only=True),
    ParamSpec('max_vocabulary', 256, 'most phrases in a vocabulary', True, (1, 4096)),
    ParamSpec('max_phrase_chars', 200, 'longest phrase or expression', True, (1, 10000)),
    # Input.
    ParamSpec('compressed', False, 'subscribe image/compressed instead of image', True),
    ParamSpec('reliable', False, 'reliable image QoS (default: best effort)', read_only=True),
    ParamSpec('qos_depth', 1, 'image queue depth (only the newest is processed)', True, (1, 100)),
    ParamSpec(
        'stale_warn_s',
        2.0,
        'no frame for this long (or since activation) turns diagnostics WARN; 0 = off',
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        'stale_error_s',
        10.0,
        'no frame for this long turns diagnostics ERROR; 0 = off',
        range=(0.0, 3600.0),
    ),
    # What to segment: runtime-changeable.
    ParamSpec('vocabulary', DEFAULT_VOCABULARY, 'class phrases (class id k = phrase k)'),
    ParamSpec(
        'task',
        'vocabulary',
        "segment the vocabulary or 'object's",
        choices=('vocabulary', 'agnostic'),
    ),
    ParamSpec('score_threshold', 0.3, 'minimum instance score', range=(0.0, 1.0)),
    ParamSpec('max_detections', 100, 'most instances per image', range=(1, 1000)),
    ParamSpec(
        'latency_budget_ms',
        0.0,
        'p95 latency target for the pruning controller; 0 = none',
        range=(0.0, 60000.0),
    ),
    ParamSpec('pruning.trajectory', 'sigmoid', 'threshold trajectory', choices=TRAJECTORIES),
    ParamSpec('pruning.lower', 0.05, 'first-layer keep threshold', range=(0.0, 1.0)),
    ParamSpec('pruning.upper', 0.2, 'last-layer keep threshold', range=(0.0, 1.0)),
    ParamSpec('pruning.alpha', 5.0, 'exponential/logarithmic steepness', range=(0.001, 100.0)),
    ParamSpec('pruning.beta', 1.0, 'sigmoid steepness', range=(0.001, 100.0)),
    ParamSpec('pruning.min_keep', 100, 'queries always kept', range=(1, 10000)),
    ParamSpec(
        'pruning.max_layers', 0, 'early exit after this many layers; 0 = all', range=(0, 64)
    ),
    # Outputs.
    ParamSpec('publish_detections', True, 'publish detections (Detection2DArray)'),
    ParamSpec('publish_instance_mask', True, 'publish instance_mask (mono16 label image)'),
    ParamSpec('publish_segmentation', True, 'publish segmentation (InstanceSegmentation)'),
    ParamSpec('publish_instance_masks', False, 'add cropped per-instance masks to segmentation'),
    ParamSpec('diagnostics_period', 1.0, 'seconds between /diagnostics', True, (0.1, 3600.0)),
    ParamSpec('autostart', True, 'configure and activate on start', read_only=True),
    ParamSpec(
        'persist_state',
        True,
        'save the runtime vocabulary, task and latency budget; restore them on restart',
        read_only=True,
    ),
    ParamSpec(
        'state_dir',
        '',
        "where the state file goes; empty = 'state' beside cache_dir",
        read_only=True,
    ),
)
SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}
SEGMENTER_SETTINGS = frozenset(
    {'score_threshold', 'max_detections', 'latency_budget_ms'}
    | {name for name in SPECS if name.startswith('pruning.')}
)


def validate(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    spec = SPECS.get(name)
    if spec is None:
        return f'unknown parameter {name!r}'
    expected = type(spec.default)
    if expected is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            return f'{name} must be a list of strings'
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f'{name} must be a number, got {value!r}'
        if not math.isfinite(value):
            return f'{name} must be finite, got {value!r}'
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f'{name} must be {expected.__name__}, got {value!r}'
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f'{name} must be in [{spec.range[0]}, {spec.range[1]}], got {value!r}'
    if spec.choices and value not in spec.choices:
        return f'{name} must be one of {", ".join(spec.choices)}; got {value!r}'
    if name in ('input_height', 'input_width') and value % 32:
        return f'{name} must be a multiple of 32, got {value}'
    if name == 'vocabulary':
        from mobius_ros.common.errors import VocabularyError
        from mobius_ros.runtime.vocabulary import validate_phrases

        try:
            validate_phrases(list(value))
        except VocabularyError as error:
            return str(error)
    return None


def validate_all(values: Mapping[str, Any]) -> list[str]:
    """Reasons against a full or partial parameter set, including cross-parameter rules."""
    reasons = [r for name, value in values.items() if (r := validate(name, value)) is not None]
    lower = values.get('pruning.lower', SPECS['pruning.lower'].default)
    upper = values.get('pruning.upper', SPECS['pruning.upper'].default)
    if not reasons and lower > upper:
        reasons.append(f'pruning.lower ({lower}) must not exceed pruning.upper ({upper})')
    warn = values.get('stale_warn_s', SPECS['stale_warn_s'].default)
    error = values.get('stale_error_s', SPECS['stale_error_s'].default)
    if not reasons and warn > 0 and error > 0 and warn > error:
        reasons.append(f'stale_warn_s ({warn}) must not exceed stale_error_s ({error})')
    return reasons


def defaults() -> dict[str, ParamValue]:
    return {spec.name: spec.default for spec in PARAMETERS}


def pruning_config(values: Mapping[str, Any]) -> PruningConfig:
    """The pruning settings of a full parameter set."""
    max_layers = int(values['pruning.max_layers'])
    return PruningConfig(
        trajectory=str(values['pruning.trajectory']),
        lower=float(values['pruning.lower']),
        upper=float(values['pruning.upper']),
        alpha=float(values['pruning.alpha']),
        beta=float(values['pruning.beta']),
        min_keep=int(values['pruning.min_keep']),
        max_layers=max_layers or None,
    )


def latency_budget(values: Mapping[str, Any]) -> float | None:
    budget = float(values['latency_budget_ms'])
    return budget if budget > 0 else None


def segmenter_config(values: Mapping[str, Any]) -> Any:
    """The `SegmenterConfig` of a full parameter set (the runtime is imported here, lazily)."""
    from mobius_ros.runtime.segmenter import SegmenterConfig

    return SegmenterConfig(
        checkpoint=str(values['checkpoint']) or None,
        backend=str(values['backend']),
        engine_dir=str(values['engine_dir']),
        build_policy=str(values['build_policy']),
        engine_precision=str(values['engine_precision']),
        input_size=(int(values['input_height']), int(values['input_width'])),
        score_threshold=float(values['score_threshold']),
        max_detections=int(values['max_detections']),
        pruning=pruning_config(values),
        latency_budget_ms=latency_budget(values),
        max_vocabulary=int(values['max_vocabulary']),
        max_phrase_chars=int(values['max_phrase_chars']),
        cache_dir=str(values['cache_dir']),
        device=str(values['device']),
    )


def load_params_file(path: Path, node_name: str = 'mobius') -> dict[str, Any]:
    """The `ros__parameters` of `node_name` (or `/**`) in a ROS 2 params YAML, flattened.

    Raises:
        ValueError: unknown parameters or invalid values (each reason listed).
    """
    import yaml

    document = yaml.safe_load(Path(path).read_text()) or {}
    section = None
    for key in (node_name, f'/{node_name}', '/**', '**'):
        if key in document:
            section = document[key].get('ros__parameters', {})
            break
    if section is None:
        raise ValueError(f'{path}: no section for node {node_name!r} or /**')
    flat = _flatten(section)
    flat = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}
    reasons = validate_all(flat)
    if reasons:
        raise ValueError(f'{path}: ' + '; '.join(reasons))
    return flat


def _flatten(section: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def declare(node: Any) -> dict[str, ParamValue]:
    """Declare every parameter on an rclpy node; return the values in effect (with overrides)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values: dict[str, ParamValue] = {}
    for spec in PARAMETERS:
        descriptor = ParameterDescriptor(
            name=spec.name, description=spec.description, read_only=spec.read_only
        )
        if spec.choices:
            descriptor.additional_constraints = 'one of: ' + ', '.join(spec.choices)
        if spec.range is not None and isinstance(spec.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=spec.range[0], to_value=spec.range[1], step=0.0)
            ]
        elif spec.range is not None:
            descriptor.integer_range = [
                IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)
            ]
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        value = node.declare_parameter(spec.name, default, descriptor).value
        values[spec.name] = tuple(value) if isinstance(value, list) else value
    return values


def describe(specs: Sequence[ParamSpec] = PARAMETERS) -> str:
    """A Markdown table of the parameters (for the README)."""
    lines = [
        '| parameter | default | range / choices | changeable | description |',
        '|---|---|---|---|---|',
    ]
    for spec in specs:
        limits = ', '.join(spec.choices) if spec.choices else (
            f'{spec.range[0]}..{spec.range[1]}' if spec.range else '')  # fmt: skip
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        lines.append(
            f'| `{spec.name}` | `{default}` | {limits} | {"no" if spec.read_only else "yes"}'
            f' | {spec.description} |'
        )
    return '\n'.join(lines)
