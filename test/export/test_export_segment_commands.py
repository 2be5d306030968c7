"""`mobius export` and `mobius segment` end to end (in-process CLI calls)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from export_fixture import CANVAS, Exported

from mobius_ros.cli import main
from mobius_ros.export import io_spec
from mobius_ros.ops.masks import rle_decode

pytestmark = pytest.mark.slow  # uses the session export


def _images(folder: Path) -> list[tuple[int, int]]:
    folder.mkdir()
    sizes = [(45, 130), (80, 60)]
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f'img{i}.png'), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    (folder / 'notes.txt').write_text('not an image')
    return sizes


def _segment(exported: Exported, tmp_path: Path, *task: str) -> list[dict]:
    out = tmp_path / 'out'
    code = main(
        [
            'segment', str(tmp_path / 'images'), *task,
            '--checkpoint', str(exported.directory),
            '--input-size', *(str(v) for v in CANVAS),
            '--score-threshold', '0', '--max-detections', '3',
            '--cache-dir', str(tmp_path / 'text'), '--out', str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.glob('*.png')) == ['img0.png', 'img1.png']
    return json.loads((out / 'results.json').read_text())


def test_segment_vocabulary_writes_overlays_and_coco_rle(
    exported: Exported, tmp_path: Path
) -> None:
    sizes = _images(tmp_path / 'images')
    results = _segment(exported, tmp_path, '--vocabulary', 'red circle, blue square')
    assert [r['image_size'] for r in results] == [list(s) for s in sizes]
    for result, (h, w) in zip(results, sizes):
        assert result['task'] == 'vocabulary'
        assert result['phrases'] == ['red circle', 'blue square']
        assert len(result['instances']) == 3
        overlay = cv2.imread(str(tmp_path / 'out' / Path(result['file']).with_suffix('.png').name))
        assert overlay.shape == (h, w, 3)
        for instance in result['instances']:
            assert instance['label'] in result['phrases']
            mask = rle_decode(instance['segmentation'])
            assert mask.shape == (h, w)
            x, y, bw, bh = instance['bbox']
            assert 0 <= x <= x + bw <= w and 0 <= y <= y + bh <= h


def test_segment_expression_gives_one_instance(exported: Exported, tmp_path: Path) -> None:
    _images(tmp_path / 'images')
    results = _segment(exported, tmp_path, '--expression', 'the red circle on the left')
    assert all(r['task'] == 'referring' and len(r['instances']) == 1 for r in results)


def test_segment_reports_missing_input(tmp_path: Path) -> None:
    assert main(['segment', str(tmp_path / 'missing.png'), '--agnostic']) == 2


def test_export_command_random_variant(tmp_path: Path) -> None:
    out = tmp_path / 'export'
    code = main(
        [
            'export', '--variant', 'MOBIUS-tiny', '--out', str(out), '--input-size', '64', '64',
            '--no-full', '--no-referring', '--no-text',
        ]
    )  # fmt: skip
    assert code == 0
    meta = json.loads((out / io_spec.MODEL_JSON).read_text())
    assert meta['input_size'] == [64, 64] and meta['tokenizer'] is None
    assert set(meta['graphs']) == {'encoder', 'mask_head', 'decoder_layer_0', 'decoder_layer_1'}
    assert (
        main(['export', '--variant', 'MOBIUS-tiny', '--out', str(out), '--input-size', '60', '64'])
        == 2
    )
