"""The performance report generator and the timing harness's arithmetic, on fixture JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.common import Timing, TimingConfig, paired_ratio, percentile, time_interleaved
from bench.report import build_report, load_results, main

ENV = {
    'cpu_model': 'Fixture CPU 9000',
    'threads': 2,
    'repeats': 5,
    'warmup': 1,
    'load_average_at_start': [1.0, 1.0, 1.0],
    'timestamp_utc': '2026-01-01T00:00:00Z',
    'packages': {'torch': '2.14.1', 'ultralytics': None},
}


def _peers() -> dict[str, Any]:
    return {
        'benchmark': 'peers',
        'input_hw': [384, 512],
        'reference': 'MOBIUS-mobile-lite',
        'environment': ENV,
        'results': [
            {
                'name': 'MOBIUS-mobile-lite',
                'status': 'ok',
                'kind': 'ours',
                'params_m': 7.25,
                'median_ms': 101.0,
                'p95_ms': 120.0,
                'ratio_to_reference': 1.0,
                'text': 'cached',
            },
            {
                'name': 'YOLOv8n-seg',
                'status': 'ok',
                'kind': 'peer',
                'params_m': 3.4,
                'median_ms': 43.21,
                'p95_ms': 50.0,
                'ratio_to_reference': 0.4279,
                'ratio_min_to_reference': 0.5051,
                'text': 'closed-set',
            },
            {
                'name': 'OmDet-Turbo-T',
                'status': 'skipped',
                'reason': 'AssertionError: height | width mismatch',
                'details': {},
            },
        ],
    }


def _runtime_peers() -> dict[str, Any]:
    return {
        'benchmark': 'runtime_peers',
        'description': 'Graph against graph.',
        'input_hw': [384, 512],
        'reference': 'YOLOv8n-seg',
        'environment': ENV,
        'results': [
            {
                'name': 'YOLOv8n-seg',
                'status': 'ok',
                'graph_mb': 13.75,
                'median_ms': 62.45,
                'p95_ms': 70.0,
                'ratio_to_reference': 1.0,
                'ratio_min_to_reference': 1.0,
                'text': 'closed-set (80 classes)',
            },
            {
                'name': 'MOBIUS-mobile-fast (full graph)',
                'status': 'ok',
                'path': 'full graph',
                'graph_mb': 25.25,
                'median_ms': 57.7,
                'p95_ms': 66.0,
                'ratio_to_reference': 0.9241,
                'ratio_min_to_reference': 0.979,
                'text': 'open vocabulary, cached',
            },
        ],
    }


def _pruning() -> dict[str, Any]:
    return {
        'benchmark': 'pruning',
        'input_hw': [384, 512],
        'environment': ENV,
        'note': 'Kept-query counts forced by threshold.',
        'variants_not_measured': ['MOBIUS-R50'],
        'results': [
            {
                'name': 'MOBIUS-mobile-lite',
                'status': 'ok',
                'configuration': 'split + pruned',
                'kept_queries': 100,
                'median_ms': 80.0,
                'p95_ms': 90.0,
                'latency_ratio': 0.777,
                'decoder_gmacs': 1.234,
                'decoder_macs_ratio': 0.345,
            },
            {
                'name': 'MOBIUS-0',
                'status': 'skipped',
                'configuration': 'full graph',
                'reason': 'fastervit is not installed',
                'details': {},
            },
        ],
    }


def _budget() -> dict[str, Any]:
    return {
        'benchmark': 'budget_curve',
        'input_hw': [384, 512],
        'environment': ENV,
        'extremes': {
            'slowest': {'p50_ms': 139.26, 'stage_p50_ms': {'encoder': 123.8, 'decoder': 12.65}},
        },
        'results': [
            {
                'budget_ms': 50,
                'p50_ms': 61.5,
                'p95_ms': 70.25,
                'met': False,
                'mean_kept_queries': 100.0,
                'mean_layers': 2.5,
            },
            {
                'budget_ms': 200,
                'p50_ms': 150.0,
                'p95_ms': 170.0,
                'met': True,
                'mean_kept_queries': 300.0,
                'mean_layers': 6.0,
            },
        ],
    }


def _rows(markdown: str, first_cell: str) -> list[list[str]]:
    """Cells of every table row whose first cell is `first_cell`."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('|') and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_peers_table_carries_numbers_and_ratios_from_json() -> None:
    report = build_report({'peers': _peers()})
    (yolo,) = _rows(report, 'YOLOv8n-seg')
    assert yolo[1:] == ['3.4', '43.2', '50.0', '0.43', '0.51', 'closed-set']
    assert _rows(report, '**MOBIUS-mobile-lite**'), 'our models are highlighted'
    assert 'x MOBIUS-mobile-lite' in report
    assert 'Fixture CPU 9000, 2 threads, input 384x512' in report


def test_runtime_peers_table_comes_first_with_ratios_to_the_peer() -> None:
    report = build_report({'runtime_peers': _runtime_peers(), 'peers': _peers()})
    (ours,) = _rows(report, '**MOBIUS-mobile-fast (full graph)**')
    assert ours[1:] == ['25.2', '57.7', '66.0', '0.92', '0.98', 'open vocabulary, cached']
    (yolo, _) = _rows(report, 'YOLOv8n-seg')
    assert yolo[1] == '13.8' and yolo[4] == '1.00'
    assert 'x YOLOv8n-seg' in report and 'Graph against graph.' in report
    assert report.index('## Same runtime') < report.index('## Peers')


def test_skipped_entries_keep_their_reason_and_stay_one_row() -> None:
    report = build_report({'peers': _peers(), 'pruning': _pruning()})
    (omdet,) = _rows(report, 'OmDet-Turbo-T')
    # A '|' inside a reason must not split the markdown row.
    assert omdet[1] == 'not measured: AssertionError: height / width mismatch'
    (mobius0,) = _rows(report, 'MOBIUS-0 (full graph)')
    assert 'fastervit is not installed' in mobius0[1]


def test_pruning_and_budget_tables() -> None:
    report = build_report({'pruning': _pruning(), 'budget_curve': _budget()})
    (pruned,) = _rows(report, 'MOBIUS-mobile-lite')
    assert pruned[1:] == ['split + pruned', '100', '80.0', '90.0', '0.78', '1.23', '0.34']
    assert 'Kept-query counts forced by threshold.' in report
    assert 'Not measured (the run stopped before them): MOBIUS-R50.' in report
    tight, loose = _rows(report, '50') + _rows(report, '200')
    assert tight[1:4] == ['61.5', '70.2', 'no']
    assert loose[3] == 'yes'
    assert 'slowest rung p50 139.3 ms (encoder 123.8, decoder 12.7, masks –)' in report


def test_missing_results_say_how_to_make_them() -> None:
    report = build_report({})
    for command in ('bench.runtime_peers', 'bench.peers', 'bench.pruning', 'bench.budget_curve'):
        assert f'Not measured yet: run `python -m {command}`.' in report


def test_main_reads_directory_and_writes_markdown(tmp_path: Path) -> None:
    (tmp_path / 'peers.json').write_text(json.dumps(_peers()))
    (tmp_path / 'unrelated.json').write_text('{}')
    big = {**_pruning(), 'ort_spinning': True}
    big['results'] = [{**big['results'][0], 'name': 'MOBIUS-R50'}]
    (tmp_path / 'pruning.json').write_text(json.dumps(_pruning()))
    (tmp_path / 'pruning_big.json').write_text(json.dumps(big))
    (tmp_path / 'pruning_other.json').write_text(json.dumps({'benchmark': 'peers'}))
    loaded = load_results(tmp_path)
    assert set(loaded) == {'peers', 'pruning'}
    assert [len(p['results']) for p in loaded['pruning']] == [2, 1]
    assert main(['--results', str(tmp_path)]) == 0
    text = (tmp_path / 'performance.md').read_text()
    assert text == build_report(load_results(tmp_path))
    assert 'YOLOv8n-seg' in text
    # Both pruning runs are tabulated, each under its own environment line.
    assert _rows(text, 'MOBIUS-R50') and _rows(text, 'MOBIUS-mobile-lite')
    assert text.count('Measured on:') == 3
    assert text.count('thread spinning ON') == 1


def test_percentile_matches_linear_interpolation() -> None:
    samples = [10.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(samples, 50) == 3.0
    assert percentile(samples, 95) == pytest.approx(4.0 + 0.8 * 6.0)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_paired_ratio_is_median_of_per_round_ratios() -> None:
    # A slow round (x10) affects both cases; the paired ratio stays 0.5.
    ours = Timing('a', (1.0, 10.0, 1.0))
    ref = Timing('b', (2.0, 20.0, 2.0))
    assert paired_ratio(ours, ref) == 0.5
    with pytest.raises(ValueError):
        paired_ratio(ours, Timing('c', (1.0,)))


def test_time_interleaved_runs_cases_round_robin() -> None:
    calls: list[str] = []
    cases = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    timings = time_interleaved(cases, TimingConfig(warmup=1, repeats=3, threads=1))
    assert calls == ['a', 'b'] * 4
    assert [len(t.samples_ms) for t in timings.values()] == [3, 3]
    assert all(s >= 0.0 for t in timings.values() for s in t.samples_ms)
