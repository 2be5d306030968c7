"""The exported graphs themselves: TensorRT-compatible ops, dynamic axes, Polygraphy checks."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from export_fixture import Exported

from mobius_ros.export import io_spec

onnx = pytest.importorskip('onnx')

pytestmark = pytest.mark.slow  # uses the session export

# ONNX ops that TensorRT 10's ONNX parser supports (onnx-tensorrt docs/operators.md), restricted
# to the ones a network like ours could plausibly produce. An op outside this set is a graph
# that will not build on a Jetson, so a new op must be checked there before it is added here.
TENSORRT_OPS = frozenset(
    """Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Einsum Elu Equal Erf Exp
    Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Identity If
    InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max
    MaxPool Mean Min Mod Mul Neg Not Or Pad Pow PRelu Range Reciprocal ReduceL1 ReduceL2
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Sin Slice Softmax Softplus Split
    Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu Unsqueeze Where Xor""".split()  # noqa: SIM905 - a readable table
)


def _graphs(exported: Exported) -> dict[str, onnx.ModelProto]:
    return {p.stem: onnx.load(str(p)) for p in sorted(exported.directory.glob('*.onnx'))}


def test_every_op_is_supported_by_tensorrt(exported: Exported) -> None:
    for name, model in _graphs(exported).items():
        assert model.opset_import[0].version >= 17, name
        ops = {node.op_type for node in model.graph.node}
        assert ops <= TENSORRT_OPS, f'{name}: {sorted(ops - TENSORRT_OPS)}'
    # Deformable attention is grid_sample, in the encoder and in every decoder layer.
    graphs = _graphs(exported)
    for name in (io_spec.ENCODER, io_spec.decoder_layer_name(0)):
        assert 'GridSample' in {n.op_type for n in graphs[name].graph.node}, name


def test_dynamic_axes_are_symbolic_in_the_graphs(exported: Exported) -> None:
    graphs = _graphs(exported)
    specs = io_spec.graph_specs(exported.model.num_layers)
    for name, model in graphs.items():
        declared = {t.name: t for t in (*model.graph.input, *model.graph.output)}
        spec = specs[name]
        assert [t.name for t in model.graph.input] == spec.input_names
        assert [t.name for t in model.graph.output] == spec.output_names
        for tensor in (*spec.inputs, *spec.outputs):
            dims = declared[tensor.name].type.tensor_type.shape.dim
            for axis, symbol in io_spec.dynamic_axes(tensor).items():
                assert dims[axis].dim_param == symbol, (name, tensor.name, axis)
        # Fixed sizes are declared on the inputs (outputs carry inferred shapes).
        for tensor in spec.inputs:
            dims = declared[tensor.name].type.tensor_type.shape.dim
            for axis, size in enumerate(tensor.shape):
                if isinstance(size, int):
                    assert dims[axis].dim_value == size, (name, tensor.name, axis)


def _polygraphy() -> list[str]:
    if importlib.util.find_spec('polygraphy') is None:
        pytest.skip('polygraphy is not installed')
    if importlib.util.find_spec('onnx_graphsurgeon') is None:
        pytest.skip('onnx_graphsurgeon (needed by polygraphy surgeon) is not installed')
    exe = shutil.which('polygraphy', path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, '-m', 'polygraphy']


@pytest.mark.parametrize(
    ('graph', 'shapes'),
    [
        (io_spec.ENCODER, 'text_tokens:[1,9,32] text_mask:[1,9] class_embed:[1,3,32]'),
        (
            io_spec.decoder_layer_name(1),
            'queries:[1,7,32] reference_boxes:[1,7,4] class_embed_proj:[1,3,32]',
        ),
        (io_spec.TEXT_ENCODER, 'token_ids:[2,77]'),
    ],
)
def test_polygraphy_sanitize_and_onnxrt_run(
    exported: Exported, tmp_path: Path, graph: str, shapes: str
) -> None:
    # The shapes are written for MOBIUS-tiny's widths (text and hidden 32).
    text, hidden = exported.model.text_encoder.width, exported.model.pixel_decoder.dim
    shapes = shapes.replace('text_tokens:[1,9,32]', f'text_tokens:[1,9,{text}]')
    shapes = shapes.replace('class_embed:[1,3,32]', f'class_embed:[1,3,{text}]')
    shapes = shapes.replace('queries:[1,7,32]', f'queries:[1,7,{hidden}]')
    shapes = shapes.replace('class_embed_proj:[1,3,32]', f'class_embed_proj:[1,3,{hidden}]')
    polygraphy = _polygraphy()
    source = exported.directory / f'{graph}.onnx'
    clean = tmp_path / f'{graph}.sanitized.onnx'
    sanitize = subprocess.run(
        [*polygraphy, 'surgeon', 'sanitize', str(source), '--fold-constants', '-o', str(clean)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert sanitize.returncode == 0, sanitize.stdout[-2000:] + sanitize.stderr[-2000:]
    command = [*polygraphy, 'run', str(clean), '--onnxrt', '--input-shapes', *shapes.split()]
    if graph == io_spec.TEXT_ENCODER:
        # Random int64 ids must stay inside the vocabulary.
        command += ['--val-range', 'token_ids:[0,1000]']
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and 'PASSED' in run.stdout + run.stderr, run.stderr[-3000:]


def test_export_leaves_a_training_model_in_training_mode(tmp_path: Path) -> None:
    import torch

    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').train()
    options = ExportOptions(input_size=(64, 64), referring=False, full=False, text_encoder=False)
    meta = export_model(model, tmp_path / 'export', options)
    assert meta.is_file() and model.training
    assert all(m.training for m in model.modules())
