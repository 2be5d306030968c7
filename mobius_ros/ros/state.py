"""What the node was told at run time, kept across a crash or respawn (no rclpy here).

The vocabulary, the task it implies and the latency budget are set at run time (the
set_vocabulary service, `ros2 param set`); a node that is killed and respawned must come back
segmenting the same classes under the same budget. They are saved to one small JSON file per
node, written atomically (`common.atomic.write_text`), with the values the node was *launched*
with beside them.

Precedence on start: a group of settings (vocabulary + task; latency budget) is restored only
when the node is launched with the same values for it as when the state was saved. A respawn or
a reboot with the same parameter files resumes what the robot was told; an operator who edits
the parameter files or the launch overrides gets what they wrote, and the saved state for that
group is dropped (and said so in the log).

A file that is unreadable, damaged, of another format version or of another node is ignored with
one reason; nothing here raises on a bad file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobius_ros.common.atomic import write_text

FORMAT = 'mobius_ros/node_state'
VERSION = 1
# The groups restored together: a task with the vocabulary it segments, and the budget.
GROUPS: dict[str, tuple[str, ...]] = {
    'vocabulary': ('task', 'vocabulary'),
    'latency_budget': ('latency_budget_ms',),
}
KEYS = frozenset(key for keys in GROUPS.values() for key in keys)


def state_path(state_dir: str, cache_dir: str, node_name: str) -> Path:
    """`<state_dir>/<namespace>/<name>.json`; an empty state_dir is `state` beside cache_dir.

    Args:
        node_name: the fully qualified node name, e.g. '/front/mobius'.
    """
    folder = Path(state_dir).expanduser() if state_dir else (
        Path(cache_dir).expanduser().parent / 'state')  # fmt: skip
    parts = [p for p in node_name.split('/') if p]
    if not parts:
        raise ValueError(f'not a node name: {node_name!r}')
    return folder.joinpath(*parts[:-1], f'{parts[-1]}.json')


@dataclass(frozen=True)
class NodeState:
    """The runtime values of `KEYS` and the launch values they were set over."""

    node: str
    launched: dict[str, Any]
    runtime: dict[str, Any]

    def to_json(self) -> str:
        document = {
            'format': FORMAT,
            'version': VERSION,
            'node': self.node,
            'launched': _jsonable(self.launched),
            'runtime': _jsonable(self.runtime),
        }
        return json.dumps(document, indent=2, sort_keys=True) + '\n'

    def restorable(self, launched: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The runtime values to apply to a node launched with `launched`, and one line per
        group dropped because the launch values changed since the state was saved."""
        restore: dict[str, Any] = {}
        dropped = []
        for group, keys in GROUPS.items():
            if not all(key in self.runtime and key in self.launched for key in keys):
                continue
            if all(_same(self.launched[key], launched.get(key)) for key in keys):
                restore.update({key: self.runtime[key] for key in keys})
            else:
                dropped.append(
                    f'{group}: the launch parameters changed since it was saved, they win'
                )
        return restore, dropped


def save(path: Path, state: NodeState) -> None:
    """Write `state` to `path` atomically (OSError propagates: the caller logs it)."""
    write_text(path, state.to_json())


def load(path: Path, node: str) -> tuple[NodeState | None, str | None]:
    """The state saved at `path` for `node`, or (None, why not); (None, None) if there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as error:
        return None, f'cannot read {path}: {error}'
    try:
        document = json.loads(text)
    except ValueError as error:
        return None, f'{path} is damaged (not JSON: {error})'
    if not isinstance(document, dict) or document.get('format') != FORMAT:
        return None, f'{path} is not a mobius_ros node state file'
    if document.get('version') != VERSION:
        return None, (
            f'{path} has state format version {document.get("version")!r}; this node reads'
            f' version {VERSION}'
        )
    if document.get('node') != node:
        return None, f'{path} belongs to node {document.get("node")!r}, not {node}'
    launched, runtime = document.get('launched'), document.get('runtime')
    if not isinstance(launched, dict) or not isinstance(runtime, dict):
        return None, f'{path} is damaged (no launched/runtime values)'
    return NodeState(node, _plain(launched), _plain(runtime)), None


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if k in KEYS}


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in KEYS}


def _same(a: Any, b: Any) -> bool:
    a, b = (tuple(v) if isinstance(v, list) else v for v in (a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)  # 40 and 40.0 are one budget
    return a == b
