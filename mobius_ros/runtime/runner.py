"""One runner interface for every backend: `infer(name -> array) -> name -> array`.

PyTorch (`torch_runner.py`), ONNX Runtime (here) and TensorRT (`tensorrt_runner.py`) runners all
satisfy `Runner`, so the predictor's pruning loop is written once. Feeds are checked against the
graph's declared inputs before anything runs, because a backend's own error for a wrong dtype or
rank (or, on TensorRT, silent garbage) is far harder to read than "input 'queries' expects
float32 [1, Q, 256], got float64 [1, 20, 256]".

onnxruntime is imported lazily, inside `OnnxRuntimeRunner`, so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from mobius_ros.common.errors import ModelLoadError, RunnerInputError
from mobius_ros.common.tensor_spec import TensorSpec


@runtime_checkable
class Runner(Protocol):
    """What every backend runner offers (STYLE 8)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


_R = TypeVar('_R', bound='RunnerBase')


class RunnerBase:
    """What the concrete runners share: tensor names from their specs, and `with` support.

    Subclasses set `inputs` and `outputs` and define `infer` and `close`.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_feeds(
    feeds: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], *, graph: str = 'graph'
) -> dict[str, np.ndarray]:
    """Validate `feeds` against `specs`; return them as contiguous arrays in spec order.

    Dtypes are never converted silently: a float64 image fed to a float32 graph is a bug in the
    caller, and casting here would hide it (and cost a copy per frame).

    Raises:
        RunnerInputError: a missing or unexpected input, a non-array, a wrong dtype, a wrong
            rank, or a fixed dimension of the wrong size; the message names the tensor.
    """
    expected = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in feeds]
    extra = sorted(set(feeds) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f'missing inputs {missing}')
        if extra:
            parts.append(f'unexpected inputs {extra}')
        wanted = ', '.join(f'{s.name}: {s.describe()}' for s in specs)
        raise RunnerInputError(f'{graph}: {"; ".join(parts)} (expects {wanted})')
    checked: dict[str, np.ndarray] = {}
    for spec in specs:
        value = feeds[spec.name]
        if not isinstance(value, np.ndarray):
            raise RunnerInputError(
                f'{graph}: input {spec.name!r} must be a numpy array ({spec.describe()}),'
                f' got {type(value).__name__}'
            )
        got = f'{value.dtype} {list(value.shape)}'
        if value.dtype != np.dtype(spec.dtype):
            raise RunnerInputError(
                f'{graph}: input {spec.name!r} expects {spec.describe()}, got {got} (wrong dtype)'
            )
        if value.ndim != len(spec.shape):
            raise RunnerInputError(
                f'{graph}: input {spec.name!r} expects {spec.describe()}, got {got} (wrong rank)'
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, value.shape)):
            if isinstance(dim, int) and dim >= 0 and dim != size:
                raise RunnerInputError(
                    f'{graph}: input {spec.name!r} expects {spec.describe()}, got {got}'
                    f' (axis {axis} must be {dim})'
                )
        checked[spec.name] = np.ascontiguousarray(value)
    return checked


# ONNX Runtime's element type strings -> numpy dtype names.
_ORT_DTYPES: dict[str, str] = {
    'tensor(float)': 'float32',
    'tensor(float16)': 'float16',
    'tensor(double)': 'float64',
    'tensor(int64)': 'int64',
    'tensor(int32)': 'int32',
    'tensor(int8)': 'int8',
    'tensor(uint8)': 'uint8',
    'tensor(bool)': 'bool',
}


def _ort_spec(node: object) -> TensorSpec:
    type_name = node.type  # type: ignore[attr-defined]
    if type_name not in _ORT_DTYPES:
        raise ModelLoadError(f'tensor {node.name!r} has unsupported type {type_name}')  # type: ignore[attr-defined]
    shape = tuple(d if isinstance(d, int | str) else None for d in node.shape)  # type: ignore[attr-defined]
    return TensorSpec(node.name, _ORT_DTYPES[type_name], shape)  # type: ignore[attr-defined]


_ORT_SPINNING = 'session.intra_op.allow_spinning'


class OnnxRuntimeRunner(RunnerBase):
    """Runs one ONNX graph with ONNX Runtime.

    Args:
        path: the .onnx file.
        providers: execution providers in priority order; default CPU only, so results do not
            depend on which onnxruntime build happens to be installed. Each must be available.
        intra_op_threads: threads inside one operator (None: onnxruntime's default, all cores).
        spinning: let the intra-op threads busy-wait after each call (onnxruntime's default).
            Off by default: the predictor runs one session per split graph, and idle pools
            spinning while the next graph computes made the split path ~10x slower on a loaded
            2-core CPU (bench/README.md).
        name: label used in error messages (default: the file name).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: Sequence[str] = ('CPUExecutionProvider',),
        intra_op_threads: int | None = None,
        spinning: bool = False,
        name: str | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        self.name = name or path.name
        if not path.is_file():
            raise ModelLoadError(f'ONNX graph not found: {path}')
        available = ort.get_available_providers()
        unknown = [p for p in providers if p not in available]
        if unknown or not providers:
            raise ModelLoadError(
                f'{self.name}: execution providers {unknown or list(providers)} are not available'
                f' in this onnxruntime build (available: {available})'
            )
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = int(intra_op_threads)
        # One graph call at a time per runner: inter-op parallelism only adds thread contention.
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry(_ORT_SPINNING, '1' if spinning else '0')
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=list(providers)
            )
        except Exception as error:  # onnxruntime raises its own untyped Fail/InvalidGraph
            raise ModelLoadError(f'cannot load ONNX graph {path}: {error}') from error
        self.inputs = tuple(_ort_spec(i) for i in self._session.get_inputs())
        self.outputs = tuple(_ort_spec(o) for o in self._session.get_outputs())
        self.providers = tuple(self._session.get_providers())

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once; returns every output by name."""
        if self._session is None:
            raise RuntimeError(f'{self.name}: runner is closed')
        checked = check_feeds(feeds, self.inputs, graph=self.name)
        values = self._session.run(list(self.output_names), checked)
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self._session = None

    def __repr__(self) -> str:
        return f'OnnxRuntimeRunner({self.name!r}, providers={list(self.providers)})'
