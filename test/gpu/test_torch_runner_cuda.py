"""The PyTorch runner on a CUDA device: same results as on the CPU, host arrays out."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip('torch')
if not torch.cuda.is_available():
    pytest.skip('no CUDA device', allow_module_level=True)

from mobius_ros.common.tensor_spec import TensorSpec  # noqa: E402
from mobius_ros.runtime.torch_runner import TorchRunner  # noqa: E402


class Head(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, queries: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.proj(queries)[:, keep]
        return {'out': out, 'confidence': out.sigmoid().amax(-1)}


def test_cuda_matches_cpu_across_query_counts() -> None:
    torch.manual_seed(0)
    module = Head()
    specs = {
        'inputs': (
            TensorSpec('queries', 'float32', (1, 'Q', 16)),
            TensorSpec('keep', 'int64', ('K',)),
        ),
        'outputs': (
            TensorSpec('out', 'float32', (1, 'K', 16)),
            TensorSpec('confidence', 'float32', (1, 'K')),
        ),
    }
    twin = Head()
    twin.load_state_dict(module.state_dict())  # same weights, before either moves
    cpu = TorchRunner(twin, **specs)
    gpu = TorchRunner(module, device='cuda', **specs)
    rng = np.random.default_rng(0)
    for q in (300, 37, 1):
        feeds = {
            'queries': rng.standard_normal((1, q, 16)).astype(np.float32),
            'keep': np.arange(q - 1, -1, -1, dtype=np.int64)[: max(1, q // 2)],
        }
        a, b = gpu.infer(feeds), cpu.infer(feeds)
        for name in b:
            assert isinstance(a[name], np.ndarray)
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4)
