"""Build `bench/results/performance.md` (the README's performance table) from the JSON results.

Every number in the tables comes from a JSON file written by a benchmark script; a file that
is missing shows up as 'not measured' with the command that makes it, never as a blank.

Run: `python -m bench.report` (reads bench/results/*.json, writes bench/results/performance.md)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

COMMANDS = {
    'runtime_peers': 'python -m bench.runtime_peers',
    'peers': 'python -m bench.peers',
    'pruning': 'python -m bench.pruning',
    'budget_curve': 'python -m bench.budget_curve',
}


def _fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers rounded, None as an en dash, ratios as given."""
    if value is None:
        return '–'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, int | float):
        return f'{value:.{digits}f}'
    return str(value).replace('|', '/').replace('\n', ' ')


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return lines


def describe_environment(payload: Mapping[str, Any]) -> str:
    """One line: CPU, threads, input size, date and the versions that matter."""
    env = payload.get('environment', {})
    packages = env.get('packages', {})
    versions = ', '.join(f'{k} {v}' for k, v in sorted(packages.items()) if v)
    size = payload.get('input_hw')
    size_text = f'{size[0]}x{size[1]}' if size else 'n/a'
    return (
        f'{env.get("cpu_model", "unknown CPU")}, {env.get("threads", "?")} threads, '
        f'input {size_text}, {env.get("repeats", "?")} interleaved repeats after '
        f'{env.get("warmup", "?")} warm-up, load {env.get("load_average_at_start")}, '
        f'{env.get("timestamp_utc", "undated")}; {versions}'
    )


def _skipped_rows(results: Sequence[Mapping[str, Any]], width: int) -> list[list[str]]:
    rows = []
    for entry in results:
        if entry.get('status') == 'skipped':
            label = entry['name']
            if entry.get('configuration'):
                label += f' ({entry["configuration"]})'
            rows.append([label, 'not measured: ' + _fmt(entry['reason'])] + [''] * (width - 2))
    return rows


def _latency_table(
    payload: Mapping[str, Any],
    columns: tuple[str, str, str, str],
    is_ours: Callable[[Mapping[str, Any]], bool],
) -> list[str]:
    """Latency rows with the paired ratio to the reference; `columns` names the first column,
    the size column, the size field of an entry and the text column."""
    first, size_header, size_key, text_header = columns
    reference = payload.get('reference') or 'reference (missing)'
    header = [
        first,
        size_header,
        'median ms',
        'p95 ms',
        f'x {reference}',
        'x (fastest runs)',
        text_header,
    ]
    rows = []
    for entry in payload['results']:
        if entry.get('status') != 'ok':
            continue
        name = f'**{entry["name"]}**' if is_ours(entry) else entry['name']
        rows.append(
            [
                name,
                _fmt(entry.get(size_key)),
                _fmt(entry['median_ms']),
                _fmt(entry['p95_ms']),
                _fmt(entry.get('ratio_to_reference'), 2),
                _fmt(entry.get('ratio_min_to_reference'), 2),
                _fmt(entry.get('text')),
            ]
        )
    return _table(header, rows + _skipped_rows(payload['results'], len(header)))


def render_peers(payload: Mapping[str, Any]) -> list[str]:
    """Peers next to MOBIUS: latency and the paired ratio to the reference model."""
    columns = ('model', 'params (M)', 'params_m', 'text per frame')
    lines = _latency_table(payload, columns, lambda entry: entry.get('kind') == 'ours')
    if payload.get('reference_missing_reason'):
        lines.append('')
        lines.append(f'No ratios: {payload["reference_missing_reason"]}.')
    return lines


def render_runtime_peers(payload: Mapping[str, Any]) -> list[str]:
    """ONNX graph against ONNX graph on ONNX Runtime: latency and the paired ratio."""
    # Our entries name the path they time (full graph or split graphs); peers do not.
    columns = ('graph', 'graph MB', 'graph_mb', 'text')
    return _latency_table(payload, columns, lambda entry: bool(entry.get('path')))


def render_pruning(payload: Mapping[str, Any]) -> list[str]:
    """Full graph vs split vs split + pruned vs GLEE-style, per variant, with ratios."""
    header = [
        'variant',
        'configuration',
        'kept queries',
        'median ms',
        'p95 ms',
        'latency ratio',
        'decoder GMACs',
        'decoder MACs ratio',
    ]
    rows = []
    for entry in payload['results']:
        if entry.get('status') != 'ok':
            continue
        rows.append(
            [
                entry['name'],
                _fmt(entry.get('configuration')),
                _fmt(entry.get('kept_queries'), 0),
                _fmt(entry['median_ms']),
                _fmt(entry['p95_ms']),
                _fmt(entry.get('latency_ratio'), 2),
                _fmt(entry.get('decoder_gmacs'), 2),
                _fmt(entry.get('decoder_macs_ratio'), 2),
            ]
        )
    lines = _table(header, rows + _skipped_rows(payload['results'], len(header)))
    if payload.get('variants_not_measured'):
        missing = ', '.join(payload['variants_not_measured'])
        lines += ['', f'Not measured (the run stopped before them): {missing}.']
    if payload.get('note'):
        lines += ['', payload['note']]
    return lines


def render_budget_curve(payload: Mapping[str, Any]) -> list[str]:
    """Achieved latency and kept queries per requested budget."""
    header = ['budget ms', 'p50 ms', 'p95 ms', 'met', 'mean kept queries', 'mean layers']
    rows = [
        [
            _fmt(entry['budget_ms'], 0),
            _fmt(entry['p50_ms']),
            _fmt(entry['p95_ms']),
            _fmt(entry.get('met')),
            _fmt(entry.get('mean_kept_queries')),
            _fmt(entry.get('mean_layers'), 2),
        ]
        for entry in payload['results']
        if entry.get('status', 'ok') == 'ok'
    ]
    lines = _table(header, rows)
    extremes = payload.get('extremes', {})
    if extremes:
        parts = []
        for label, e in extremes.items():
            stages = e.get('stage_p50_ms', {})
            parts.append(
                f'{label} rung p50 {_fmt(e["p50_ms"])} ms (encoder {_fmt(stages.get("encoder"))}, '
                f'decoder {_fmt(stages.get("decoder"))}, masks {_fmt(stages.get("masks"))})'
            )
        lines += ['', 'Ladder extremes without the controller: ' + '; '.join(parts) + '.']
    if payload.get('note'):
        lines += ['', payload['note']]
    return lines


SECTIONS = (
    ('runtime_peers', 'Same runtime: ONNX graphs on ONNX Runtime', render_runtime_peers),
    ('peers', 'Peers (random weights, network forward only)', render_peers),
    ('pruning', 'Query pruning: full graph vs split + pruned vs GLEE-style', render_pruning),
    ('budget_curve', 'Latency budget controller', render_budget_curve),
)


def load_results(directory: Path) -> dict[str, list[Any]]:
    """Results files by benchmark name: `<name>.json`, then `<name>_<part>.json` in name order.

    Parts are separate runs (e.g. the big variants measured apart); each keeps its own
    environment line, since milliseconds of different runs are not comparable.
    """
    loaded: dict[str, list[Any]] = {}
    for name, _, _ in SECTIONS:
        paths = [directory / f'{name}.json', *sorted(directory.glob(f'{name}_*.json'))]
        payloads = [json.loads(p.read_text()) for p in paths if p.exists()]
        # A part's benchmark field must match, so 'budget_curve' never swallows other files.
        payloads = [p for p in payloads if p.get('benchmark', name) == name]
        if payloads:
            loaded[name] = payloads
    return loaded


def build_report(results: Mapping[str, Any]) -> str:
    """The markdown document for `results` (as returned by `load_results`; a single payload
    per benchmark is accepted too)."""
    lines = [
        '# Performance',
        '',
        'Generated by `python -m bench.report` from the JSON in `bench/results/`; do not edit by '
        'hand. The CPU is shared, so compare ratios (measured in the same interleaved run), '
        'not milliseconds across tables.',
    ]
    for name, title, render in SECTIONS:
        lines += ['', f'## {title}', '']
        value = results.get(name)
        if not value:
            lines.append(f'Not measured yet: run `{COMMANDS[name]}`.')
            continue
        payloads = value if isinstance(value, list) else [value]
        if payloads[0].get('description'):
            lines += [payloads[0]['description'], '']
        for payload in payloads:
            lines += [f'Measured on: {describe_environment(payload)}.', '']
            if payload.get('ort_spinning'):
                lines += ['ONNX Runtime thread spinning ON (its default) in this run.', '']
            lines += [*render(payload), '']
        lines.pop()
    return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--results', type=Path, default=RESULTS_DIR)
    parser.add_argument(
        '--output', type=Path, default=None, help='default: <results>/performance.md'
    )
    args = parser.parse_args(argv)
    output = args.output or args.results / 'performance.md'
    output.write_text(build_report(load_results(args.results)))
    print(f'wrote {output}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
