"""The node's persisted state file: round trip, precedence, damage, atomic writes (no rclpy)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mobius_ros.ros import state
from mobius_ros.ros.state import NodeState

NODE = '/front/mobius'
LAUNCHED = {'task': 'vocabulary', 'vocabulary': ('circle', 'star'), 'latency_budget_ms': 0.0}
RUNTIME = {'task': 'vocabulary', 'vocabulary': ('red mug', 'laptop'), 'latency_budget_ms': 40.0}


def test_the_path_mirrors_the_node_name_beside_the_caches(tmp_path: Path) -> None:
    cache = str(tmp_path / 'cache' / 'text')
    assert state.state_path('', cache, NODE) == tmp_path / 'cache' / 'state' / 'front/mobius.json'
    assert state.state_path('', cache, '/mobius') == tmp_path / 'cache' / 'state' / 'mobius.json'
    assert state.state_path(str(tmp_path / 's'), cache, NODE) == tmp_path / 's/front/mobius.json'


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / 'state' / 'front' / 'mobius.json'
    state.save(path, NodeState(NODE, LAUNCHED, RUNTIME))
    loaded, problem = state.load(path, NODE)
    assert problem is None and loaded is not None
    assert (loaded.launched, loaded.runtime) == (LAUNCHED, RUNTIME)
    assert json.loads(path.read_text())['version'] == state.VERSION
    assert state.load(tmp_path / 'none.json', NODE) == (None, None)  # first start: no state


def test_state_is_restored_only_where_the_launch_values_did_not_change() -> None:
    saved = NodeState(NODE, LAUNCHED, RUNTIME)
    restore, dropped = saved.restorable(dict(LAUNCHED))  # a respawn: same files, same values
    assert restore == RUNTIME and dropped == []
    edited = dict(LAUNCHED, vocabulary=('person',))  # the operator edited the vocabulary
    restore, dropped = saved.restorable(edited)
    assert restore == {'latency_budget_ms': 40.0}
    assert len(dropped) == 1 and dropped[0].startswith('vocabulary')
    budget = dict(LAUNCHED, latency_budget_ms=25.0)
    restore, dropped = saved.restorable(budget)
    assert restore == {'task': 'vocabulary', 'vocabulary': ('red mug', 'laptop')}
    assert saved.restorable(dict(LAUNCHED, latency_budget_ms=0))[0] == RUNTIME  # 0 == 0.0


def _document(**fields: object) -> str:
    return json.dumps({'format': state.FORMAT, 'version': 1, 'node': NODE, **fields})


@pytest.mark.parametrize(
    ('text', 'reason'),
    [
        (_document(launched={}, runtime={})[:30], 'not JSON'),  # torn
        ('[1, 2]', 'not a mobius_ros node state'),
        (_document(format='something/else'), 'not a mobius_ros node state'),
        (_document(version=7), 'version 7'),
        (_document(node='/rear/mobius', launched={}, runtime={}), "node '/rear/mobius'"),
        (_document(launched={}, runtime=3), 'damaged'),
    ],
)
def test_a_damaged_or_foreign_file_is_ignored_with_a_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / 'mobius.json'
    path.write_text(text)
    loaded, problem = state.load(path, NODE)
    assert loaded is None
    assert problem is not None and reason in problem, problem


def test_undecodable_bytes_are_a_reason_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / 'mobius.json'
    path.write_bytes(b'\xff\xfe\x00garbage')
    loaded, problem = state.load(path, NODE)
    assert loaded is None and problem is not None and 'cannot read' in problem


def test_a_failed_write_leaves_the_previous_state_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / 'state' / 'mobius.json'
    state.save(path, NodeState(NODE, LAUNCHED, RUNTIME))
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', failing_fsync)  # the disk fails mid-write
    changed = dict(RUNTIME, latency_budget_ms=80.0)
    with pytest.raises(OSError, match='No space'):
        state.save(path, NodeState(NODE, LAUNCHED, changed))
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ['mobius.json']  # no temp left
    loaded, _ = state.load(path, NODE)
    assert loaded is not None and loaded.runtime == RUNTIME


def test_only_the_persisted_keys_are_written(tmp_path: Path) -> None:
    path = tmp_path / 'mobius.json'
    state.save(path, NodeState(NODE, {**LAUNCHED, 'backend': 'torch'}, RUNTIME))
    document = json.loads(path.read_text())
    assert set(document['launched']) == set(document['runtime']) == state.KEYS
