"""The demo's budget choice and its accounts of the budget and of unanswered frames."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mobius_ros.demo.budget import budget_account, choose_budget, dropped_account


def _record(frame: int, inference_ms: float, budget_ms: float | None, kept: list[int]) -> dict:
    met = None if budget_ms is None else inference_ms <= budget_ms
    return {
        'frame': frame,
        'inference_ms': inference_ms,
        'budget_ms': budget_ms,
        'budget_met': met,
        'queries_kept': kept,
    }


def test_budget_is_a_fraction_of_the_steady_unbudgeted_median() -> None:
    # The first frame pays warm-up and is left out: median(20, 22, 30) = 22.
    assert choose_budget([90.0, 20.0, 30.0, 22.0]) == pytest.approx(19.8)
    assert choose_budget([25.0], fraction=0.5) == pytest.approx(12.5)
    with pytest.raises(ValueError, match='no frame'):
        choose_budget([])


def test_budget_account_counts_frames_under_the_budget() -> None:
    records = [
        _record(0, 30.0, None, [50, 50, 50]),
        _record(1, 26.0, None, [50, 50, 50]),
        _record(2, 19.0, 20.0, [30, 12]),
        _record(3, 21.0, 20.0, [8]),
    ]
    account = budget_account(records, {'budget_ms': 20.0, 'accepted': True})
    assert (account['frames'], account['met'], account['budget_ms']) == (2, 1, 20.0)
    assert account['mean_queries_kept_last_layer'] == {'unbudgeted': 50.0, 'budgeted': 10.0}
    assert account['mean_decoder_layers'] == {'unbudgeted': 3.0, 'budgeted': 1.5}
    assert account['inference_p95_ms'] == pytest.approx(20.9)


def _sent(count: int) -> dict[tuple[int, int], tuple[int, Any, None]]:
    return {(k, 0): (k, SimpleNamespace(name=f'scene_{k:04d}'), None) for k in range(count)}


def test_dropped_account_says_where_unanswered_frames_went() -> None:
    records = [_record(k, 20.0, None, [50]) for k in (0, 1, 3)]
    # The node processed 4 (one answer never came back) and replaced 1 waiting image.
    diagnostics = {'frames': '4', 'dropped_frames': '1', 'bad_frames': '0'}
    account = dropped_account(_sent(7), records, diagnostics)
    assert account['count'] == 4
    assert [f['frame'] for f in account['frames']] == [2, 4, 5, 6]
    assert account['superseded_in_node'] == 1 and account['bad_frames'] == 0
    assert account['not_received_by_node'] == 2 and account['answered_but_output_lost'] == 1
    assert 'newest image' in account['explanation']
    complete = dropped_account(_sent(3), [_record(k, 20.0, None, [50]) for k in range(3)], {})
    assert complete['count'] == 0 and complete['explanation'] == 'none dropped'
    assert 'not_received_by_node' not in complete  # no diagnostics: no guess
