"""TensorRT on a real GPU: build an engine from a tiny graph, run it, compare with ONNX Runtime.

Skips cleanly where tensorrt or pycuda is not installed (every development machine here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu
trt = pytest.importorskip('tensorrt')
pytest.importorskip('pycuda.driver')
onnx = pytest.importorskip('onnx')

from mobius_ros.common.errors import RunnerInputError  # noqa: E402
from mobius_ros.export.engine_cache import (  # noqa: E402
    EngineAction,
    decide,
    engine_plan,
    read_sidecar,
    write_sidecar,
)
from mobius_ros.export.tensorrt_build import (  # noqa: E402
    BuildOptions,
    build_engine,
    ensure_engine,
    environment,
    expected_sidecar,
)
from mobius_ros.runtime.runner import OnnxRuntimeRunner  # noqa: E402
from mobius_ros.runtime.tensorrt_runner import TensorRTRunner  # noqa: E402

C = 16
RANGES = {'Q': (1, 8, 32), 'K': (1, 4, 8)}


def _graph(path: Path) -> Path:
    """queries [1, Q, C], class_embed_proj [1, K, C] -> logits [1, Q, K], confidence [1, Q]."""
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info('queries', TensorProto.FLOAT, [1, 'Q', C]),
        helper.make_tensor_value_info('class_embed_proj', TensorProto.FLOAT, [1, 'K', C]),
    ]
    outputs = [
        helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, 'Q', 'K']),
        helper.make_tensor_value_info('confidence', TensorProto.FLOAT, [1, 'Q']),
    ]
    nodes = [
        helper.make_node('Transpose', ['class_embed_proj'], ['kt'], perm=[0, 2, 1]),
        helper.make_node('MatMul', ['queries', 'kt'], ['logits']),
        helper.make_node('Sigmoid', ['logits'], ['probs']),
        helper.make_node('ReduceMax', ['probs'], ['confidence'], axes=[2], keepdims=0),
    ]
    graph = helper.make_graph(nodes, 'tiny_decoder', inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope='module')
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp('trt')
    onnx_path = _graph(folder / 'decoder_layer_0.onnx')
    engine = folder / 'decoder_layer_0.engine'
    lines: list[str] = []
    build_engine(
        onnx_path,
        engine,
        BuildOptions(precision='fp32', ranges=RANGES),
        model_config={'test': 1},
        log=lines.append,
    )
    assert any('[build]' in line for line in lines)
    return onnx_path, engine


def _feeds(q: int, k: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        'queries': rng.standard_normal((1, q, C)).astype(np.float32),
        'class_embed_proj': rng.standard_normal((1, k, C)).astype(np.float32),
    }


def test_engine_matches_onnxruntime_across_query_counts(built: tuple[Path, Path]) -> None:
    onnx_path, engine = built
    reference = OnnxRuntimeRunner(onnx_path)
    with TensorRTRunner(engine) as runner:
        assert set(runner.input_names) == {'queries', 'class_embed_proj'}
        assert runner.profile_ranges['queries'] == ((1, 1, C), (1, 32, C))
        # Growing and shrinking Q exercises the on-demand buffers.
        for q, k in [(4, 2), (32, 8), (1, 1), (17, 5), (32, 8)]:
            feeds = _feeds(q, k, seed=q)
            got, want = runner.infer(feeds), reference.infer(feeds)
            for name in want:
                assert got[name].shape == want[name].shape
                np.testing.assert_allclose(got[name], want[name], rtol=1e-3, atol=1e-3)


def test_engine_rejects_shapes_outside_the_profile(built: tuple[Path, Path]) -> None:
    _, engine = built
    with TensorRTRunner(engine) as runner, pytest.raises(RunnerInputError, match='profile'):
        runner.infer(_feeds(33, 2))


def test_sidecar_describes_this_machine(built: tuple[Path, Path]) -> None:
    onnx_path, engine = built
    sidecar = read_sidecar(engine)
    env = environment()
    assert sidecar.tensorrt_version == trt.__version__ == env['tensorrt_version']
    assert sidecar.gpu_name == env['gpu_name'] and sidecar.build_seconds > 0
    options = BuildOptions(precision='fp32', ranges=RANGES)
    expected = expected_sidecar(onnx_path, options, model_config={'test': 1}, env=env)
    assert decide('never', engine, expected) == (EngineAction.LOAD, [])


def test_ensure_engine_rebuilds_a_mismatched_engine(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    onnx_path, engine = built
    meta = {'config': {'test': 1}, 'export_key': 'k', 'dims': {'Q0': 32}}
    plan = engine_plan(
        onnx_path.parent, meta, engine_root=tmp_path, precision='fp16', ranges=RANGES
    )
    # An fp32 engine where the fp16 plan looks: stale, so it is rebuilt in place.
    target = plan.engine_path(onnx_path.stem)
    target.parent.mkdir(parents=True)
    target.write_bytes(engine.read_bytes())
    write_sidecar(target, read_sidecar(engine))
    before = target.stat().st_mtime_ns
    lines: list[str] = []
    path = ensure_engine(onnx_path, plan, policy='if_mismatched', log=lines.append)
    assert path == target == tmp_path / 'k' / 'fp16' / 'decoder_layer_0.engine'
    assert target.stat().st_mtime_ns != before
    assert any('rebuilding' in line and 'precision' in line for line in lines)
    assert read_sidecar(target).precision == 'fp16'
    # Now it matches: the runtime's policy 'never' loads it, and it runs.
    assert ensure_engine(onnx_path, plan, policy='never', log=lines.append) == target
    with TensorRTRunner(target) as runner:
        assert runner.infer(_feeds(8, 4))['logits'].shape == (1, 8, 4)
