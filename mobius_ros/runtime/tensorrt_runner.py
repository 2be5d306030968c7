"""The TensorRT backend behind the common `Runner` interface (TensorRT 10 Python API + pycuda).

Kept thin on purpose: deserialize with `trt.Runtime`, enumerate named I/O tensors, set input
shapes, let TensorRT infer the output shapes, bind device addresses and `execute_async_v3` on a
pycuda stream. Device and page-locked host buffers grow on demand, because the query axis changes
every frame as pruning removes queries; they never shrink, so a steady state allocates nothing.

A Jetson runtime needs only tensorrt, pycuda and numpy here - no torch. Both are imported lazily,
inside the runner, so importing this module works anywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mobius_ros.common.errors import ModelLoadError, RunnerInputError
from mobius_ros.common.tensor_spec import TensorSpec
from mobius_ros.runtime.runner import RunnerBase, check_feeds


class _Buffer:
    """A device allocation with a page-locked host twin, grown (never shrunk) on demand."""

    def __init__(self, cuda: object, dtype: np.dtype) -> None:
        self._cuda = cuda
        self.dtype = dtype
        self.capacity = 0
        self.device: object | None = None
        self.host: np.ndarray | None = None

    def ensure(self, count: int) -> None:
        if count <= self.capacity:
            return
        # Grow with headroom so a slowly rising query count does not reallocate every frame.
        capacity = max(count, int(self.capacity * 1.5), 1)
        if self.device is not None:
            self.device.free()  # type: ignore[attr-defined]
        self.device = self._cuda.mem_alloc(capacity * self.dtype.itemsize)  # type: ignore[attr-defined]
        self.host = self._cuda.pagelocked_empty(capacity, self.dtype)  # type: ignore[attr-defined]
        self.capacity = capacity

    def free(self) -> None:
        if self.device is not None:
            self.device.free()  # type: ignore[attr-defined]
        self.device, self.host, self.capacity = None, None, 0


class TensorRTRunner(RunnerBase):
    """Runs one serialized TensorRT engine on named numpy feeds.

    Args:
        engine_path: a `.engine` file built by `export.tensorrt_build` for this GPU and TensorRT.
        device: CUDA device ordinal.
        name: label for error messages (default: the file name).

    Raises:
        ModelLoadError: TensorRT/pycuda missing, unreadable file, or an engine this TensorRT
            cannot deserialize (built by another version or for another GPU).
    """

    def __init__(
        self, engine_path: str | Path, *, device: int = 0, name: str | None = None
    ) -> None:
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as error:
            raise ModelLoadError(
                f'the TensorRT backend needs the tensorrt and pycuda packages ({error});'
                " install the 'jetson' extra or use backend 'onnxruntime'"
            ) from error
        engine_path = Path(engine_path)
        self.name = name or engine_path.name
        if not engine_path.is_file():
            raise ModelLoadError(f'TensorRT engine not found: {engine_path}')
        self._trt, self._cuda = trt, cuda
        # One execution context and one set of page-locked buffers: calls from two threads (the
        # frame worker and a service's one-shot segmentation) would overwrite each other's I/O.
        self._lock = threading.Lock()
        cuda.init()
        # The primary context, pushed around every call, so the runner may be used from any
        # thread (ROS executors call from worker threads).
        self._context_handle = cuda.Device(device).retain_primary_context()
        self._context_handle.push()
        loaded = False
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self._engine is None:
                raise ModelLoadError(
                    f'TensorRT {trt.__version__} cannot deserialize {engine_path}: it was built'
                    ' by another TensorRT version or for another GPU; rebuild it'
                    ' (`mobius build-engine`)'
                )
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            inputs, outputs, ranges = [], [], {}
            for index in range(self._engine.num_io_tensors):
                tensor = self._engine.get_tensor_name(index)
                dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(tensor)))
                shape = tuple(self._engine.get_tensor_shape(tensor))
                spec = TensorSpec(tensor, dtype.name, tuple(None if d < 0 else d for d in shape))
                if self._engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT:
                    inputs.append(spec)
                    if any(d < 0 for d in shape):
                        low, _, high = self._engine.get_tensor_profile_shape(tensor, 0)
                        ranges[tensor] = (tuple(low), tuple(high))
                else:
                    outputs.append(spec)
            self.inputs, self.outputs = tuple(inputs), tuple(outputs)
            self.profile_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = ranges
            self._buffers = {
                s.name: _Buffer(cuda, np.dtype(s.dtype)) for s in (*self.inputs, *self.outputs)
            }
            loaded = True
        finally:
            self._context_handle.pop()
            if not loaded:
                # close() is never called on a runner that failed to construct: release the
                # retained primary context here, or every refused engine leaks one reference.
                self._context_handle.detach()

    def _check_profile(self, feeds: Mapping[str, np.ndarray]) -> None:
        # TensorRT's own message for a shape outside the profile is a terse log line and a
        # False return; name the tensor, the shape and the built range instead.
        for tensor, (low, high) in self.profile_ranges.items():
            shape = feeds[tensor].shape
            if any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                raise RunnerInputError(
                    f'{self.name}: input {tensor!r} shape {list(shape)} is outside the engine'
                    f' profile {list(low)}..{list(high)}; rebuild with a wider profile'
                )

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine once; returns every output by name (host copies)."""
        if self._context is None:
            raise RuntimeError(f'{self.name}: runner is closed')
        checked = check_feeds(feeds, self.inputs, graph=self.name)
        self._check_profile(checked)
        with self._lock:
            return self._infer_locked(checked)

    def _infer_locked(self, checked: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError(f'{self.name}: runner is closed')
        cuda, stream = self._cuda, self._stream
        self._context_handle.push()
        try:
            for spec in self.inputs:
                value = checked[spec.name]
                if not self._context.set_input_shape(spec.name, value.shape):
                    raise RunnerInputError(
                        f'{self.name}: TensorRT rejected shape {list(value.shape)} for'
                        f' input {spec.name!r}'
                    )
                buffer = self._buffers[spec.name]
                buffer.ensure(max(value.size, 1))
                host = buffer.host[: value.size]  # type: ignore[index]
                np.copyto(host, value.reshape(-1))
                cuda.memcpy_htod_async(buffer.device, host, stream)
                self._context.set_tensor_address(spec.name, int(buffer.device))
            shapes: dict[str, tuple[int, ...]] = {}
            for spec in self.outputs:
                shape = tuple(self._context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(
                        f'{self.name}: output {spec.name!r} has a data-dependent shape'
                        f' {list(shape)}; this runner supports shapes set by the inputs only'
                    )
                buffer = self._buffers[spec.name]
                buffer.ensure(max(int(np.prod(shape)), 1))
                self._context.set_tensor_address(spec.name, int(buffer.device))
                shapes[spec.name] = shape
            if not self._context.execute_async_v3(stream.handle):
                raise RuntimeError(f'{self.name}: TensorRT execution failed (see its log)')
            for spec in self.outputs:
                buffer = self._buffers[spec.name]
                count = int(np.prod(shapes[spec.name]))
                cuda.memcpy_dtoh_async(buffer.host[:count], buffer.device, stream)  # type: ignore[index]
            stream.synchronize()
            # Copies: the page-locked buffers are overwritten by the next call.
            return {
                spec.name: self._buffers[spec.name]
                .host[: int(np.prod(shapes[spec.name]))]  # type: ignore[index]
                .reshape(shapes[spec.name])
                .copy()
                for spec in self.outputs
            }
        finally:
            self._context_handle.pop()

    def close(self) -> None:
        with self._lock:
            if self._context is None:
                return
            self._context_handle.push()
            try:
                for buffer in self._buffers.values():
                    buffer.free()
                self._context = None
                self._engine = None
            finally:
                self._context_handle.pop()
                self._context_handle.detach()
