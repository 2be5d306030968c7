"""`mobius segment` over a damaged export cache comes up with the outputs of a clean run.

The runtime exports a .safetensors checkpoint into `<engine_dir>/<export_key>/` on first use.
Whatever a power cut, a bad disk or a stray copy leaves there (a graph, model.json or the
tokenizer missing, cut short, with flipped bytes, from another export, of another format) is
said once in one warning naming the file, and exported again; an engine_dir that cannot be
written exports into a temporary folder with one warning. An export folder given as the
checkpoint is the user's, not a cache: its damage is a clear error naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from mobius_ros.cli import main
from mobius_ros.export import io_spec

pytestmark = pytest.mark.slow  # each healing run exports the tiny model again (about 10 s)

CANVAS = (64, 96)
LOGGER = 'mobius_ros.runtime'


@dataclass
class Clean:
    """A checkpoint, its images, and what a clean run made of them."""

    checkpoint: Path
    images: Path
    engines: Path  # the clean run's engine_dir
    export: Path  # <engines>/<export_key>
    results: list[dict]
    overlays: dict[str, bytes]


@dataclass
class Run:
    code: int
    results: list[dict]
    overlays: dict[str, bytes]
    warnings: list[str]


def _segment(
    clean_or_checkpoint: Clean | Path,
    images: Path,
    engines: Path,
    tmp: Path,
    caplog: pytest.LogCaptureFixture | None = None,
) -> Run:
    checkpoint = (
        clean_or_checkpoint.checkpoint
        if isinstance(clean_or_checkpoint, Clean)
        else clean_or_checkpoint
    )
    out = tmp / 'out'
    if caplog is not None:
        caplog.clear()
        caplog.set_level(logging.WARNING, logger=LOGGER)
    code = main(
        [
            'segment', str(images), '--vocabulary', 'red box, blue ball',
            '--checkpoint', str(checkpoint), '--backend', 'onnxruntime',
            '--input-size', *(str(v) for v in CANVAS), '--engine-dir', str(engines),
            '--score-threshold', '0', '--max-detections', '4',
            '--cache-dir', str(tmp / 'text'), '--out', str(out),
        ]
    )  # fmt: skip
    results, overlays = [], {}
    if code == 0:
        results = json.loads((out / 'results.json').read_text())
        for result in results:
            result.pop('timings_ms')
        overlays = {p.name: p.read_bytes() for p in sorted(out.glob('*.png'))}
    warnings = (
        []
        if caplog is None
        else [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    )
    return Run(code, results, overlays, warnings)


@pytest.fixture(scope='module')
def clean(tmp_path_factory: pytest.TempPathFactory) -> Clean:
    torch = pytest.importorskip('torch')
    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.model.variants import build_model

    root = tmp_path_factory.mktemp('clean')
    torch.manual_seed(0)
    checkpoint = root / 'tiny.safetensors'
    save_checkpoint(build_model('MOBIUS-tiny').eval(), checkpoint)
    images = root / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(45, 130), (80, 60)]):
        cv2.imwrite(str(images / f'img{i}.png'), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    engines = root / 'engines'
    run = _segment(checkpoint, images, engines, root)
    assert run.code == 0 and len(run.overlays) == 2
    (export,) = [p for p in engines.iterdir() if not p.name.startswith('.')]
    return Clean(checkpoint, images, engines, export, run.results, run.overlays)


def _copy_cache(clean: Clean, tmp_path: Path) -> Path:
    engines = tmp_path / 'engines'
    shutil.copytree(clean.engines, engines)
    return engines / clean.export.name


def _meta(export: Path) -> dict:
    return json.loads((export / io_spec.MODEL_JSON).read_text())


def _damage(export: Path, target: str, how: str) -> Path:
    """Damage one file of an export folder; returns its path."""
    meta = _meta(export)
    if target == 'model.json':
        path = export / io_spec.MODEL_JSON
    elif target == 'tokenizer':
        path = export / meta['tokenizer']['file']
    else:
        path = export / meta['graphs'][target]['file']
    data = path.read_bytes()
    if how == 'missing':
        path.unlink()
    elif how == 'truncated':  # what a power cut during the write leaves
        path.write_bytes(data[: len(data) // 2])
    elif how == 'corrupt':  # same size, a run of bytes flipped in the middle
        middle = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        path.write_bytes(data[:middle] + flipped + data[middle + 16 :])
    elif how == 'random':  # same size, nothing of the original
        path.write_bytes(np.random.default_rng(1).bytes(len(data)))
    elif how == 'foreign':  # a graph of another export (the referring layer's) copied in
        path.write_bytes(
            (export / meta['graphs']['referring_decoder_layer_0']['file']).read_bytes()
        )
    elif how == 'old_format':
        path.write_text(json.dumps({**meta, 'format': f"{meta['format']}-old"}))
    elif how == 'not_an_object':
        path.write_text(json.dumps(list(meta)))
    elif how == 'no_graphs':
        path.write_text(json.dumps({k: v for k, v in meta.items() if k != 'graphs'}))
    else:
        raise AssertionError(how)
    return path


CASES = [
    ('decoder_layer_0', 'missing'),
    ('decoder_layer_0', 'truncated'),
    ('encoder', 'corrupt'),
    ('mask_head', 'random'),
    ('decoder_layer_1', 'foreign'),
    ('text_encoder', 'truncated'),
    ('tokenizer', 'corrupt'),
    ('model.json', 'missing'),
    ('model.json', 'truncated'),
    ('model.json', 'old_format'),
    ('model.json', 'not_an_object'),
    ('model.json', 'no_graphs'),
]


@pytest.mark.parametrize(('target', 'how'), CASES, ids=[f'{t}-{h}' for t, h in CASES])
def test_damaged_cached_export_is_exported_again_with_one_warning(
    clean: Clean, tmp_path: Path, caplog: pytest.LogCaptureFixture, target: str, how: str
) -> None:
    export = _copy_cache(clean, tmp_path)
    damaged = _damage(export, target, how)
    run = _segment(clean, clean.images, export.parent, tmp_path, caplog)
    assert run.code == 0
    assert run.results == clean.results
    assert run.overlays == clean.overlays
    (warning,) = run.warnings
    assert f'cached export {export} is damaged' in warning and 'exporting it again' in warning
    # Names the file and what is wrong with it (a missing model.json: the folder is no export).
    named = str(export) if (target, how) == ('model.json', 'missing') else str(damaged)
    assert named in warning, warning
    # Healed on disk: the next start loads it without a word and without exporting.
    assert _meta(export)['graphs'] == _meta(clean.export)['graphs']
    assert [p.name for p in export.parent.iterdir()] == [export.name]  # nothing left over
    again = _segment(clean, clean.images, export.parent, tmp_path, caplog)
    assert again.code == 0 and again.warnings == [] and again.results == clean.results


def test_damaged_cache_under_build_policy_never_is_refused(clean: Clean, tmp_path: Path) -> None:
    from mobius_ros.common.errors import ModelLoadError
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    export = _copy_cache(clean, tmp_path)
    damaged = _damage(export, 'decoder_layer_0', 'truncated')
    config = SegmenterConfig(
        checkpoint=str(clean.checkpoint),
        backend='onnxruntime',
        input_size=CANVAS,
        engine_dir=str(export.parent),
        build_policy='never',
    )
    with pytest.raises(ModelLoadError) as info:
        Segmenter(config)
    message = str(info.value)
    assert str(damaged) in message and 'build_policy is never' in message
    assert 'Protobuf' not in message


@pytest.mark.parametrize('how', ['truncated', 'corrupt', 'missing'])
def test_damaged_user_export_folder_is_a_clear_error_naming_the_file(
    clean: Clean, tmp_path: Path, capsys: pytest.CaptureFixture, how: str
) -> None:
    # The user's export folder cannot be rebuilt (there is no checkpoint): an error, caught
    # before ONNX Runtime's "Protobuf parsing failed".
    export = tmp_path / 'my_export'
    shutil.copytree(clean.export, export)
    damaged = _damage(export, 'encoder', how)
    run = _segment(export, clean.images, tmp_path / 'engines', tmp_path)
    assert run.code != 0  # `mobius segment` exits 1 on a model that cannot be loaded
    err = capsys.readouterr().err
    assert str(damaged) in err and 'Protobuf' not in err, err
    assert not (tmp_path / 'engines').exists()  # nothing was exported in its place


def test_damaged_text_cache_gives_the_same_outputs(
    clean: Clean, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engines = _copy_cache(clean, tmp_path).parent
    first = _segment(clean, clean.images, engines, tmp_path, caplog)
    files = sorted((tmp_path / 'text').rglob('*.npz'))
    assert first.code == 0 and files and first.warnings == []  # one file per phrase
    files[0].write_bytes(files[0].read_bytes()[:100])
    run = _segment(clean, clean.images, engines, tmp_path, caplog)
    assert run.code == 0 and run.results == clean.results and run.overlays == clean.overlays
    (warning,) = run.warnings
    assert str(files[0]) in warning and 'damaged' in warning


def _assert_degrades(
    clean: Clean,
    engines: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The temporary folder of this test, not the machine's /tmp.
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    (tmp_path / 'tmp').mkdir()
    run = _segment(clean, clean.images, engines, tmp_path, caplog)
    assert run.code == 0
    assert run.results == clean.results and run.overlays == clean.overlays
    (warning,) = run.warnings
    fallback = tmp_path / 'tmp' / 'mobius_ros' / 'engines'
    assert 'cannot write the export cache' in warning and str(fallback) in warning
    assert (fallback / clean.export.name / io_spec.MODEL_JSON).is_file()
    # The next run finds the export in the temporary folder: one warning, no export.
    again = _segment(clean, clean.images, engines, tmp_path, caplog)
    assert again.code == 0 and again.results == clean.results and len(again.warnings) == 1


def test_engine_dir_under_a_regular_file_exports_into_a_temporary_folder(
    clean: Clean,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No folder can be made under a regular file, not even by root.
    blocker = tmp_path / 'a_file'
    blocker.write_text('a regular file where the engine cache should be')
    _assert_degrades(clean, blocker / 'engines', tmp_path, caplog, monkeypatch)


def test_read_only_engine_dir_exports_into_a_temporary_folder(
    clean: Clean,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if os.geteuid() == 0:
        pytest.skip('root writes into read-only folders (the regular-file case covers root)')
    engines = tmp_path / 'engines'
    engines.mkdir()
    engines.chmod(0o500)
    try:
        _assert_degrades(clean, engines, tmp_path, caplog, monkeypatch)
    finally:
        engines.chmod(0o700)


def test_staged_folder_of_an_export_killed_midway_is_cleaned_up(
    clean: Clean, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL `mobius export` while it writes; the next start removes what it left."""
    import signal
    import subprocess
    import sys
    import time

    engines = _copy_cache(clean, tmp_path).parent
    target = engines / clean.export.name
    child = subprocess.Popen(
        [
            sys.executable, '-m', 'mobius_ros.cli', 'export', '--checkpoint',
            str(clean.checkpoint), '--out', str(target), '--input-size',
            *(str(v) for v in CANVAS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    staged: list[Path] = []
    while time.monotonic() < deadline and child.poll() is None:
        staged = [p for p in engines.glob(f'.{target.name}.tmp-*') if any(p.glob('*.onnx'))]
        if staged:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert staged, 'the export finished before a graph was written; cannot kill it midway'
    (leftover,) = staged
    assert leftover.exists()
    fresh = engines / f'.{target.name}.tmp-{time.time_ns()}'  # another export in progress
    fresh.mkdir()
    hour_ago = time.time() - 2 * 3600
    os.utime(leftover, (hour_ago, hour_ago))
    run = _segment(clean, clean.images, engines, tmp_path, caplog)
    assert run.code == 0 and run.results == clean.results and run.warnings == []
    assert not leftover.exists()
    assert fresh.exists()  # too young to be a dead writer's: left alone
    assert sorted(p.name for p in engines.iterdir()) == sorted([target.name, fresh.name])
