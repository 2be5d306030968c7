"""The teacher-output cache of label-free distillation (`mobius distill`).

The teacher labels every image once. Per image the cache holds one `.npz` record: the
letterboxed input canvas, the kept instances (COCO RLE masks, cxcywh boxes normalised to the
canvas, per-phrase scores) and, when asked, the teacher's pixel-decoder mask features in fp16.

A record's name is the sha256 of (teacher identity, image hash, vocabulary, input size, what is
stored), so a record of another teacher or vocabulary is never even looked up. The cache folder's
`manifest.json` states the same identity once: opening a cache with a different one is an error
(`CacheMismatchError`) unless the caller asks to rebuild it, which empties it first. There is no
path on which a changed teacher or vocabulary reuses old outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobius_ros.ops.masks import rle_decode, rle_encode

FORMAT = 'mobius-distill-cache/1'
MANIFEST = 'manifest.json'
# Instances below this teacher score are not stored; the training threshold is chosen later.
STORE_MIN_SCORE = 0.05


class CacheMismatchError(ValueError):
    """A cache folder that belongs to another teacher, vocabulary or input size."""


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def teacher_identity(checkpoint: str | Path) -> str:
    """The identity of a checkpoint: sha256 of its weights and of its config sidecar."""
    from mobius_ros.model.checkpoint import sidecar_path

    checkpoint = Path(checkpoint)
    parts = [file_sha256(checkpoint)]
    side = sidecar_path(checkpoint)
    if side.is_file():
        parts.append(file_sha256(side))
    return hashlib.sha256('/'.join(parts).encode()).hexdigest()


def image_sha256(rgb: np.ndarray) -> str:
    """Hash of a decoded [H, W, 3] uint8 image (its pixels and shape, not the file's encoding)."""
    digest = hashlib.sha256(f'{rgb.shape}'.encode())
    digest.update(np.ascontiguousarray(rgb, np.uint8).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheIdentity:
    """Everything a cached teacher output depends on.

    Attributes:
        teacher: `teacher_identity` of the teacher checkpoint.
        vocabulary: the phrases the teacher scored, in order (class k = phrase k).
        input_hw: the letterbox canvas (H, W) the teacher saw.
        features: whether records carry the teacher's mask features.
    """

    teacher: str
    vocabulary: tuple[str, ...]
    input_hw: tuple[int, int]
    features: bool

    def record_key(self, image_hash: str) -> str:
        """The record name of one image under this identity."""
        text = json.dumps([FORMAT, asdict(self), image_hash, STORE_MIN_SCORE])
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class TeacherRecord:
    """The teacher's output for one image, on the letterboxed canvas.

    Attributes:
        canvas: [H, W, 3] uint8 RGB, the image letterboxed (top-left) into the input size.
        boxes: [n, 4] float32 cx, cy, w, h normalised to the canvas.
        scores: [n, K] float32 per-phrase sigmoid scores of the kept instances.
        masks: n COCO RLE dicts at canvas resolution.
        features: [C, H/4, W/4] float16 mask features, or None.
    """

    canvas: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    masks: tuple[dict, ...]
    features: np.ndarray | None = None

    def decoded_masks(self) -> np.ndarray:
        """[n, H, W] bool masks."""
        h, w = self.canvas.shape[:2]
        if not self.masks:
            return np.zeros((0, h, w), bool)
        return np.stack([rle_decode(rle).astype(bool) for rle in self.masks])


class TeacherCache:
    """A folder of teacher records under one `CacheIdentity`.

    Args:
        root: the cache folder (created when missing).
        identity: what the records must have been computed from.
        rebuild: empty a folder that holds another identity instead of refusing it.
    """

    def __init__(
        self, root: str | Path, identity: CacheIdentity, *, rebuild: bool = False
    ) -> None:
        self.root = Path(root)
        self.identity = identity
        manifest = self.root / MANIFEST
        wanted = _manifest(identity)
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            if found != wanted:
                if not rebuild:
                    raise CacheMismatchError(_mismatch_message(self.root, found, wanted))
                shutil.rmtree(self.root)
        elif self.root.is_dir() and any(self.root.iterdir()):
            raise CacheMismatchError(
                f'{self.root} is not empty and holds no distillation manifest'
            )
        self.root.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            manifest.write_text(json.dumps(wanted, indent=2) + '\n')

    def path(self, image_hash: str) -> Path:
        """Where the record of an image lives."""
        key = self.identity.record_key(image_hash)
        return self.root / key[:2] / f'{key}.npz'

    def __contains__(self, image_hash: str) -> bool:
        return self.path(image_hash).is_file()

    def put(self, image_hash: str, record: TeacherRecord) -> Path:
        """Store a record atomically (a crash never leaves a torn file under the real name)."""
        if (record.features is not None) != self.identity.features:
            raise ValueError('record features do not match the cache identity')
        path = self.path(image_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            'canvas': record.canvas,
            'boxes': record.boxes.astype(np.float32),
            'scores': record.scores.astype(np.float32),
            'masks': np.asarray(json.dumps([_rle_json(m) for m in record.masks])),
        }
        if record.features is not None:
            arrays['features'] = record.features.astype(np.float16)
        tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
        with open(tmp, 'wb') as handle:
            np.savez(handle, **arrays)
        tmp.replace(path)
        return path

    def get(self, image_hash: str) -> TeacherRecord:
        """The record of an image (KeyError when the teacher has not labelled it)."""
        path = self.path(image_hash)
        if not path.is_file():
            raise KeyError(image_hash)
        with np.load(path, allow_pickle=False) as data:
            masks = tuple(json.loads(str(data['masks'])))
            return TeacherRecord(
                canvas=data['canvas'],
                boxes=data['boxes'],
                scores=data['scores'],
                masks=tuple({'size': m['size'], 'counts': m['counts']} for m in masks),
                features=data['features'] if 'features' in data.files else None,
            )


def encode_masks(masks: np.ndarray) -> tuple[dict, ...]:
    """[n, H, W] bool -> n COCO RLE dicts."""
    return tuple(rle_encode(np.asarray(m, bool)) for m in masks)


def _rle_json(rle: dict) -> dict:
    counts = rle['counts']
    return {
        'size': list(rle['size']),
        'counts': counts.decode() if isinstance(counts, bytes) else counts,
    }


def _manifest(identity: CacheIdentity) -> dict:
    data = asdict(identity)
    return {
        'format': FORMAT,
        'teacher': data['teacher'],
        'vocabulary': list(data['vocabulary']),
        'input_hw': list(data['input_hw']),
        'features': data['features'],
        'store_min_score': STORE_MIN_SCORE,
    }


def _mismatch_message(root: Path, found: dict, wanted: dict) -> str:
    changed = sorted(k for k in wanted if found.get(k) != wanted[k])
    return (
        f'the distillation cache {root} was computed with another {", ".join(changed)};'
        ' pass --rebuild-cache to relabel (the old records are deleted), or choose another'
        ' --cache-dir'
    )


def vocabulary_tuple(phrases: Sequence[str]) -> tuple[str, ...]:
    """Phrases stripped, empty ones dropped, duplicates refused (class k must be phrase k)."""
    cleaned = tuple(p.strip() for p in phrases if p.strip())
    if not cleaned:
        raise ValueError('the vocabulary is empty')
    if len(set(cleaned)) != len(cleaned):
        raise ValueError(f'the vocabulary repeats phrases: {list(cleaned)}')
    return cleaned
