"""`mobius eval` on a rendered set: COCO metrics and referring P@0.5 per kind from the file."""

from __future__ import annotations

import json

import pytest

from mobius_ros.cli import main
from mobius_ros.evalrender.coco import write_set


@pytest.mark.slow
def test_eval_reads_the_referring_file(tmp_path):
    paths = write_set(tmp_path / 'set', num=3, size=96, seed=5)
    out = tmp_path / 'results.json'
    code = main(
        [
            'eval',
            '--annotations',
            str(paths['annotations']),
            '--images',
            str(paths['images']),
            '--referring',
            str(paths['referring']),
            '--size',
            '96',
            '--threads',
            '1',
            '--out',
            str(out),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())
    records = json.loads(paths['referring'].read_text())
    assert results['referring/all/count'] == len(records)
    for kind in ('attribute', 'extreme', 'relation'):
        expected = sum(r['kind'] == kind for r in records)
        if expected:
            assert results[f'referring/kind_{kind}/count'] == expected
            assert 0 <= results[f'referring/kind_{kind}/P@0.5'] <= 100
    assert 0 <= results['segm/AP'] <= 100 and 'agnostic/segm/AR100' in results


def test_eval_refuses_a_referring_record_without_its_annotation(tmp_path):
    paths = write_set(tmp_path / 'set', num=1, size=64, seed=0)
    paths['referring'].write_text(json.dumps([{'image_id': 1, 'ann_id': 999, 'sentence': 'x'}]))
    with pytest.raises(ValueError, match='annotation 999'):
        main(
            [
                'eval',
                '--annotations',
                str(paths['annotations']),
                '--images',
                str(paths['images']),
                '--referring',
                str(paths['referring']),
                '--size',
                '64',
                '--tasks',
                'referring',
            ]
        )


def test_render_eval_command_writes_the_set(tmp_path):
    assert main(['render-eval', '--out', str(tmp_path), '--num', '2', '--size', '64']) == 0
    assert len(json.loads((tmp_path / 'instances.json').read_text())['images']) == 2


def test_background_photos_is_refused_where_it_would_be_ignored(tmp_path):
    for extra in (['--renderer', 'independent'], ['--annotations', 'a.json', '--images', 'i']):
        with pytest.raises(SystemExit, match='--background-photos applies'):
            main(['eval', '--background-photos', str(tmp_path), *extra, '--out', 'x.json'])
