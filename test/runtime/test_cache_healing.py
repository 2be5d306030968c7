"""The text-embedding cache heals: damaged files are re-encoded once, unwritable folders degrade.

Every way a phrase file goes bad on a robot (cut short by a power cut, bytes flipped by a bad
disk, a file of another phrase or encoder copied in, an older cache version, an edit) gives one
warning naming the file, the same features as a clean run, and a healthy file afterwards. A cache
folder that cannot be written (read-only, under a regular file, full) keeps working in memory
with one warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mobius_ros.runtime.vocabulary import TextBatch, TextEmbeddingCache

L, D = 8, 6
IDENTITY = 'fake/v1'
WARNING = 'mobius_ros.runtime.vocabulary'


class Encoder:
    """A deterministic stand-in text encoder that counts the phrases it encodes."""

    def __init__(self) -> None:
        self.phrases: list[str] = []

    def __call__(self, phrases: list[str]) -> SimpleNamespace:
        self.phrases += phrases
        tokens, mask = [], []
        for phrase in phrases:
            seed = int.from_bytes(hashlib.sha256(phrase.encode()).digest()[:4], 'little')
            tokens.append(np.random.default_rng(seed).standard_normal((L, D)).astype(np.float32))
            mask.append(np.arange(L) < len(phrase.split()) + 2)
        t, m = np.stack(tokens), np.stack(mask)
        return SimpleNamespace(tokens=t, mask=m, pooled=(t * m[..., None]).mean(1))


def _get(cache_dir: Path | str, phrases: list[str]) -> tuple[TextBatch, int, Encoder]:
    encoder = Encoder()
    batch, hits, _ = TextEmbeddingCache(encoder, IDENTITY, cache_dir).get(phrases)
    return batch, hits, encoder


def _assert_same(a: TextBatch, b: TextBatch) -> None:
    for name in ('tokens', 'mask', 'pooled'):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _rewrite(path: Path, **changes: object) -> None:
    """Save `path` again with some of its arrays replaced (a valid zip, altered content)."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update({k: np.asarray(v) for k, v in changes.items()})
    with open(path, 'wb') as handle:
        np.savez(handle, **arrays)


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == 'missing':
        path.unlink()
    elif how == 'truncated':
        path.write_bytes(data[: len(data) // 2])
    elif how == 'corrupt':  # same size, bytes flipped inside the token array
        middle = len(data) // 3
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]))
        path.write_bytes(path.read_bytes() + data[middle + 8 :])
    elif how == 'random':
        path.write_bytes(os.urandom(len(data)))
    elif how == 'foreign_phrase':  # another phrase's file copied over this one
        path.write_bytes(other.read_bytes())
    elif how == 'foreign_encoder':
        _rewrite(path, identity='clip-vit-b32/openai')
    elif how == 'old_version':
        _rewrite(path, version=1)
    elif how == 'edited':  # a valid file whose numbers changed after its sha256 was recorded
        with np.load(path, allow_pickle=False) as loaded:
            tokens = loaded['tokens'] + 1
        _rewrite(path, tokens=tokens)
    else:
        raise AssertionError(how)


DAMAGE = [
    'missing',
    'truncated',
    'corrupt',
    'random',
    'foreign_phrase',
    'foreign_encoder',
    'old_version',
    'edited',
]


@pytest.mark.parametrize('how', DAMAGE)
def test_damaged_phrase_file_is_reencoded_once_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    phrases = ['red mug', 'cat']
    clean, _, _ = _get(tmp_path, phrases)
    target, other = _files(tmp_path, phrases)  # of 'red mug' (damaged) and 'cat'
    _damage(target, how, other)
    caplog.set_level(logging.WARNING, logger=WARNING)
    healed, hits, encoder = _get(tmp_path, phrases)
    _assert_same(healed, clean)
    assert hits == 1 and encoder.phrases == ['red mug']
    warnings = _warnings(caplog)
    if how == 'missing':
        assert warnings == []  # nothing to report: an ordinary cache miss
    else:
        (warning,) = warnings
        assert str(target) in warning and 'damaged' in warning and 'red mug' in warning
    # Rewritten whole: the next start reads both phrases from disk without a word.
    caplog.clear()
    again, hits, encoder = _get(tmp_path, phrases)
    _assert_same(again, clean)
    assert hits == 2 and encoder.phrases == [] and _warnings(caplog) == []
    assert not list(tmp_path.rglob('*.tmp'))


def _files(cache_dir: Path, phrases: list[str]) -> list[Path]:
    """The phrase files of `phrases`, in order."""
    found = {}
    for path in cache_dir.rglob('*.npz'):
        with np.load(path, allow_pickle=False) as data:
            found[str(data['phrase'])] = path
    assert sorted(found) == sorted(phrases)
    return [found[p] for p in phrases]


def test_damage_reasons_say_what_was_wrong(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _get(tmp_path, ['cat', 'dog'])
    cat, dog = _files(tmp_path, ['cat', 'dog'])
    expected = {
        'old_version': 'version 1, this cache writes 2',
        'foreign_encoder': "written by text encoder 'clip-vit-b32/openai'",
        'foreign_phrase': "holds phrase 'dog'",
        'edited': 'do not match the sha256',
        'truncated': 'unreadable',
    }
    caplog.set_level(logging.WARNING, logger=WARNING)
    for how, says in expected.items():
        caplog.clear()
        _damage(cat, how, dog)
        _get(tmp_path, ['cat'])
        (warning,) = _warnings(caplog)
        assert says in warning, (how, warning)


def test_cache_under_a_regular_file_stays_in_memory_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A path whose parent is a regular file cannot be written, even by root.
    blocker = tmp_path / 'a_file'
    blocker.write_text('a regular file where the cache folder should be')
    caplog.set_level(logging.WARNING, logger=WARNING)
    _assert_degrades(blocker / 'text', caplog)


def test_read_only_cache_folder_stays_in_memory_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() == 0:
        pytest.skip('root writes into read-only folders (the regular-file case covers root)')
    cache_dir = tmp_path / 'text'
    cache_dir.mkdir()
    cache_dir.chmod(0o500)
    try:
        caplog.set_level(logging.WARNING, logger=WARNING)
        _assert_degrades(cache_dir, caplog)
    finally:
        cache_dir.chmod(0o700)


def _assert_degrades(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    encoder = Encoder()
    cache = TextEmbeddingCache(encoder, IDENTITY, cache_dir)
    first, _, encoded = cache.get(['cat', 'dog'])
    second, hits, _ = cache.get(['dog', 'cat', 'red mug'])  # memory hits, one more phrase
    assert encoded == 2 and hits == 2 and encoder.phrases == ['cat', 'dog', 'red mug']
    _assert_same(first, TextEmbeddingCache(Encoder(), IDENTITY).get(['cat', 'dog'])[0])
    np.testing.assert_array_equal(second.tokens[1, : first.tokens.shape[1]], first.tokens[0])
    (warning,) = _warnings(caplog)  # one, though three phrases could not be written
    assert 'cannot write the text cache' in warning and 'memory only' in warning
    assert not list(Path(cache_dir).parent.rglob('*.npz'))


def test_full_disk_stays_in_memory_with_one_warning(tmp_path: Path) -> None:
    # A real write failure: the child process may write files of at most 64 bytes, so writing
    # a phrase file fails with EFBIG, as it would with ENOSPC on a full disk.
    script = textwrap.dedent(
        f"""
        import logging, resource, signal
        import numpy as np
        from types import SimpleNamespace
        from mobius_ros.runtime.vocabulary import TextEmbeddingCache
        logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
        def encode(phrases):
            t = np.ones((len(phrases), 4, 3), np.float32)
            return SimpleNamespace(tokens=t, mask=np.ones((len(phrases), 4), bool),
                                   pooled=t.mean(1))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))
        cache = TextEmbeddingCache(encode, 'fake/v1', {str(tmp_path / 'text')!r})
        for phrases in (['cat'], ['dog'], ['cat', 'dog']):
            batch, hits, encoded = cache.get(phrases)
        assert (hits, encoded) == (2, 0), (hits, encoded)
        print('served', batch.tokens.shape)
        """
    )
    done = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert 'served (2, 4, 3)' in done.stdout
    assert done.stderr.count('WARNING') == 1, done.stderr
    assert 'cannot write the text cache' in done.stderr and 'File too large' in done.stderr
    assert not list((tmp_path / 'text').rglob('*.npz'))
    assert not list((tmp_path / 'text').rglob('*.tmp'))


def test_temporary_files_of_a_killed_writer_are_removed_on_open(tmp_path: Path) -> None:
    _get(tmp_path, ['cat'])
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    dead = folder / f'.{next(folder.iterdir()).name}.x81k.tmp'  # what atomic_path leaves
    dead.write_bytes(b'half a phrase file')
    then = time.time() - 7200
    os.utime(dead, (then, then))
    _, hits, _ = _get(tmp_path, ['cat'])
    assert hits == 1 and not dead.exists()
