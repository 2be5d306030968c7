"""One engine plan for `mobius build-engine` and the runtime (no TensorRT needed).

An engine "built" ahead of time where the command's plan puts it (a fake engine file plus the
sidecar that plan expects, as a real build writes it) must be loaded by the runtime's plan with
build_policy 'never'; another precision or max_vocabulary must be refused, saying why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobius_ros.cli import build_parser
from mobius_ros.commands.build_engine import plan_from_args
from mobius_ros.common.errors import ModelLoadError
from mobius_ros.export import io_spec
from mobius_ros.export.engine_cache import (
    DEFAULT_ENGINE_ROOT,
    DEFAULT_MAX_VOCABULARY,
    EngineAction,
    EnginePlan,
    engine_plan,
    file_sha256,
    read_sidecar,
    write_sidecar,
)
from mobius_ros.export.tensorrt_build import check_engine, expected_sidecar, locate_engine
from mobius_ros.runtime.backends import tensorrt_plan
from mobius_ros.runtime.exported import ExportedModel
from mobius_ros.runtime.segmenter import SegmenterConfig

onnx = pytest.importorskip('onnx')

C = 8
Q0 = 40
KEY = '0123456789abcdef'
ENV = {'tensorrt_version': '10.3.0', 'gpu_name': 'Orin', 'compute_capability': '8.7'}
# decoder_layer_0 takes the vocabulary (K); the mask head only queries (Q).
GRAPHS = {'decoder_layer_0': ('class_embed_proj', 'K'), 'mask_head': ('queries', 'Q')}


def _export(folder: Path) -> Path:
    """A minimal export folder that `ExportedModel.open` accepts."""
    from onnx import TensorProto, helper

    folder.mkdir(parents=True)
    graphs = {}
    for name, (tensor, symbol) in GRAPHS.items():
        value = helper.make_tensor_value_info(tensor, TensorProto.FLOAT, [1, symbol, C])
        out = helper.make_tensor_value_info('out', TensorProto.FLOAT, [1, symbol, C])
        node = helper.make_node('Identity', [tensor], ['out'])
        model = helper.make_model(
            helper.make_graph([node], name, [value], [out]),
            opset_imports=[helper.make_opsetid('', 13)],
        )
        onnx.save(model, folder / f'{name}.onnx')
        graphs[name] = {'file': f'{name}.onnx'}
    meta = {
        'format': io_spec.EXPORT_FORMAT,
        'config': {'name': 'tiny', 'hidden_dim': C},
        'export_key': KEY,
        'dims': {'Q0': Q0},
        'input_size': [64, 64],
        'num_layers': 1,
        'graphs': graphs,
    }
    (folder / io_spec.MODEL_JSON).write_text(json.dumps(meta))
    return folder


def _command_plan(export: Path, *flags: str) -> EnginePlan:
    args = build_parser(['build-engine']).parse_args(
        ['build-engine', '--onnx-dir', str(export), *flags]
    )
    return plan_from_args(args, json.loads((export / io_spec.MODEL_JSON).read_text()))


def _build_ahead(plan: EnginePlan, export: Path) -> None:
    """What a real build leaves behind: the engine file and the sidecar of its plan."""
    for name in GRAPHS:
        onnx_path = export / f'{name}.onnx'
        options = plan.graph_options(name)
        engine = plan.engine_path(name)
        engine.parent.mkdir(parents=True, exist_ok=True)
        engine.write_bytes(b'serialized engine')
        write_sidecar(
            engine, expected_sidecar(onnx_path, options, model_config=plan.model_config, env=ENV)
        )


def _runtime_check(export: Path, root: Path, **config: object) -> list[Path]:
    exported = ExportedModel.open(export)
    plan = tensorrt_plan(
        exported, SegmenterConfig(backend='tensorrt', engine_dir=str(root), **config)
    )
    found = []
    for name in GRAPHS:
        path, action, reasons = check_engine(
            exported.graph_path(name), plan, policy='never', env=ENV
        )
        assert (action, reasons) == (EngineAction.LOAD, [])
        found.append(path)
    return found


def test_defaults_agree_with_the_node() -> None:
    config = SegmenterConfig()
    assert config.engine_dir == DEFAULT_ENGINE_ROOT
    assert config.max_vocabulary == DEFAULT_MAX_VOCABULARY
    args = build_parser(['build-engine']).parse_args(['build-engine', '--onnx-dir', 'x'])
    assert str(args.out) == DEFAULT_ENGINE_ROOT and args.max_vocabulary == config.max_vocabulary


def test_engine_built_ahead_is_loaded_by_the_runtime(tmp_path: Path) -> None:
    export = _export(tmp_path / 'install' / 'export')
    root = tmp_path / 'cache'
    plan = _command_plan(export, '--out', str(root), '--workspace-mb', '4096')
    assert plan.directory == root / KEY / 'fp16'
    _build_ahead(plan, export)
    found = _runtime_check(export, root)
    assert found == [root / KEY / 'fp16' / f'{name}.engine' for name in GRAPHS]
    # Nothing was written into the (possibly read-only) export folder.
    assert sorted(p.name for p in export.iterdir()) == sorted(
        [io_spec.MODEL_JSON, *(f'{n}.onnx' for n in GRAPHS)]
    )
    assert read_sidecar(found[0]).precision == 'fp16'


def test_other_max_vocabulary_is_refused_naming_the_input(tmp_path: Path) -> None:
    export = _export(tmp_path / 'export')
    root = tmp_path / 'cache'
    _build_ahead(_command_plan(export, '--out', str(root), '--max-vocabulary', '128'), export)
    exported = ExportedModel.open(export)
    plan = tensorrt_plan(exported, SegmenterConfig(backend='tensorrt', engine_dir=str(root)))
    with pytest.raises(ModelLoadError) as info:
        check_engine(exported.graph_path('decoder_layer_0'), plan, policy='never', env=ENV)
    message = str(info.value)
    assert (
        "profiles['class_embed_proj']: engine has [[1, 1, 8], [1, 80, 8], [1, 128, 8]]" in message
    )
    assert '--max-vocabulary 256' in message and f'--out {root}' in message
    # The mask head never sees the vocabulary, so its engine stays valid.
    _, action, _ = check_engine(exported.graph_path('mask_head'), plan, policy='never', env=ENV)
    assert action is EngineAction.LOAD
    # The runtime hands over the hash model.json recorded (verified on open) instead of reading
    # the graph again: that hash is the one compared.
    recorded = file_sha256(exported.graph_path('mask_head'))
    _, action, _ = check_engine(exported.graph_path('mask_head'), plan, policy='never', env=ENV,
                                onnx_sha256=recorded)  # fmt: skip
    assert action is EngineAction.LOAD
    with pytest.raises(ModelLoadError, match='onnx_sha256'):
        check_engine(exported.graph_path('mask_head'), plan, policy='never', env=ENV,
                     onnx_sha256='0' * 64)  # fmt: skip
    # ... and a node configured like the build accepts all of them.
    _runtime_check(export, root, max_vocabulary=128)


def test_other_precision_is_refused_naming_the_one_found(tmp_path: Path) -> None:
    export = _export(tmp_path / 'export')
    root = tmp_path / 'cache'
    _build_ahead(_command_plan(export, '--out', str(root), '--precision', 'fp32'), export)
    exported = ExportedModel.open(export)
    plan = tensorrt_plan(exported, SegmenterConfig(backend='tensorrt', engine_dir=str(root)))
    with pytest.raises(ModelLoadError) as info:
        check_engine(exported.graph_path('mask_head'), plan, policy='never', env=ENV)
    message = str(info.value)
    assert 'missing' in message and 'precision fp32' in message and 'must match: fp16' in message
    # A stale sidecar of the right folder names the precision field itself.
    fp32 = _command_plan(export, '--out', str(root), '--precision', 'fp32')
    stale = fp32.engine_path('mask_head')
    fp16_engine = plan.engine_path('mask_head')
    fp16_engine.parent.mkdir(parents=True)
    fp16_engine.write_bytes(stale.read_bytes())
    write_sidecar(fp16_engine, read_sidecar(stale))
    with pytest.raises(ModelLoadError, match="precision: engine has 'fp32', need 'fp16'"):
        check_engine(exported.graph_path('mask_head'), plan, policy='never', env=ENV)


def test_fp32_engines_built_ahead_load_when_the_node_asks_for_fp32(tmp_path: Path) -> None:
    export = _export(tmp_path / 'export')
    root = tmp_path / 'cache'
    _build_ahead(_command_plan(export, '--out', str(root), '--precision', 'fp32'), export)
    found = _runtime_check(export, root, engine_precision='fp32')
    assert {p.parent for p in found} == {root / KEY / 'fp32'}
    with pytest.raises(ValueError, match='engine_precision'):
        SegmenterConfig(engine_precision='fp8')


def test_int8_plan_builds_only_the_encoder_in_int8(tmp_path: Path) -> None:
    meta = {'config': {}, 'export_key': KEY, 'dims': {'Q0': Q0}}
    plan = engine_plan(tmp_path, meta, engine_root=tmp_path / 'e', precision='int8')
    assert plan.directory == tmp_path / 'e' / KEY / 'int8'
    assert plan.graph_options(io_spec.ENCODER).precision == 'int8'
    assert plan.graph_options('decoder_layer_0').precision == 'fp16'


def test_plan_needs_the_export_key_and_query_count(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match='export_key'):
        engine_plan(tmp_path, {'config': {}, 'dims': {'Q0': 4}})
    with pytest.raises(ModelLoadError, match=r'dims\.Q0'):
        engine_plan(tmp_path, {'config': {}, 'export_key': KEY})
    plan = engine_plan(tmp_path, {'config': {}, 'export_key': KEY}, ranges={'Q': (1, 2, 4)})
    assert plan.options.ranges['Q'] == (1, 2, 4) and '--queries 1:2:4' in plan.build_hint
    with pytest.raises(ValueError, match='max_vocabulary'):
        engine_plan(tmp_path, {'config': {}, 'export_key': KEY}, max_vocabulary=0)


def _blocked_root(tmp_path: Path) -> Path:
    """An engine root that cannot be written by anyone, root included: a file is in the way."""
    (tmp_path / 'not-a-folder').write_text('a file where the engine cache should be')
    return tmp_path / 'not-a-folder' / 'engines'


def test_unwritable_engine_cache_builds_into_the_fallback_folder(tmp_path: Path) -> None:
    export = _export(tmp_path / 'export')
    exported = ExportedModel.open(export)
    root, fallback = _blocked_root(tmp_path), tmp_path / 'tmp-engines'
    plan = tensorrt_plan(exported, SegmenterConfig(backend='tensorrt', engine_dir=str(root)))
    graph = exported.graph_path('mask_head')
    path, action, reasons, used, problem = locate_engine(
        graph, plan, policy='if_missing', env=ENV, fallback_root=fallback
    )
    assert action is EngineAction.BUILD and problem is not None and 'Error' in problem
    assert path == fallback / KEY / 'fp16' / 'mask_head.engine'
    assert used.directory == fallback / KEY / 'fp16' and used.options == plan.options
    # What that build leaves behind is found there by the next start: loaded, not rebuilt.
    _build_ahead(used, export)
    path, action, reasons, _, problem = locate_engine(
        graph, plan, policy='if_missing', env=ENV, fallback_root=fallback
    )
    assert (path, action, reasons) == (used.engine_path('mask_head'), EngineAction.LOAD, [])
    assert problem is not None  # still said: the configured cache is still unwritable
    # Without a fallback the plan is unchanged (the build would fail with the OS error).
    path, action, _, used, problem = locate_engine(graph, plan, policy='if_missing', env=ENV)
    assert (path.parent, action, used, problem) == (plan.directory, EngineAction.BUILD, plan, None)


def test_valid_engines_load_without_a_write_probe(tmp_path: Path) -> None:
    """A deployed image may ship engines in a read-only folder: where every engine is valid,
    nothing is written (not even the probe), so they load from there."""
    export = _export(tmp_path / 'export')
    exported = ExportedModel.open(export)
    root = tmp_path / 'cache'
    plan = tensorrt_plan(exported, SegmenterConfig(backend='tensorrt', engine_dir=str(root)))
    _build_ahead(plan, export)
    fallback = tmp_path / 'tmp-engines'
    for name in GRAPHS:
        path, action, _, used, problem = locate_engine(
            exported.graph_path(name), plan, policy='if_mismatched', env=ENV,
            fallback_root=fallback,
        )  # fmt: skip
        assert (path, action, used) == (plan.engine_path(name), EngineAction.LOAD, plan)
        assert problem is None
    assert not fallback.exists()  # no write probe, no folder, where nothing had to be built
