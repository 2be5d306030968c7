"""Crash-safe files: written whole or not at all, and checked before they are trusted.

A robot loses power mid-write. Every artefact that a later start reads back (exported graphs,
engines, sidecars, text embeddings, the node's persisted state) is written here to a temporary
file in the destination's folder, flushed and fsynced, then renamed over the destination (an
atomic step on POSIX file systems) and the folder fsynced, so a reader sees the old file or the
new one, never half of one. `digest` gives the size and sha256 recorded beside an artefact, so
damage the rename cannot prevent (a bad disk, a hand edit) is caught on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Digest:
    """Size in bytes and sha256 hex digest of a file."""

    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {'size': self.size, 'sha256': self.sha256}


def digest(path: str | Path) -> Digest:
    """Size and sha256 of a file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            hasher.update(chunk)
            size += len(chunk)
    return Digest(size, hasher.hexdigest())


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or new file in `directory` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = '') -> Iterator[Path]:
    """A temporary path beside `path`; on a clean exit it is fsynced and renamed onto `path`.

    For writers that want a file name (onnx.save, np.savez, a TensorRT engine). On an exception
    the temporary file is removed and `path` is untouched.

    Args:
        suffix: the temporary file's suffix (some writers look at it, e.g. np.savez adds .npz
            to names without it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=suffix + '.tmp')
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp's 0600 would make a cache shared by several users or nodes unreadable to
        # the others: keep the mode of the file replaced, else the usual 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        yield tmp
        with open(tmp, 'rb+') as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically and durably."""
    write_bytes(path, text.encode())


def fsync_tree(directory: str | Path) -> None:
    """fsync every file and folder under `directory` (before renaming a staged folder into
    place, so that the rename never publishes files whose data is still in the page cache)."""
    directory = Path(directory)
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(root, name), 'rb') as handle:
                os.fsync(handle.fileno())
        fsync_dir(root)


def unwritable(folder: str | Path) -> str | None:
    """Why no file can be written in `folder` (None: one can), found by a real 4 KiB write, so
    a read-only mount, a full disk, a quota or a file in the way all answer the same way."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f'.write-test-{os.getpid()}'
        write_bytes(probe, b'\0' * 4096)
        probe.unlink()
    except OSError as error:
        return f'{type(error).__name__}: {error}'
    return None


# What a writer killed mid-write leaves behind: `atomic_path`'s `.<name>.<random>.tmp` files, an
# export's staged `.<name>.tmp-<ns>` folder, a quantisation's `.quantize-<random>` folder and a
# damaged artefact moved aside as `.<name>.damaged-<ns>` before it is deleted.
_LEFTOVER = re.compile(r'^\.(.+\.tmp|.+\.tmp-\d+|quantize-.+|.+\.damaged-\d+)$')
# A leftover this young may be another process's write in progress (an export takes minutes).
LEFTOVER_AGE_S = 3600.0


def sweep_leftovers(folder: str | Path, *, older_than_s: float = LEFTOVER_AGE_S) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in `folder` (not below
    it), once they are older than `older_than_s`; returns what was deleted. Never raises: a
    cache that cannot be cleaned is still a cache."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not _LEFTOVER.match(entry.name):
            continue
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed
