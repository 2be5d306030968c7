"""Engine provenance sidecars and the rebuild policy (DESIGN 5, 8 issue 6; STYLE 10).

A TensorRT engine only runs on the TensorRT version and GPU it was built for, and silently
computes garbage if it was built from another ONNX file. So every `<name>.engine` has a
`<name>.json` sidecar saying what it was built from and for, and before loading we compare it
with what we would build now:

    policy          engine ok      engine missing     engine mismatched / no sidecar
    'never'         load           refuse             refuse
    'if_missing'    load           build              refuse
    'if_mismatched' load           build              build

"refuse" is a `ModelLoadError` naming the engine, every mismatch and the command that fixes it.
Pure Python (no TensorRT), so it is tested on machines without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path

from mobius_ros.runtime.errors import ModelLoadError

POLICIES = ('never', 'if_missing', 'if_mismatched')
PRECISIONS = ('fp32', 'fp16', 'int8')
SIDECAR_FORMAT = 1

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
    format: int = SIDECAR_FORMAT

    # Fields that decide whether an engine may be used; the rest is provenance for humans.
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
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def config_hash(*parts: Mapping[str, object]) -> str:
    """Order-independent hash of JSON-serialisable dicts (model config, build options)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sidecar_path(engine_path: str | Path) -> Path:
    """`<dir>/<name>.engine` -> `<dir>/<name>.json`."""
    return Path(engine_path).with_suffix('.json')


def write_sidecar(engine_path: str | Path, sidecar: Sidecar) -> Path:
    """Write the sidecar next to the engine, atomically (write, then rename)."""
    path = sidecar_path(engine_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as handle:
            json.dump(sidecar.to_dict(), handle, indent=2, sort_keys=True)
            handle.write('\n')
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_sidecar(engine_path: str | Path) -> Sidecar:
    """The sidecar of an engine; ValueError or OSError if it is missing or unreadable."""
    with open(sidecar_path(engine_path)) as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError('the sidecar is not a JSON object')
    return Sidecar.from_dict(data)


def compare(expected: Sidecar, actual: Sidecar) -> list[str]:
    """Human-readable mismatches between the engine we want and the one on disk (empty: ok)."""
    return [
        f'{name}: engine has {getattr(actual, name)!r}, need {getattr(expected, name)!r}'
        for name in Sidecar.COMPARED
        if _normal(getattr(actual, name)) != _normal(getattr(expected, name))
    ]


def _normal(value: object) -> object:
    # JSON turns tuples into lists; compare structure, not container types.
    return json.loads(json.dumps(value, sort_keys=True))


def decide(
    policy: str,
    engine_path: str | Path,
    expected: Sidecar,
    *,
    build_hint: str = 'mobius build-engine',
) -> tuple[EngineAction, list[str]]:
    """Load or build `engine_path` under `policy`; returns the action and why.

    Raises:
        ModelLoadError: the policy forbids the build that a missing or mismatched engine needs;
            the message lists every mismatch and names `build_hint` as the fix.
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
                f' build it ahead with `{build_hint}` or set build_policy "if_missing"'
            )
        return EngineAction.BUILD, reasons
    try:
        reasons = compare(expected, read_sidecar(engine_path))
    except (OSError, ValueError, TypeError) as error:
        reasons = [f'no readable sidecar {sidecar_path(engine_path)} ({error})']
    if not reasons:
        return EngineAction.LOAD, []
    if policy == 'if_mismatched':
        return EngineAction.BUILD, reasons
    raise ModelLoadError(
        f'TensorRT engine {engine_path} does not match this model/GPU/TensorRT:'
        + ''.join(f'\n  - {r}' for r in reasons)
        + f'\nrebuild it with `{build_hint}` or set build_policy "if_mismatched"'
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
