"""Build TensorRT engines from the exported ONNX graphs, with provenance (STYLE 10).

Through the TensorRT 10 API only (`trt.Builder`, `OnnxParser`, `BuilderConfig`): FP16 by
default, INT8 with an entropy calibrator fed by caller-given calibration feeds, a workspace
limit, one optimisation profile covering the dynamic axes (the query axis above all, which
pruning shrinks every layer), progress through an `IProgressMonitor`, and a JSON sidecar beside
every engine (`engine_cache.Sidecar`). Build failures raise with the parser's own errors.

tensorrt and pycuda are imported inside the functions that need them; the profile planning
below reads the ONNX file with `onnx` and is tested on machines without a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mobius_ros.common import atomic
from mobius_ros.common.errors import ModelLoadError
from mobius_ros.export import io_spec
from mobius_ros.export.engine_cache import (
    DAMAGED,
    BuildOptions,
    EngineAction,
    EnginePlan,
    Profiles,
    Sidecar,
    config_hash,
    decide,
    file_sha256,
    profile_shapes,
    write_sidecar,
)

Log = Callable[[str], None]
Feeds = Mapping[str, np.ndarray]


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, tuple[int | str | None, ...]]:
    """Graph inputs of an ONNX file: fixed dims as ints, dynamic ones by their name (or None).

    Reads the graph without its external weight files: only the declarations are needed.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(
            d.dim_value if d.HasField('dim_value') else (d.dim_param or None) for d in dims
        )
    return shapes


_SPEC_SYMBOLS = {
    t.name: t.shape for graph in io_spec.graph_specs(1).values() for t in graph.inputs
}


def plan_profiles(onnx_path: str | Path, ranges: Mapping[str, tuple[int, int, int]]) -> Profiles:
    """The [min, opt, max] shapes of every dynamic input of a graph.

    A dynamic axis is resolved by its ONNX dim name when `ranges` knows it, else by the io_spec
    symbol of the tensor of that name (exporters do not always keep dim names).
    """
    profiles: Profiles = {}
    for name, dims in onnx_input_shapes(onnx_path).items():
        network = tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)
        spec = _SPEC_SYMBOLS.get(name)
        symbols = tuple(
            d
            if (isinstance(d, str) and d in ranges) or spec is None or i >= len(spec)
            else spec[i]
            for i, d in enumerate(dims)
        )
        shapes = profile_shapes(name, network, symbols, ranges)
        if shapes is not None:
            profiles[name] = shapes
    return profiles


def environment(device: int = 0) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability of this machine (needs a GPU)."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    gpu = cuda.Device(device)
    major, minor = gpu.compute_capability()
    return {
        'tensorrt_version': trt.__version__,
        'gpu_name': gpu.name(),
        'compute_capability': f'{major}.{minor}',
    }


def expected_sidecar(
    onnx_path: str | Path,
    options: BuildOptions,
    *,
    model_config: Mapping[str, object],
    env: Mapping[str, str],
    onnx_sha256: str | None = None,
) -> Sidecar:
    """The sidecar an engine built now from `onnx_path` with `options` would carry.

    `onnx_sha256`: the graph's hash when the caller has just verified it (the runtime, from
    model.json), so a start does not read every graph twice; else it is computed.

    The config hash covers exactly what determines the engine: the model config (with the
    export key), the precision and this graph's profiles. Build resources (workspace,
    optimisation level) are left out, so building with more workspace does not invalidate it.
    """
    profiles = plan_profiles(onnx_path, options.ranges)
    return Sidecar(
        tensorrt_version=env['tensorrt_version'],
        gpu_name=env['gpu_name'],
        compute_capability=env['compute_capability'],
        precision=options.precision,
        profiles=profiles,
        onnx_sha256=onnx_sha256 or file_sha256(onnx_path),
        config_hash=config_hash(
            dict(model_config), {'precision': options.precision, 'profiles': profiles}
        ),
    )


def _progress_monitor(trt: object, log: Log) -> object | None:
    if not hasattr(trt, 'IProgressMonitor'):
        return None

    class _Monitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # type: ignore[attr-defined]
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self._steps[phase_name] = num_steps
            depth = '  ' if parent_phase else ''
            log(f'{depth}[build] {phase_name} ({num_steps} steps)')

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            self._steps.pop(phase_name, None)

    return _Monitor()


def _calibrator(trt: object, feeds: list[Feeds], cache: Path, log: Log) -> object:
    import pycuda.driver as cuda

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # type: ignore[attr-defined]
            self._index = 0
            self._device: dict[str, object] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(feeds):
                return None
            batch = feeds[self._index]
            self._index += 1
            log(f'[calibrate] batch {self._index}/{len(feeds)}')
            pointers = []
            for name in names:
                array = np.ascontiguousarray(batch[name])
                old = self._device.get(name)
                if old is not None:
                    old.free()  # type: ignore[attr-defined]
                self._device[name] = cuda.mem_alloc(max(array.nbytes, 1))
                cuda.memcpy_htod(self._device[name], array)
                pointers.append(int(self._device[name]))  # type: ignore[call-overload]
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: object) -> None:
            atomic.write_bytes(cache, bytes(data))  # type: ignore[call-overload]

    return _Calibrator()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    options: BuildOptions,
    *,
    model_config: Mapping[str, object],
    calibration: Iterable[Feeds] = (),
    log: Log = print,
    device: int = 0,
) -> Sidecar:
    """Build `engine_path` (+ its `.json` sidecar) from `onnx_path`; returns the sidecar.

    Raises:
        ModelLoadError: the ONNX file does not parse, INT8 without calibration feeds, or the
            builder returns no engine (its log says why).
    """
    import pycuda.driver as cuda
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    env = environment(device)
    expected = expected_sidecar(onnx_path, options, model_config=model_config, env=env)
    start = time.perf_counter()
    log(
        f'[build] {onnx_path.name} -> {engine_path} ({options.precision}, TensorRT'
        f' {env["tensorrt_version"]}, {env["gpu_name"]})'
    )
    context = cuda.Device(device).retain_primary_context()
    context.push()
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ModelLoadError(f'TensorRT cannot parse {onnx_path}:\n  ' + '\n  '.join(errors))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
        if options.optimization_level is not None:
            config.builder_optimization_level = options.optimization_level
        if options.precision in ('fp16', 'int8'):
            if not getattr(builder, 'platform_has_fast_fp16', True):
                log('[build] warning: this GPU has no fast FP16; building anyway')
            config.set_flag(trt.BuilderFlag.FP16)
        monitor = _progress_monitor(trt, log)
        if monitor is not None and hasattr(config, 'progress_monitor'):
            config.progress_monitor = monitor
        else:
            log('[build] this TensorRT reports no build phases; building (this takes minutes)')
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in expected.profiles.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        calibrator = None
        if options.precision == 'int8':
            feeds = list(calibration)
            if not feeds:
                raise ModelLoadError(
                    f'INT8 build of {onnx_path.name} needs calibration data (--calib DIR)'
                )
            if not hasattr(trt, 'IInt8EntropyCalibrator2'):
                # Implicit INT8 calibration was deprecated in TensorRT 10 and later removed.
                raise ModelLoadError(
                    f'TensorRT {trt.__version__} has no INT8 calibrator API; build fp16, or'
                    ' export an explicitly quantized (Q/DQ) ONNX model'
                )
            config.set_flag(trt.BuilderFlag.INT8)
            cache = engine_path.with_suffix('.calib')
            calibrator = _calibrator(trt, feeds, cache, log)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError(f'TensorRT failed to build {onnx_path.name} (see the log above)')
        atomic.write_bytes(engine_path, bytes(serialized))
        del calibrator
    finally:
        context.pop()
        context.detach()
    seconds = time.perf_counter() - start
    sidecar = _finish(expected, onnx_path, seconds)
    write_sidecar(engine_path, sidecar)
    log(f'[build] done in {seconds:.1f} s: {engine_path}')
    return sidecar


def _finish(expected: Sidecar, onnx_path: Path, seconds: float) -> Sidecar:
    # Provenance for humans: the declared input shapes (-1 dynamic), build time and date.
    shapes = {
        n: [d if isinstance(d, int) and d > 0 else -1 for d in dims]
        for n, dims in onnx_input_shapes(onnx_path).items()
    }
    return replace(
        expected,
        input_shapes=shapes,
        build_seconds=round(seconds, 2),
        built_at=datetime.now(timezone.utc).isoformat(timespec='seconds'),
    )


def check_engine(
    onnx_path: str | Path,
    plan: EnginePlan,
    *,
    policy: str,
    env: Mapping[str, str],
    onnx_sha256: str | None = None,
) -> tuple[Path, EngineAction, list[str]]:
    """Where the engine of `onnx_path` lives under `plan`, and whether to load or build it.

    Pure (`env` is this machine's `environment()`), so CPU tests run the runtime's decision.

    Raises:
        ModelLoadError: the policy refuses a missing or mismatched engine; the message names
            each mismatch and the `mobius build-engine` command that fixes it.
    """
    onnx_path = Path(onnx_path)
    engine_path = plan.engine_path(onnx_path.stem)
    options = plan.graph_options(onnx_path.stem)
    expected = expected_sidecar(
        onnx_path, options, model_config=plan.model_config, env=env, onnx_sha256=onnx_sha256
    )
    action, reasons = decide(
        policy, engine_path, expected, build_hint=plan.build_hint, note=plan.note()
    )
    return engine_path, action, reasons


def locate_engine(
    onnx_path: str | Path,
    plan: EnginePlan,
    *,
    policy: str,
    env: Mapping[str, str],
    onnx_sha256: str | None = None,
    fallback_root: str | Path | None = None,
) -> tuple[Path, EngineAction, list[str], EnginePlan, str | None]:
    """`check_engine`, and where an engine must be built but `plan.directory` cannot be written
    (read-only, full, a file in the way), the same check in `fallback_root` (same
    `<export_key>/<precision>/` layout), where an engine built by an earlier run may still be.

    Engines that are already valid load from a read-only folder (a deployed image). Returns the
    engine path, the action, its reasons, the plan that holds the engine and why the planned
    folder was left (None when it was not).
    """
    engine_path, action, reasons = check_engine(
        onnx_path, plan, policy=policy, env=env, onnx_sha256=onnx_sha256
    )
    if action is not EngineAction.BUILD or fallback_root is None:
        return engine_path, action, reasons, plan, None
    problem = atomic.unwritable(plan.directory)
    if problem is None:
        return engine_path, action, reasons, plan, None
    moved = replace(
        plan,
        directory=Path(fallback_root) / plan.directory.parent.name / plan.directory.name,
    )
    engine_path, action, reasons = check_engine(
        onnx_path, moved, policy=policy, env=env, onnx_sha256=onnx_sha256
    )
    return engine_path, action, reasons, moved, problem


def ensure_engine(
    onnx_path: str | Path,
    plan: EnginePlan,
    *,
    policy: str,
    calibration: Iterable[Feeds] = (),
    log: Log = print,
    warn: Log | None = None,
    device: int = 0,
    onnx_sha256: str | None = None,
    fallback_root: str | Path | None = None,
) -> Path:
    """The engine of `onnx_path` under `plan`: loaded as is, rebuilt, or refused by policy.

    Args:
        warn: where the one line about a damaged engine, or an engine folder that cannot be
            written, goes (default: `log`); a build of a missing or mismatched engine is said
            through `log`.
        onnx_sha256: the graph's already verified hash (see `expected_sidecar`).
        fallback_root: where engines go when the plan's folder cannot be written (None: the
            build fails there with the file system's error).

    Raises:
        ModelLoadError: the policy refuses a missing or mismatched engine, or the build fails.
    """
    onnx_path = Path(onnx_path)
    engine_path, action, reasons, used, problem = locate_engine(
        onnx_path,
        plan,
        policy=policy,
        env=environment(device),
        onnx_sha256=onnx_sha256,
        fallback_root=fallback_root,
    )
    if problem is not None:
        (warn or log)(
            f'[build] cannot write the engine cache {plan.directory.parents[1]} ({problem});'
            f' engines go to {used.directory.parents[1]} instead'
        )
    plan = used
    if action is EngineAction.BUILD:
        atomic.sweep_leftovers(plan.directory)  # an engine write killed midway
        verb = 'rebuilding' if engine_path.is_file() else 'building'
        damaged = any(reason.startswith(DAMAGED) for reason in reasons)
        say = (warn or log) if damaged else log
        say(f'[build] {verb} {engine_path}: ' + '; '.join(reasons))
        build_engine(
            onnx_path,
            engine_path,
            plan.graph_options(onnx_path.stem),
            model_config=plan.model_config,
            calibration=calibration,
            log=log,
            device=device,
        )
    return engine_path
