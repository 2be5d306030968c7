"""`mobius build-engine` through the real CLI dispatcher: plan, argument and error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mobius_ros.cli import main

onnx = pytest.importorskip('onnx')


def _export_dir(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    folder = tmp_path / 'export'
    folder.mkdir()
    for layer in range(2):
        inputs = [
            helper.make_tensor_value_info('queries', TensorProto.FLOAT, [1, 'Q', 8]),
            helper.make_tensor_value_info('reference_boxes', TensorProto.FLOAT, [1, 'Q', 4]),
        ]
        output = helper.make_tensor_value_info('next_queries', TensorProto.FLOAT, [1, 'Q', 8])
        node = helper.make_node('Identity', ['queries'], ['next_queries'])
        graph = helper.make_graph([node], f'layer{layer}', inputs, [output])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
        onnx.save(model, folder / f'decoder_layer_{layer}.onnx')
    meta = {'config': {'num_queries': 50}, 'export_key': 'feedc0de', 'dims': {'Q0': 50}}
    (folder / 'model.json').write_text(json.dumps(meta))
    return folder


def test_dry_run_prints_profiles_for_each_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _export_dir(tmp_path)
    args = ['build-engine', '--onnx-dir', str(folder), '--dry-run', '--queries', '1:20:50']
    assert main(args) == 0
    out = capsys.readouterr().out
    # The plan's folder, under the node's default engine_dir.
    root = Path('~/.cache/mobius_ros/engines').expanduser()
    assert f'engines: {root / "feedc0de" / "fp16"}' in out
    assert 'decoder_layer_0: sha256' in out and 'decoder_layer_1: sha256' in out
    assert 'queries: min [1, 1, 8] opt [1, 20, 8] max [1, 50, 8]' in out
    assert 'reference_boxes: min [1, 1, 4] opt [1, 20, 4] max [1, 50, 4]' in out


def test_num_queries_comes_from_model_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _export_dir(tmp_path)
    argv = ['build-engine', '--onnx-dir', str(folder), '--dry-run', '--graphs', 'decoder_layer_1']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'max [1, 50, 8]' in out and 'decoder_layer_0' not in out


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--graphs', 'nope'], "no graphs ['nope']"),
        (['--max-vocabulary', '0'], 'max_vocabulary must be >= 1'),
        (['--precision', 'int8', '--dry-run', '--graphs', 'decoder_layer_0'], None),
    ],
)
def test_errors_are_one_line_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str | None
) -> None:
    folder = _export_dir(tmp_path)
    code = main(['build-engine', '--onnx-dir', str(folder), '--dry-run', *extra])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
    else:
        assert code == 2 and message in err and 'Traceback' not in err


def test_missing_export_and_missing_tensorrt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(['build-engine', '--onnx-dir', str(tmp_path)]) == 2
    assert 'model.json' in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        folder = _export_dir(tmp_path)
        assert main(['build-engine', '--onnx-dir', str(folder), '--out', str(tmp_path / 'e')]) == 2
        assert "'jetson' extra" in capsys.readouterr().err


def test_model_json_without_export_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _export_dir(tmp_path)
    (folder / 'model.json').write_text(json.dumps({'config': {}, 'dims': {'Q0': 50}}))
    assert main(['build-engine', '--onnx-dir', str(folder), '--dry-run']) == 2
    assert 'no export_key' in capsys.readouterr().err


def test_bad_range_is_an_argument_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(['build-engine', '--onnx-dir', str(tmp_path), '--queries', '5:1:3'])
