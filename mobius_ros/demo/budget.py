"""The demo's latency-budget step and its account of frames the node did not answer.

`set_budget` is what a robot team does with `ros2 param set /mobius latency_budget_ms ...`
partway through a run: first a budget under the node's feasible floor (refused, with the node's
reason), then one the node can meet only by pruning. Without `--budget-ms` the budget is 90 % of
the median model time of the frames so far, which ran unbudgeted (the first, which pays one-time
warm-up, left out): without pruning most frames would miss it, so the controller has to prune to
hold its p95 under it. (The floor the node reports in
/diagnostics is the least fixed-stage time it measured, preprocessing, the encoder and
postprocessing, which no pruning shortens; on a shared CPU those stages alone vary by several
milliseconds, so a budget just above the floor is accepted but missed on most frames.)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mobius_ros.demo.steps import Session, last_diagnostics

PARAMETER = 'latency_budget_ms'


def fresh_diagnostics(client: Any, timeout: float = 3.0) -> dict[str, str]:
    """The node's /diagnostics values from a message that arrived after this call (they come
    once per period), else the newest one received; {} if none."""
    since = time.monotonic()

    def fresh() -> bool:
        return any(t >= since for t in client.received.arrival.get('diagnostics', ()))

    client.wait(fresh, timeout=timeout)
    return last_diagnostics(client.received.messages.get('diagnostics', []))


def node_floor_ms(client: Any, timeout: float = 10.0) -> float | None:
    """The feasible floor the node reports in /diagnostics (None if no report within `timeout`
    carried one: on a loaded machine the first report after a frame can take a few periods)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        report = fresh_diagnostics(client, timeout=max(min(left, 3.0), 0.0))
        try:
            return float(report.get('latency_floor_ms', 'n/a'))
        except ValueError:
            if left <= 0:
                return None


def choose_budget(unbudgeted_ms: list[float], fraction: float = 0.9) -> float:
    """`fraction` of the median model time of the unbudgeted frames after the first, rounded
    to 0.1 ms.

    Raises:
        ValueError: no unbudgeted frame was measured.
    """
    if not unbudgeted_ms:
        raise ValueError('no frame was processed before the budget: nothing to choose it from')
    steady = unbudgeted_ms[1:] or unbudgeted_ms
    return round(fraction * float(np.median(steady)), 1)


def set_budget(
    client: Any, session: Session, requested_ms: float | None, from_frame: int
) -> dict[str, Any]:
    """Set the node's latency budget through the parameter service; what happened, for the
    summary. Frames sent after an accepted budget are recorded under it."""
    ordered = sorted(session.records, key=lambda r: r['frame'])
    unbudgeted = [r['inference_ms'] for r in ordered if r['budget_ms'] is None]
    floor = node_floor_ms(client)
    info: dict[str, Any] = {
        'set_through': f'parameter service ({PARAMETER})',
        'from_frame': from_frame,
        'floor_ms': floor,
        'unbudgeted_p50_ms': round(float(np.median(unbudgeted)), 2) if unbudgeted else None,
        'requested_ms': requested_ms,
    }
    if floor is not None:
        too_low = round(0.5 * floor, 1)
        accepted, reason = client.set_parameter(PARAMETER, too_low)
        info['below_floor'] = {'budget_ms': too_low, 'accepted': accepted, 'reason': reason}
        if accepted:  # the node must refuse it; should it not, the demo must not run under it
            client.set_parameter(PARAMETER, 0.0)
        session.echo(
            f'latency budget {too_low:.1f} ms (under the floor {floor:.1f} ms):'
            f' {"ACCEPTED" if accepted else "refused"}{f": {reason}" if reason else ""}'
        )
    budget = requested_ms if requested_ms is not None else choose_budget(unbudgeted)
    accepted, reason = client.set_parameter(PARAMETER, budget)
    info.update(budget_ms=budget, accepted=accepted, reason=reason)
    if accepted:
        session.budget_ms = budget
    how = 'asked for' if requested_ms is not None else '90 % of the unbudgeted median'
    session.echo(
        f'latency budget {budget:.1f} ms ({how}) from frame {from_frame}:'
        f' {"set" if accepted else "refused: " + reason}'
    )
    return info


def budget_account(records: list[dict[str, Any]], info: dict[str, Any]) -> dict[str, Any]:
    """What the budget did: frames under it, how many met it, queries kept with and without."""
    under = [r for r in records if r['budget_ms'] is not None]
    free = [r for r in records if r['budget_ms'] is None]

    def kept(rows: list[dict[str, Any]]) -> float | None:
        last = [r['queries_kept'][-1] for r in rows if r['queries_kept']]
        return round(float(np.mean(last)), 1) if last else None

    def layers(rows: list[dict[str, Any]]) -> float | None:
        return round(float(np.mean([len(r['queries_kept']) for r in rows])), 2) if rows else None

    inference = [r['inference_ms'] for r in under]
    return {
        **info,
        'frames': len(under),
        'met': sum(bool(r['budget_met']) for r in under),
        'met_means': 'the model time of the frame (inference_ms, what the controller holds at'
        ' p95) within the budget',
        'inference_p95_ms': round(float(np.percentile(inference, 95)), 2) if inference else None,
        'mean_queries_kept_last_layer': {'unbudgeted': kept(free), 'budgeted': kept(under)},
        'mean_decoder_layers': {'unbudgeted': layers(free), 'budgeted': layers(under)},
    }


def dropped_account(
    sent: dict[tuple[int, int], tuple[int, Any, Any]],
    records: list[dict[str, Any]],
    diagnostics: dict[str, str],
) -> dict[str, Any]:
    """Which published frames got no answer, and where they went.

    The node processes only the newest image: one that arrives while another waits is replaced
    and counted (`dropped_frames`), a malformed one is skipped (`bad_frames`). Frames the node
    never received were lost in transport (best-effort image QoS); frames it answered whose
    output never reached the demo were lost on the way back.
    """
    answered = {r['frame'] for r in records}
    missing = sorted(
        (index, frame.name) for index, frame, _ in sent.values() if index not in answered
    )

    def count(key: str) -> int | None:
        try:
            return int(diagnostics[key])
        except (KeyError, ValueError):
            return None

    superseded, bad, processed = count('dropped_frames'), count('bad_frames'), count('frames')
    account: dict[str, Any] = {
        'count': len(missing),
        'frames': [{'frame': i, 'source': name} for i, name in missing],
        'superseded_in_node': superseded,
        'bad_frames': bad,
    }
    if None not in (superseded, bad, processed):
        account['not_received_by_node'] = max(
            len(sent) - processed - superseded - bad,
            0,  # type: ignore[operator]
        )
        account['answered_but_output_lost'] = max(processed - len(records), 0)  # type: ignore[operator]
    account['explanation'] = (
        'none dropped'
        if not missing
        else 'the node keeps only the newest image (sensor-data QoS, depth 1): an image that'
        ' arrives while the previous one is still processed replaces the one waiting'
        ' (superseded_in_node); images the node never received were lost in best-effort'
        ' transport (not_received_by_node)'
    )
    return account
