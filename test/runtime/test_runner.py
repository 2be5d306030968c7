"""The runner interface: ONNX Runtime and PyTorch runners on a tiny hand-built graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobius_ros.common.errors import ModelLoadError, RunnerInputError
from mobius_ros.common.tensor_spec import TensorSpec
from mobius_ros.runtime.runner import OnnxRuntimeRunner, Runner, check_feeds

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

D = 8


def _graph(path: Path, weight: np.ndarray) -> Path:
    """queries [1, Q, D] float32, keep [K] int64 -> out = gather(queries @ W, keep), total []."""
    from onnx import TensorProto, helper, numpy_helper

    queries = helper.make_tensor_value_info('queries', TensorProto.FLOAT, [1, 'Q', D])
    keep = helper.make_tensor_value_info('keep', TensorProto.INT64, ['K'])
    out = helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, 'K', D])
    total = helper.make_tensor_value_info('total', TensorProto.FLOAT, [])
    nodes = [
        helper.make_node('MatMul', ['queries', 'W'], ['proj']),
        helper.make_node('Gather', ['proj', 'keep'], ['out'], axis=1),
        helper.make_node('ReduceSum', ['out'], ['total'], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, 'tiny', [queries, keep], [out, total], [numpy_helper.from_array(weight, 'W')]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope='module')
def weight() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((D, D)).astype(np.float32)


@pytest.fixture(scope='module')
def graph_path(tmp_path_factory: pytest.TempPathFactory, weight: np.ndarray) -> Path:
    return _graph(tmp_path_factory.mktemp('onnx') / 'tiny.onnx', weight)


def _feeds(q: int, keep: list[int]) -> dict[str, np.ndarray]:
    queries = np.random.default_rng(q).standard_normal((1, q, D)).astype(np.float32)
    return {'queries': queries, 'keep': np.asarray(keep, np.int64)}


def test_ort_runner_matches_numpy_on_dynamic_axes(graph_path: Path, weight: np.ndarray) -> None:
    with OnnxRuntimeRunner(graph_path, intra_op_threads=1) as runner:
        assert isinstance(runner, Runner)
        assert runner.input_names == ('queries', 'keep')
        assert runner.output_names == ('out', 'total')
        assert runner.inputs[0] == TensorSpec('queries', 'float32', (1, 'Q', D))
        for q, keep in [(20, [3, 0, 7]), (5, [4]), (64, list(range(63, 0, -2)))]:
            feeds = _feeds(q, keep)
            result = runner.infer(feeds)
            expected = (feeds['queries'] @ weight)[:, keep]
            np.testing.assert_allclose(result['out'], expected, rtol=1e-5, atol=1e-5)
            assert result['total'].shape == ()
            np.testing.assert_allclose(result['total'], expected.sum(), rtol=1e-4)


@pytest.mark.parametrize(
    ('feeds', 'words'),
    [
        ({'queries': np.zeros((1, 4, D), np.float32)}, ["missing inputs ['keep']"]),
        (
            {**_feeds(4, [0]), 'extra': np.zeros(1, np.float32)},
            ["unexpected inputs ['extra']"],
        ),
        (
            {'queries': np.zeros((1, 4, D), np.float64), 'keep': np.zeros(1, np.int64)},
            ["'queries'", 'float32 [1, Q, 8]', 'float64 [1, 4, 8]', 'dtype'],
        ),
        (
            {'queries': np.zeros((4, D), np.float32), 'keep': np.zeros(1, np.int64)},
            ["'queries'", 'rank'],
        ),
        (
            {'queries': np.zeros((2, 4, D), np.float32), 'keep': np.zeros(1, np.int64)},
            ["'queries'", 'axis 0 must be 1'],
        ),
        ({'queries': [[0.0]], 'keep': np.zeros(1, np.int64)}, ['numpy array', 'list']),
    ],
)
def test_bad_feeds_name_the_tensor(graph_path: Path, feeds: dict, words: list[str]) -> None:
    runner = OnnxRuntimeRunner(graph_path)
    with pytest.raises(RunnerInputError) as info:
        runner.infer(feeds)
    for word in words:
        assert word in str(info.value)
    assert 'tiny.onnx' in str(info.value)


def test_missing_graph_and_unknown_provider_are_load_errors(graph_path: Path) -> None:
    with pytest.raises(ModelLoadError, match='not found'):
        OnnxRuntimeRunner(graph_path.parent / 'nope.onnx')
    with pytest.raises(ModelLoadError, match='NoSuchExecutionProvider'):
        OnnxRuntimeRunner(graph_path, providers=['NoSuchExecutionProvider'])
    corrupt = graph_path.parent / 'corrupt.onnx'
    corrupt.write_bytes(b'not a protobuf')
    with pytest.raises(ModelLoadError, match='cannot load'):
        OnnxRuntimeRunner(corrupt)


def test_closed_runner_refuses(graph_path: Path) -> None:
    runner = OnnxRuntimeRunner(graph_path)
    runner.close()
    with pytest.raises(RuntimeError, match='closed'):
        runner.infer(_feeds(4, [0]))


def test_check_feeds_returns_contiguous_arrays() -> None:
    spec = TensorSpec('x', 'float32', (None, 3))
    x = np.zeros((3, 4), np.float32).T  # Fortran-ordered view
    assert not x.flags.c_contiguous
    out = check_feeds({'x': x}, [spec])
    assert out['x'].flags.c_contiguous
    np.testing.assert_array_equal(out['x'], x)


def test_torch_runner_agrees_with_onnxruntime(graph_path: Path, weight: np.ndarray) -> None:
    torch = pytest.importorskip('torch')
    from mobius_ros.runtime.torch_runner import TorchRunner

    w = torch.from_numpy(weight)

    class Tiny(torch.nn.Module):
        def forward(self, queries: torch.Tensor, keep: torch.Tensor) -> tuple:
            out = (queries @ w)[:, keep]
            return out, out.sum()

    ort_runner = OnnxRuntimeRunner(graph_path)
    with TorchRunner(Tiny(), inputs=ort_runner.inputs, outputs=ort_runner.outputs) as runner:
        assert isinstance(runner, Runner)
        feeds = _feeds(12, [11, 2, 5])
        a, b = runner.infer(feeds), ort_runner.infer(feeds)
        assert set(a) == {'out', 'total'}
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5)
        with pytest.raises(RunnerInputError, match="'keep'"):
            runner.infer({**feeds, 'keep': feeds['keep'].astype(np.int32)})


@pytest.mark.parametrize('spinning', [False, True])
def test_ort_thread_spinning_is_off_unless_asked(graph_path: Path, spinning: bool) -> None:
    runner = OnnxRuntimeRunner(graph_path, intra_op_threads=1, spinning=spinning)
    options = runner._session.get_session_options()
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == str(
        int(spinning)
    )
