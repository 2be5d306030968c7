"""`atomic.sweep_leftovers`: what killed writers leave is removed once old, nothing else is."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mobius_ros.common import atomic


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_old_leftovers_go_and_everything_else_stays(tmp_path: Path) -> None:
    leftovers = [
        tmp_path / '.mask_head.engine.k3j2_x.tmp',  # atomic_path's temporary file
        tmp_path / '.0123abcd.tmp-1765101234000000000',  # a staged export folder
        tmp_path / '.quantize-8hd_2k',  # a staged quantisation folder
        tmp_path / '.0123abcd.damaged-1765101234000000000',  # a damaged export moved aside
    ]
    keep = [
        tmp_path / '0123abcd',  # an export
        tmp_path / 'mask_head.engine',
        tmp_path / 'notes.tmp',  # not hidden: not ours
        tmp_path / '.hidden-config',
    ]
    for path in leftovers + keep:
        if path.suffix in ('.engine', '.tmp') or path.name.startswith('.hidden'):
            path.write_bytes(b'x')
        else:
            path.mkdir()
            (path / 'graph.onnx').write_bytes(b'x')
    for path in leftovers + keep:
        _age(path, 2 * atomic.LEFTOVER_AGE_S)
    young = tmp_path / '.encoder.onnx.a1b2.tmp'  # a write in progress
    young.write_bytes(b'x')
    removed = atomic.sweep_leftovers(tmp_path)
    assert sorted(removed) == sorted(leftovers)
    assert all(not p.exists() for p in leftovers)
    assert all(p.exists() for p in [*keep, young])


def test_sweep_does_not_recurse_and_never_raises(tmp_path: Path) -> None:
    inner = tmp_path / 'export' / '.encoder.onnx.zz.tmp'
    inner.parent.mkdir()
    inner.write_bytes(b'x')
    _age(inner, 2 * atomic.LEFTOVER_AGE_S)
    assert atomic.sweep_leftovers(tmp_path) == [] and inner.exists()
    assert atomic.sweep_leftovers(tmp_path / 'missing') == []
    (tmp_path / 'file').write_text('not a folder')
    assert atomic.sweep_leftovers(tmp_path / 'file') == []
