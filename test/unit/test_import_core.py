"""The core imports without rclpy, tensorrt, pycuda; pruning imports without torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import sys

    class Blocker:
        def __init__(self, names):
            self.names = set(names)

        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in self.names:
                raise ImportError(f'blocked import of {name}')
            return None

    sys.meta_path.insert(0, Blocker(BLOCKED))
    """
)


def _run(blocked: list[str], body: str) -> subprocess.CompletedProcess:
    code = BLOCKER.replace('BLOCKED', repr(blocked)) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120, check=False
    )


def test_blocker_actually_blocks() -> None:
    result = _run(['json'], 'import json')
    assert result.returncode != 0 and 'blocked import of json' in result.stderr


def test_core_imports_without_ros_tensorrt_pycuda() -> None:
    result = _run(
        ['rclpy', 'tensorrt', 'pycuda'],
        """
        import mobius_ros
        import mobius_ros.model
        import mobius_ros.runtime.result
        import mobius_ros.model.variants
        import mobius_ros.model.checkpoint
        print('ok')
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


def test_pruning_imports_without_torch() -> None:
    result = _run(
        ['torch'],
        """
        import mobius_ros.model.pruning as pruning
        config = pruning.PruningConfig()
        print(round(pruning.threshold(3, 6, config), 6))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '0.125'


def test_export_layer_does_not_reach_into_runtime() -> None:
    """Errors, tensor specs and tokenizers live below both layers: export never loads runtime."""
    result = _run(
        [],
        """
        import pkgutil, importlib
        import mobius_ros.export
        for info in pkgutil.iter_modules(mobius_ros.export.__path__):
            importlib.import_module(f'mobius_ros.export.{info.name}')
        import mobius_ros.common.tokenizer
        loaded = sorted(m for m in sys.modules if m.startswith('mobius_ros.runtime'))
        print(loaded)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'
