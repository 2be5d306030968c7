"""The TensorRT build path without TensorRT: profile planning from ONNX, expected sidecars,
options, and that the TensorRT modules import (and fail clearly) on a machine without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mobius_ros.common.errors import ModelLoadError
from mobius_ros.export.engine_cache import (
    BuildOptions,
    EngineAction,
    decide,
    default_ranges,
    write_sidecar,
)
from mobius_ros.export.tensorrt_build import (
    expected_sidecar,
    onnx_input_shapes,
    plan_profiles,
)

onnx = pytest.importorskip('onnx')

C = 16
ENV = {'tensorrt_version': '10.3.0', 'gpu_name': 'Orin', 'compute_capability': '8.7'}


def decoder_like_graph(path: Path, *, named: bool = True) -> Path:
    """queries [1, Q, C], memory [1, 12, C], class_embed_proj [1, K, C] -> logits [1, Q, K]."""
    from onnx import TensorProto, helper

    q, k = ('Q', 'K') if named else ('', '')
    inputs = [
        helper.make_tensor_value_info('queries', TensorProto.FLOAT, [1, q or None, C]),
        helper.make_tensor_value_info('memory', TensorProto.FLOAT, [1, 12, C]),
        helper.make_tensor_value_info('class_embed_proj', TensorProto.FLOAT, [1, k or None, C]),
    ]
    logits = helper.make_tensor_value_info('logits', TensorProto.FLOAT, [1, q or None, k or None])
    nodes = [
        helper.make_node('Transpose', ['class_embed_proj'], ['kt'], perm=[0, 2, 1]),
        helper.make_node('MatMul', ['queries', 'kt'], ['logits']),
    ]
    graph = helper.make_graph(nodes, 'decoder_like', inputs, [logits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_onnx_input_shapes_keep_dim_names(tmp_path: Path) -> None:
    shapes = onnx_input_shapes(decoder_like_graph(tmp_path / 'd.onnx'))
    assert shapes == {
        'queries': (1, 'Q', C),
        'memory': (1, 12, C),
        'class_embed_proj': (1, 'K', C),
    }


@pytest.mark.parametrize('named', [True, False])
def test_plan_profiles_covers_every_dynamic_input(tmp_path: Path, named: bool) -> None:
    path = decoder_like_graph(tmp_path / 'd.onnx', named=named)
    # Unnamed dynamic dims fall back to the io_spec symbols of the same tensor names.
    profiles = plan_profiles(path, default_ranges(300))
    assert profiles == {
        'queries': [[1, 1, C], [1, 100, C], [1, 300, C]],
        'class_embed_proj': [[1, 1, C], [1, 80, C], [1, 256, C]],
    }


def test_plan_profiles_needs_a_range_for_each_symbol(tmp_path: Path) -> None:
    path = decoder_like_graph(tmp_path / 'd.onnx')
    with pytest.raises(ValueError, match="'class_embed_proj' axis 1 is dynamic"):
        plan_profiles(path, {'Q': (1, 10, 20)})


def test_default_ranges_respect_small_models() -> None:
    ranges = default_ranges(20, max_vocabulary=8)
    assert ranges['Q'] == (1, 20, 20) and ranges['K'] == (1, 8, 8)
    assert all(low <= opt <= high for low, opt, high in ranges.values())


def test_build_options_validate_and_serialise() -> None:
    with pytest.raises(ValueError, match='precision'):
        BuildOptions(precision='fp8')
    with pytest.raises(ValueError, match='workspace'):
        BuildOptions(workspace_mb=0)
    assert BuildOptions(ranges={'Q': (1, 2, 3)}).to_dict()['ranges'] == {'Q': (1, 2, 3)}


def test_expected_sidecar_tracks_onnx_config_and_options(tmp_path: Path) -> None:
    path = decoder_like_graph(tmp_path / 'decoder_layer_0.onnx')
    options = BuildOptions(ranges=default_ranges(300))
    model = {'variant': 'MOBIUS-tiny', 'hidden_dim': C}
    expected = expected_sidecar(path, options, model_config=model, env=ENV)
    assert expected.precision == 'fp16' and expected.gpu_name == 'Orin'
    engine = tmp_path / 'decoder_layer_0.engine'
    engine.write_bytes(b'engine')
    write_sidecar(engine, expected)
    assert decide('never', engine, expected) == (EngineAction.LOAD, [])
    # Any change that makes the old engine wrong is caught.
    changed = [
        expected_sidecar(
            path,
            BuildOptions(precision='fp32', ranges=options.ranges),
            model_config=model,
            env=ENV,
        ),
        expected_sidecar(
            path, BuildOptions(ranges=default_ranges(100)), model_config=model, env=ENV
        ),
        expected_sidecar(path, options, model_config={**model, 'hidden_dim': 32}, env=ENV),
        expected_sidecar(path, options, model_config=model, env={**ENV, 'gpu_name': 'H100'}),
    ]
    for other in changed:
        with pytest.raises(ModelLoadError):
            decide('if_missing', engine, other)
    # Build resources do not change what the engine computes, so they do not invalidate it.
    roomy = BuildOptions(workspace_mb=8192, ranges=options.ranges, optimization_level=5)
    same = expected_sidecar(path, roomy, model_config=model, env=ENV)
    assert decide('never', engine, same) == (EngineAction.LOAD, [])
    decoder_like_graph(path, named=False)  # same graph, different bytes
    with pytest.raises(ModelLoadError, match='onnx_sha256'):
        decide('never', engine, expected_sidecar(path, options, model_config=model, env=ENV))


def test_tensorrt_modules_import_without_tensorrt_and_fail_clearly(tmp_path: Path) -> None:
    script = (
        'import sys\n'
        'import mobius_ros.runtime.tensorrt_runner, mobius_ros.export.tensorrt_build\n'
        "assert 'tensorrt' not in sys.modules and 'pycuda' not in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, '-c', script], check=True, timeout=60)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        from mobius_ros.runtime.tensorrt_runner import TensorRTRunner

        with pytest.raises(ModelLoadError, match="'jetson' extra"):
            TensorRTRunner(tmp_path / 'x.engine')
