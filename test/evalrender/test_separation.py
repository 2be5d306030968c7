"""The training code and the evaluation renderer never import each other.

Statically over the AST of every file, and dynamically: importing the training modules in a
fresh interpreter must not load mobius_ros.evalrender.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mobius_ros

PACKAGE = Path(mobius_ros.__file__).parent
TRAINING_FILES = [
    *sorted((PACKAGE / 'train').rglob('*.py')),
    PACKAGE / 'commands' / 'train.py',
    PACKAGE / 'commands' / 'distill.py',
    PACKAGE / 'commands' / 'distill_setup.py',
    PACKAGE / 'commands' / 'synth.py',
]


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module an import statement in `path` names (relative imports from `package`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')[: len(package.split('.')) - node.level + 1]
                base = '.'.join([*parts, base] if base else parts)
            names.add(base)
            names.update(f'{base}.{alias.name}' for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, 'attr', '') == 'import_module'
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def test_imported_modules_sees_plain_relative_and_dynamic_imports(tmp_path):
    # the checker itself must be able to fail
    probe = tmp_path / 'probe.py'
    text = 'import mobius_ros.evalrender\nfrom ..evalrender import scene\n'
    probe.write_text(text + "importlib.import_module('mobius_ros.evalrender.coco')\n")
    names = imported_modules(probe, package='mobius_ros.train')
    assert {
        'mobius_ros.evalrender',
        'mobius_ros.evalrender.scene',
        'mobius_ros.evalrender.coco',
    } <= names


def test_training_code_does_not_import_the_evaluation_renderer():
    assert len(TRAINING_FILES) > 10
    for path in TRAINING_FILES:
        bad = [n for n in imported_modules(path) if n.startswith('mobius_ros.evalrender')]
        assert not bad, f'{path} imports {bad}'


def test_evaluation_renderer_does_not_import_training_code():
    files = sorted((PACKAGE / 'evalrender').rglob('*.py'))
    assert files
    for path in files:
        bad = [n for n in imported_modules(path) if n.startswith('mobius_ros.train')]
        assert not bad, f'{path} imports {bad}'


def test_importing_training_modules_leaves_the_renderer_unloaded():
    modules = sorted(
        '.'.join(p.relative_to(PACKAGE.parent).with_suffix('').parts).removesuffix('.__init__')
        for p in TRAINING_FILES
    )
    code = (
        'import importlib, sys\n'
        f'for name in {modules!r}:\n'
        '    importlib.import_module(name)\n'
        "loaded = sorted(m for m in sys.modules if m.startswith('mobius_ros.evalrender'))\n"
        'assert not loaded, loaded\n'
        "assert 'mobius_ros.train.loop' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_renderer_loads_without_training_modules():
    code = (
        'import sys\n'
        'import mobius_ros.evalrender.coco, mobius_ros.commands.render_eval\n'
        "loaded = sorted(m for m in sys.modules if m.startswith('mobius_ros.train'))\n"
        'assert not loaded, loaded\n'
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
