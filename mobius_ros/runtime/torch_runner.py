"""The PyTorch backend behind the common `Runner` interface.

Wraps any callable torch module that takes tensors positionally (in `inputs` order) and returns a
tensor, a tuple of tensors (in `outputs` order) or a dict keyed by output name - the same wrappers
that the ONNX export traces - so the predictor's loop runs unchanged on torch, ONNX Runtime and
TensorRT, and parity tests compare like with like. torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mobius_ros.common.tensor_spec import TensorSpec
from mobius_ros.runtime.runner import RunnerBase, check_feeds


class TorchRunner(RunnerBase):
    """Runs a torch module on numpy feeds under `torch.inference_mode`.

    Args:
        module: callable taking one tensor per input, in `inputs` order.
        inputs: the module's inputs (names, dtypes, shapes; dynamic axes as strings).
        outputs: the module's outputs, in the order it returns them.
        device: torch device string; feeds are moved there and results back to the host.
        name: label for error messages.
    """

    def __init__(
        self,
        module: Callable[..., object],
        *,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str = 'cpu',
        name: str = 'torch',
    ) -> None:
        import torch

        self._torch = torch
        self._module: Callable[..., object] | None = module
        if isinstance(module, torch.nn.Module):
            module.eval()
            module.to(device)
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.device = torch.device(device)
        self.name = name

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the module once; returns every output by name as numpy arrays."""
        if self._module is None:
            raise RuntimeError(f'{self.name}: runner is closed')
        torch = self._torch
        checked = check_feeds(feeds, self.inputs, graph=self.name)
        args = [torch.from_numpy(checked[s.name]).to(self.device) for s in self.inputs]
        with torch.inference_mode():
            result = self._module(*args)
        if isinstance(result, torch.Tensor):
            values: Sequence[object] = (result,)
        elif isinstance(result, Mapping):
            values = [result[name] for name in self.output_names]
        else:
            values = tuple(result)  # type: ignore[arg-type]
        if len(values) != len(self.outputs):
            raise RuntimeError(
                f'{self.name}: module returned {len(values)} outputs, expected'
                f' {len(self.outputs)} {list(self.output_names)}'
            )
        return {
            spec.name: value.detach().to('cpu').numpy()  # type: ignore[union-attr]
            for spec, value in zip(self.outputs, values)
        }

    def close(self) -> None:
        self._module = None
