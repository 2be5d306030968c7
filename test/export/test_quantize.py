"""`mobius quantize`: an int8 copy of an export folder, and `mobius eval --export` on it.

A tiny random-init MOBIUS is exported with its text graph, calibrated on synthetic scenes and
quantised; the copy must open and run wherever an export runs, carry quantised graphs and
their provenance, stay close to the float graphs, and refuse bad input without writing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

CANVAS = (64, 96)


@pytest.fixture(scope='module')
def float_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').eval()
    directory = tmp_path_factory.mktemp('quantize') / 'float'
    export_model(model, directory, ExportOptions(input_size=CANVAS, full=False))
    return directory


@pytest.fixture(scope='module')
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    from mobius_ros.train.data.synthetic import SynthConfig, generate_scene

    folder = tmp_path_factory.mktemp('calibration')
    for index in range(6):
        scene = generate_scene(
            np.random.default_rng(index), split='val', config=SynthConfig(image_hw=(96, 128))
        )
        cv2.imwrite(str(folder / f'scene_{index}.png'), scene.image[..., ::-1])
    (folder / 'broken.png').write_bytes(b'not a png')
    return folder


@pytest.fixture(scope='module')
def int8_export(float_export: Path, scenes: Path) -> Path:
    from mobius_ros.cli import main

    out = float_export.parent / 'int8'
    rc = main(
        [
            'quantize', str(float_export), '--images', str(scenes), '-o', str(out),
            '--vocabulary', 'circle,red square', '--expression', 'the red square',
        ]
    )  # fmt: skip
    assert rc == 0
    return out


def _quantised_nodes(path: Path) -> int:
    graph = onnx.load(str(path)).graph
    return sum(node.op_type == 'QuantizeLinear' for node in graph.node)


def test_int8_copy_has_quantised_graphs_and_provenance(float_export: Path, int8_export: Path):
    from mobius_ros.runtime.exported import ExportedModel

    before = ExportedModel.open(float_export)
    after = ExportedModel.open(int8_export, verify_hashes=True)
    assert after.meta['precision'] == 'int8'
    assert after.export_key != before.export_key
    assert after.meta['quantized_from']['export_key'] == before.export_key
    assert after.meta['quantized_from']['calibration_images'] == 6  # the broken file skipped
    for name, graph in after.meta['graphs'].items():
        quantised = _quantised_nodes(int8_export / graph['file'])
        if name == 'text_encoder':
            assert quantised == 0  # runs once per phrase: kept float
        else:
            assert quantised > 0, name
            assert _quantised_nodes(float_export / graph['file']) == 0


def test_int8_encoder_stays_close_to_float(float_export: Path, int8_export: Path, scenes: Path):
    from mobius_ros.export.quantize import load_images, record_feeds
    from mobius_ros.runtime.runner import OnnxRuntimeRunner

    images, _ = load_images(scenes, 2)
    feeds = record_feeds(float_export, images, ['circle', 'red square'])['encoder']
    with (
        OnnxRuntimeRunner(float_export / 'encoder.onnx') as fp32,
        OnnxRuntimeRunner(int8_export / 'encoder.onnx') as int8,
    ):
        for feed in feeds:
            a, b = fp32.infer(feed), int8.infer(feed)
            for key in ('memory', 'mask_features'):
                correlation = np.corrcoef(a[key].ravel(), b[key].ravel())[0, 1]
                assert correlation > 0.95, (key, correlation)


def test_segmenter_and_eval_run_on_the_int8_copy(int8_export: Path, tmp_path: Path):
    from mobius_ros.cli import main
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    config = SegmenterConfig(checkpoint=str(int8_export), input_size=CANVAS, cache_dir=None)
    with Segmenter(config) as segmenter:
        prediction = segmenter.segment(np.zeros((50, 70, 3), np.uint8), phrases=['circle'])
        assert prediction.masks.shape[1:] == (50, 70)
    out = tmp_path / 'eval.json'
    args = ['eval', '--export', str(int8_export), '--num', '4', '--size', '64', '--out', str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert results['export'] == str(int8_export)
    for key in ('segm/AP', 'agnostic/segm/AR100', 'referring/all/P@0.5'):
        assert 0.0 <= results[key] <= 100.0 or results[key] == -100.0, key


def test_bad_input_is_refused_and_writes_nothing(
    float_export: Path,
    int8_export: Path,
    scenes: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    from mobius_ros.cli import main

    empty = tmp_path / 'empty'
    empty.mkdir()
    out = tmp_path / 'out'
    assert main(['quantize', str(float_export), '--images', str(empty), '-o', str(out)]) == 2
    assert 'no images' in capsys.readouterr().err and not out.exists()
    assert main(['quantize', str(int8_export), '--images', str(scenes), '-o', str(out)]) == 2
    assert 'already an int8 export' in capsys.readouterr().err and not out.exists()
    not_export = tmp_path / 'not_export'
    not_export.mkdir()
    (not_export / 'a.png').write_bytes(b'')
    assert main(['quantize', str(not_export), '--images', str(not_export), '-o', str(out)]) == 2
    assert 'not an export folder' in capsys.readouterr().err and not out.exists()
    # An existing destination is kept unless --overwrite.
    args = ['quantize', str(float_export), '--images', str(scenes), '-o', str(int8_export)]
    assert main(args) == 2
    assert '--overwrite' in capsys.readouterr().err
    assert json.loads((int8_export / 'model.json').read_text())['precision'] == 'int8'
    with pytest.raises(SystemExit):
        main(['eval', '--export', str(int8_export), '--pruning-study'])
