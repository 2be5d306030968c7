"""Engine provenance sidecars and the rebuild policy (DESIGN 5, 8 issue 6; STYLE 10).

A TensorRT engine only runs on the TensorRT version and GPU it was built for, and silently
computes garbage if it was built from another ONNX file. So every `<name>.engine` has a
`<name>.json` sidecar saying what it was built from and for, and before loading we compare it
with what we would build now:

    policy          engine ok      engine missing or damaged     engine mismatched
    'never'         load           refuse                        refuse
    'if_missing'    load           build                         refuse
    'if_mismatched' load           build                         build

"refuse" is a `ModelLoadError` naming the engine, every mismatch and the command that fixes it.
"Damaged" means the engine cannot be verified: its sidecar is missing, unreadable or of another
format, or the engine file's size or sha256 differs from what the sidecar recorded when it was
written (a power cut mid-copy, a bad disk). Such a file is not an engine built for something else,
it is a lost engine, so `if_missing` rebuilds it (with one warning); "mismatched" is a verified
engine built for another GPU, TensorRT, ONNX file or config, which `if_missing` leaves to a human.

Where engines live and what they must match is decided in one place, `engine_plan`, which both
`mobius build-engine` and the runtime call: engines of an export live in
`<engine_root>/<export_key>/<precision>/` (engine_root: the writable `engine_dir`, never the
install tree), so an engine built ahead of time is exactly the one the node looks for.
Pure Python (no TensorRT), so it is tested on machines without a GPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

from mobius_ros.common import atomic
from mobius_ros.common.errors import ModelLoadError
from mobius_ros.export import io_spec

POLICIES = ('never', 'if_missing', 'if_mismatched')
PRECISIONS = ('fp32', 'fp16', 'int8')
# Format 2: the config hash covers model config, export key, precision and profiles only.
# Format 3: the sidecar records the engine file's own size and sha256.
SIDECAR_FORMAT = 3
# Starts the reason `decide` gives for rebuilding a damaged engine (callers warn about those).
DAMAGED = 'damaged: '
# Shared by `mobius build-engine` and the runtime (SegmenterConfig.engine_dir, the node's
# max_vocabulary parameter), so that both plan the same engines by default.
DEFAULT_ENGINE_ROOT = '~/.cache/mobius_ros/engines'
DEFAULT_PRECISION = 'fp16'
DEFAULT_MAX_VOCABULARY = 256

# (min, opt, max) shape of each dynamic input, as plain lists so they survive JSON unchanged.
Profiles = dict[str, list[list[int]]]


class EngineAction(str, Enum):
    LOAD = 'load'
    BUILD = 'build'


@dataclass(frozen=True)
class Sidecar:
    """What an engine was built from and for.

    Attributes:
        tensorrt_version: e.g. '10.3.0'.
        gpu_name: e.g. 'Orin (nvgpu)'.
        compute_capability: e.g. '8.7'.
        precision: 'fp32', 'fp16' or 'int8'.
        profiles: input name -> [min, opt, max] shapes of the optimisation profile.
        onnx_sha256: hash of the ONNX file the engine was built from.
        config_hash: hash of the resolved model config (`model.json`) and build options.
        input_shapes: input name -> shape as the network declared it (-1: dynamic).
        build_seconds: how long the build took.
        built_at: ISO time of the build.
        engine_size: size in bytes of the engine file (`write_sidecar` fills it in).
        engine_sha256: sha256 of the engine file (`write_sidecar` fills it in).
        format: sidecar format version.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: Profiles
    onnx_sha256: str
    config_hash: str
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    build_seconds: float = 0.0
    built_at: str = ''
    engine_size: int = -1
    engine_sha256: str = ''
    format: int = SIDECAR_FORMAT

    # Fields that decide whether an engine may be used; the rest is provenance for humans (the
    # engine's size and sha256 are checked against the file, see `engine_damage`).
    COMPARED = (
        'format',
        'tensorrt_version',
        'gpu_name',
        'compute_capability',
        'precision',
        'profiles',
        'onnx_sha256',
        'config_hash',
    )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Sidecar:
        """Inverse of `to_dict`; unknown or missing required keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f'unknown sidecar keys {unknown}')
        return cls(**data)  # type: ignore[arg-type]


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file, read in chunks (ONNX files can be hundreds of MB)."""
    return atomic.digest(path).sha256


def config_hash(*parts: Mapping[str, object]) -> str:
    """Order-independent hash of JSON-serialisable dicts (model config, build options)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sidecar_path(engine_path: str | Path) -> Path:
    """`<dir>/<name>.engine` -> `<dir>/<name>.json`."""
    return Path(engine_path).with_suffix('.json')


def write_sidecar(engine_path: str | Path, sidecar: Sidecar) -> Path:
    """Write the sidecar next to the (already written) engine, atomically and durably, with
    the engine file's size and sha256 filled in."""
    found = atomic.digest(engine_path)
    sidecar = replace(sidecar, engine_size=found.size, engine_sha256=found.sha256)
    path = sidecar_path(engine_path)
    atomic.write_text(path, json.dumps(sidecar.to_dict(), indent=2, sort_keys=True) + '\n')
    return path


def read_sidecar(engine_path: str | Path) -> Sidecar:
    """The sidecar of an engine; ValueError or OSError if it is missing or unreadable."""
    with open(sidecar_path(engine_path)) as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError('the sidecar is not a JSON object')
    return Sidecar.from_dict(data)


def engine_damage(engine_path: str | Path) -> tuple[Sidecar | None, str]:
    """The sidecar of an existing engine, or why the engine cannot be trusted ('' if it can).

    Damage: no readable sidecar, a sidecar of another format, or an engine file whose size or
    sha256 differs from the one its sidecar recorded.
    """
    engine_path = Path(engine_path)
    try:
        sidecar = read_sidecar(engine_path)
    except (OSError, ValueError, TypeError) as error:
        return None, f'no readable sidecar {sidecar_path(engine_path)} ({error})'
    if sidecar.format != SIDECAR_FORMAT:
        return None, (
            f'sidecar {sidecar_path(engine_path)} has format {sidecar.format!r}, this version'
            f' writes {SIDECAR_FORMAT} (with the size and sha256 of the engine)'
        )
    try:
        found = atomic.digest(engine_path)
    except OSError as error:
        return None, f'cannot read {engine_path} ({error})'
    if (found.size, found.sha256) != (sidecar.engine_size, sidecar.engine_sha256):
        return None, (
            f'{engine_path} has {found.size} bytes, sha256 {found.sha256[:16]}, but its sidecar'
            f' recorded {sidecar.engine_size} bytes, sha256 {sidecar.engine_sha256[:16]}'
        )
    return sidecar, ''


def compare(expected: Sidecar, actual: Sidecar) -> list[str]:
    """Human-readable mismatches between the engine we want and the one on disk (empty: ok).

    Dict fields (profiles) are compared per key, so a vocabulary range change names the one
    input whose profile differs rather than printing every profile.
    """
    reasons = []
    for name in Sidecar.COMPARED:
        have, need = _normal(getattr(actual, name)), _normal(getattr(expected, name))
        if have == need:
            continue
        if isinstance(have, dict) and isinstance(need, dict):
            reasons += [
                f'{name}[{key!r}]: engine has {have.get(key)!r}, need {need.get(key)!r}'
                for key in sorted(set(have) | set(need))
                if have.get(key) != need.get(key)
            ]
        else:
            reasons.append(f'{name}: engine has {have!r}, need {need!r}')
    return reasons


def _normal(value: object) -> object:
    # JSON turns tuples into lists; compare structure, not container types.
    return json.loads(json.dumps(value, sort_keys=True))


def decide(
    policy: str,
    engine_path: str | Path,
    expected: Sidecar,
    *,
    build_hint: str = 'mobius build-engine',
    note: str = '',
) -> tuple[EngineAction, list[str]]:
    """Load or build `engine_path` under `policy`; returns the action and why (a damaged
    engine's one reason starts with `DAMAGED`).

    Args:
        note: appended to a refusal (e.g. engines of another precision exist next door).

    Raises:
        ModelLoadError: the policy forbids the build that a missing, damaged or mismatched
            engine needs; the message lists every mismatch and names `build_hint` as the fix.
        ValueError: unknown policy.
    """
    if policy not in POLICIES:
        raise ValueError(f'build policy must be one of {POLICIES}, got {policy!r}')
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        reasons = [f'{engine_path} does not exist']
        if policy == 'never':
            raise ModelLoadError(
                f'TensorRT engine {engine_path} is missing and build_policy is "never";'
                f' build it ahead with `{build_hint}` or set build_policy "if_missing"{note}'
            )
        return EngineAction.BUILD, reasons
    actual, damage = engine_damage(engine_path)
    if actual is None:
        if policy == 'never':
            raise ModelLoadError(
                f'TensorRT engine {engine_path} is damaged: {damage}; build_policy is "never",'
                f' so rebuild it with `{build_hint}` or set build_policy "if_missing"{note}'
            )
        return EngineAction.BUILD, [DAMAGED + damage]
    reasons = compare(expected, actual)
    if not reasons:
        return EngineAction.LOAD, []
    if policy == 'if_mismatched':
        return EngineAction.BUILD, reasons
    raise ModelLoadError(
        f'TensorRT engine {engine_path} does not match this model/GPU/TensorRT:'
        + ''.join(f'\n  - {r}' for r in reasons)
        + f'\nrebuild it with `{build_hint}` or set build_policy "if_mismatched"{note}'
    )


def profile_shapes(
    name: str,
    network_shape: Sequence[int],
    symbols: Sequence[int | str | None] | None,
    ranges: Mapping[str, tuple[int, int, int]],
) -> list[list[int]] | None:
    """The [min, opt, max] shapes of one network input, or None if it is fully static.

    Args:
        name: the input's name (for errors).
        network_shape: the shape the parsed network declares, -1 on dynamic axes.
        symbols: the io_spec shape of this input (symbol names on dynamic axes), if known.
        ranges: symbol -> (min, opt, max), e.g. {'Q': (1, 100, 300)}.

    Raises:
        ValueError: a dynamic axis without a symbol or a range, or a range not min <= opt <= max.
    """
    if all(d >= 0 for d in network_shape):
        return None
    if symbols is not None and len(symbols) != len(network_shape):
        raise ValueError(
            f'input {name!r}: network rank {len(network_shape)} differs from the io spec'
            f' {list(symbols)}'
        )
    shapes: list[list[int]] = [[], [], []]
    for axis, size in enumerate(network_shape):
        if size >= 0:
            low = opt = high = int(size)
        else:
            symbol = None if symbols is None else symbols[axis]
            if not isinstance(symbol, str) or symbol not in ranges:
                raise ValueError(
                    f'input {name!r} axis {axis} is dynamic (symbol {symbol!r}) but no'
                    f' (min, opt, max) range was given for it; ranges: {dict(ranges)}'
                )
            low, opt, high = (int(v) for v in ranges[symbol])
            if not 1 <= low <= opt <= high:
                raise ValueError(f'range of {symbol!r} must satisfy 1 <= min <= opt <= max')
        for shape, value in zip(shapes, (low, opt, high)):
            shape.append(value)
    return shapes


@dataclass(frozen=True)
class BuildOptions:
    """How to build one engine.

    Attributes:
        precision: 'fp16' (default), 'fp32' or 'int8' (INT8 with FP16 fallback; needs
            calibration feeds).
        workspace_mb: builder workspace limit (a build resource, not part of the config hash).
        ranges: (min, opt, max) of each dynamic io_spec symbol ('Q', 'K', 'T', 'P').
        optimization_level: builder optimisation level 0-5 (None: TensorRT's default, 3).
    """

    precision: str = DEFAULT_PRECISION
    workspace_mb: int = 2048
    ranges: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.workspace_mb < 1:
            raise ValueError(f'workspace_mb must be >= 1, got {self.workspace_mb}')

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def default_ranges(
    num_queries: int,
    *,
    max_vocabulary: int = DEFAULT_MAX_VOCABULARY,
    max_text_tokens: int = 2048,
) -> dict[str, tuple[int, int, int]]:
    """Profile ranges for the dynamic symbols: pruning takes Q anywhere in 1..num_queries;
    the vocabulary K up to `max_vocabulary` (opt: COCO's 80, T = 257 CLIP tokens)."""
    return {
        'Q': (1, min(100, num_queries), num_queries),
        'K': (1, min(80, max_vocabulary), max_vocabulary),
        'T': (1, min(257, max_text_tokens), max_text_tokens),
        'P': (1, min(16, max_vocabulary), max_vocabulary),
    }


_RANGE_FLAGS = {'Q': '--queries', 'K': '--classes', 'T': '--text-tokens', 'P': '--phrases'}


@dataclass(frozen=True)
class EnginePlan:
    """Where the engines of one export live and what they must have been built with.

    Attributes:
        directory: `<engine_root>/<export_key>/<precision>/`.
        options: build options of the plan's precision (see `graph_options`).
        model_config: what of model.json determines an engine (model config, export key).
        export_dir: the export folder (for the fix command in messages).
        max_vocabulary: the largest vocabulary K the engines accept.
        overrides: profile ranges given explicitly instead of the defaults.
    """

    directory: Path
    options: BuildOptions
    model_config: dict[str, object]
    export_dir: Path
    max_vocabulary: int
    overrides: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def engine_path(self, graph: str) -> Path:
        return self.directory / f'{graph}.engine'

    def graph_options(self, graph: str) -> BuildOptions:
        """Options for one graph: INT8 calibrates the encoder only (the decoder layers and
        heads see encoder outputs, not images), so every other graph of an INT8 plan is FP16."""
        if self.options.precision == 'int8' and graph != io_spec.ENCODER:
            return replace(self.options, precision='fp16')
        return self.options

    @property
    def build_hint(self) -> str:
        """The `mobius build-engine` command that builds exactly these engines."""
        flags = ''.join(
            f' {_RANGE_FLAGS[s]} {":".join(map(str, r))}'
            for s, r in sorted(self.overrides.items())
        )
        return (
            f'mobius build-engine --onnx-dir {self.export_dir} --out {self.directory.parents[1]}'
            f' --precision {self.options.precision} --max-vocabulary {self.max_vocabulary}{flags}'
        )

    def note(self) -> str:
        """A hint when engines of this export exist only for other precisions."""
        others = sorted(
            p.name
            for p in self.directory.parent.glob('*')
            if p.is_dir() and p.name != self.directory.name and any(p.glob('*.engine'))
        )
        if not others:
            return ''
        return (
            f'\n(engines of this export exist for precision {", ".join(others)} in'
            f' {self.directory.parent}; the precision must match: {self.options.precision})'
        )


def engine_plan(
    export_dir: str | Path,
    meta: Mapping[str, object],
    *,
    engine_root: str | Path = DEFAULT_ENGINE_ROOT,
    precision: str = DEFAULT_PRECISION,
    max_vocabulary: int = DEFAULT_MAX_VOCABULARY,
    ranges: Mapping[str, tuple[int, int, int]] | None = None,
    workspace_mb: int = 2048,
) -> EnginePlan:
    """The one engine plan of an export, shared by `mobius build-engine` and the runtime.

    Args:
        export_dir: the export folder (`mobius export`).
        meta: its parsed model.json; needs `config`, `export_key` and `dims.Q0` (or a Q range).
        engine_root: the engine cache (`SegmenterConfig.engine_dir`), a writable folder.
        precision: 'fp16', 'fp32' or 'int8'.
        max_vocabulary: the largest vocabulary (K and the text batch P).
        ranges: explicit (min, opt, max) per symbol, replacing the defaults.

    Raises:
        ModelLoadError: model.json lacks what an engine depends on.
        ValueError: bad precision, vocabulary size or workspace.
    """
    if max_vocabulary < 1:
        raise ValueError(f'max_vocabulary must be >= 1, got {max_vocabulary}')
    overrides = dict(ranges or {})
    key, config = meta.get('export_key'), meta.get('config')
    if not isinstance(key, str) or not key or not isinstance(config, Mapping):
        raise ModelLoadError(
            f'{export_dir}/{io_spec.MODEL_JSON} has no export_key or config: re-export it'
            ' with `mobius export`'
        )
    dims = meta.get('dims')
    num_queries = dims.get('Q0') if isinstance(dims, Mapping) else None
    if 'Q' in overrides:
        num_queries = overrides['Q'][2]
    if not isinstance(num_queries, int) or num_queries < 1:
        raise ModelLoadError(
            f'{export_dir}/{io_spec.MODEL_JSON} has no dims.Q0: give the query range'
            ' (--queries MIN:OPT:MAX)'
        )
    all_ranges = {**default_ranges(num_queries, max_vocabulary=max_vocabulary), **overrides}
    return EnginePlan(
        directory=Path(engine_root).expanduser() / key / precision,
        options=BuildOptions(precision, workspace_mb, all_ranges),
        model_config={'config': dict(config), 'export_key': key},
        export_dir=Path(export_dir),
        max_vocabulary=max_vocabulary,
        overrides=overrides,
    )
