"""The vocabulary: validated, immutable phrase lists and the text-embedding cache.

A robot re-uses a handful of phrases for hours, and the text encoder is the most expensive part of
a vocabulary change (DESIGN 4.1: CLIP costs 239 GFLOPs for the 80 COCO names), so every phrase is
encoded once per text encoder and then served from memory (LRU, bounded) or from disk (one file per
encoder identity and phrase, surviving restarts). The cache stores token features as well as the
pooled embedding because early fusion attends over tokens (DESIGN 4.4).

Everything here is numpy; the encoder is any callable returning `TextFeatures`-like arrays, so the
runtime can use a torch encoder or an ONNX text graph behind the same cache.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import unicodedata
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.common import atomic
from mobius_ros.common.errors import VocabularyError
from mobius_ros.runtime.result import Task

_LOG = logging.getLogger(__name__)

AGNOSTIC_PHRASE = 'object'
# Version 2: each file records the sha256 of its arrays (version 1 files are re-encoded).
_FILE_VERSION = 2


@dataclass(frozen=True)
class Vocabulary:
    """The phrases an image is segmented with; immutable, swapped atomically.

    Attributes:
        phrases: class phrases; class id k is phrases[k].
        version: increases on every swap, so outputs can say which vocabulary made them.
        task: VOCABULARY or AGNOSTIC (the single phrase 'object').
    """

    phrases: tuple[str, ...]
    version: int
    task: Task = Task.VOCABULARY


@dataclass(frozen=True)
class VocabularyUpdate:
    """What a vocabulary change did: the new vocabulary and what encoding it cost."""

    vocabulary: Vocabulary
    encode_ms: float
    cache_hits: int
    encoded: int


def validate_phrases(
    phrases: Sequence[str], *, max_phrases: int = 256, max_chars: int = 200
) -> tuple[str, ...]:
    """Normalise and check a phrase list: strip, collapse whitespace, dedupe keeping order.

    Raises:
        VocabularyError: not a list of strings, empty, a blank or overlong phrase, control
            characters, or more than `max_phrases` distinct phrases.
    """
    if isinstance(phrases, str | bytes):
        raise VocabularyError(
            f'the vocabulary must be a list of phrases, got a single string {phrases!r}'
        )
    unique: dict[str, None] = {}
    for index, phrase in enumerate(phrases):
        if not isinstance(phrase, str):
            raise VocabularyError(
                f'phrase {index} must be a string, got {type(phrase).__name__} {phrase!r}'
            )
        if any(unicodedata.category(c) == 'Cc' and c not in '\t\n\r' for c in phrase):
            raise VocabularyError(f'phrase {index} {phrase!r} contains control characters')
        cleaned = ' '.join(phrase.split())
        if not cleaned:
            raise VocabularyError(f'phrase {index} is blank')
        if len(cleaned) > max_chars:
            raise VocabularyError(
                f'phrase {index} has {len(cleaned)} characters, at most {max_chars} allowed:'
                f' {cleaned[:40]!r}...'
            )
        unique[cleaned] = None
    if not unique:
        raise VocabularyError('the vocabulary is empty: give at least one phrase')
    if len(unique) > max_phrases:
        raise VocabularyError(
            f'the vocabulary has {len(unique)} distinct phrases, at most {max_phrases} allowed'
        )
    return tuple(unique)


def next_vocabulary(
    current: Vocabulary | None,
    phrases: Sequence[str],
    *,
    append: bool = False,
    max_phrases: int = 256,
    max_chars: int = 200,
) -> Vocabulary:
    """The vocabulary after a `set_vocabulary` call (validated; version bumped).

    With `append`, new phrases follow the current ones (class ids of known phrases are kept).
    """
    base = current.phrases if append and current is not None else ()
    merged = validate_phrases([*base, *phrases], max_phrases=max_phrases, max_chars=max_chars)
    version = 0 if current is None else current.version + 1
    return Vocabulary(merged, version, Task.VOCABULARY)


def agnostic_vocabulary(current: Vocabulary | None) -> Vocabulary:
    """The category-agnostic vocabulary ('object',), version bumped."""
    version = 0 if current is None else current.version + 1
    return Vocabulary((AGNOSTIC_PHRASE,), version, Task.AGNOSTIC)


@dataclass(frozen=True)
class PhraseFeatures:
    """One phrase's cached text features.

    Attributes:
        tokens: [L, D] token features (before the model's D -> C projection).
        mask: [L] bool, True on valid tokens.
        pooled: [D] masked mean of the valid tokens.
    """

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray


@dataclass(frozen=True)
class TextBatch:
    """Text features of K phrases, numpy twin of `model.text_encoder.TextFeatures`.

    Attributes:
        tokens: [K, L, D] float32 (L = the longest phrase's token count; padding masked out).
        mask: [K, L] bool, True on valid tokens.
        pooled: [K, D] float32.
    """

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray

    def packed(self) -> tuple[np.ndarray, np.ndarray]:
        """Valid tokens of all phrases: (tokens [T, D] float32, phrase_index [T] int64)."""
        phrase_index = np.nonzero(self.mask)[0].astype(np.int64)
        return self.tokens[self.mask], phrase_index

    @classmethod
    def stack(cls, items: Sequence[PhraseFeatures]) -> TextBatch:
        length = max(item.tokens.shape[0] for item in items)
        width = items[0].tokens.shape[1]
        tokens = np.zeros((len(items), length, width), np.float32)
        mask = np.zeros((len(items), length), bool)
        for k, item in enumerate(items):
            tokens[k, : item.tokens.shape[0]] = item.tokens
            mask[k, : item.mask.shape[0]] = item.mask
        pooled = np.stack([item.pooled for item in items]).astype(np.float32)
        return cls(tokens, mask, pooled)


EncodeFn = Callable[[Sequence[str]], Any]  # phrases -> object with tokens, mask, pooled


def _to_numpy(value: Any) -> np.ndarray:
    # A torch tensor (the model's encoders) or an array (an ONNX text graph).
    if hasattr(value, 'detach'):
        value = value.detach().to('cpu').numpy()
    return np.asarray(value)


def _safe_identity(identity: str) -> str:
    # Identities hold '/' ('clip-vit-b32/openai'); the hash keeps distinct identities distinct
    # after the readable part is sanitised.
    readable = re.sub(r'[^A-Za-z0-9._-]+', '_', identity)[:60]
    return f'{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}'


class TextEmbeddingCache:
    """Per-phrase text features in memory (LRU) and on disk, keyed by the encoder's identity.

    Args:
        encode_fn: phrases -> features with `tokens [K, L, D]`, `mask [K, L]`, `pooled [K, D]`
            (torch tensors or numpy arrays).
        identity: the text encoder's stable identity; features of different encoders never mix.
        cache_dir: where phrase files live (None: memory only). A damaged file (truncated,
            corrupt, foreign, another version) is re-encoded and rewritten with one warning; a
            folder that cannot be written (read-only, full) leaves the cache in memory only,
            with one warning.
        capacity: phrases kept in memory.
        dtype: storage dtype ('float32' or 'float16'); batches are always returned as float32.
        batch_size: phrases per encoder call when many are new (bounds peak memory).
    """

    def __init__(
        self,
        encode_fn: EncodeFn,
        identity: str,
        cache_dir: str | Path | None = None,
        capacity: int = 1024,
        *,
        dtype: str = 'float32',
        batch_size: int = 64,
    ) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        if dtype not in ('float32', 'float16'):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self._encode_fn = encode_fn
        self.identity = identity
        self.capacity = capacity
        self.dtype = np.dtype(dtype)
        self.batch_size = batch_size
        self.directory = (
            None if cache_dir is None else Path(cache_dir).expanduser() / _safe_identity(identity)
        )
        self._writable = True
        if self.directory is not None:
            atomic.sweep_leftovers(self.directory)  # files of a process killed mid-write
        self._memory: OrderedDict[str, PhraseFeatures] = OrderedDict()
        # Guards the LRU only; encoding runs outside it so a slow encode of new phrases does not
        # stall a frame that only needs known ones.
        self._lock = threading.Lock()
        self.encoder_calls = 0

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, phrase: str) -> bool:
        return phrase in self._memory

    def get(self, phrases: Sequence[str]) -> tuple[TextBatch, int, int]:
        """Features of `phrases` in order: (batch, hits from memory or disk, newly encoded)."""
        if not phrases:
            raise VocabularyError('no phrases to encode')
        found: dict[str, PhraseFeatures] = {}
        missing: list[str] = []
        for phrase in dict.fromkeys(phrases):
            features = self._from_memory(phrase)
            if features is None:
                features = self._from_disk(phrase)
                if features is not None:
                    self._remember(phrase, features)
            if features is None:
                missing.append(phrase)
            else:
                found[phrase] = features
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            for phrase, features in zip(chunk, self._encode(chunk)):
                found[phrase] = features
                self._remember(phrase, features)
                self._to_disk(phrase, features)
        hits = len(found) - len(missing)
        return TextBatch.stack([found[p] for p in phrases]), hits, len(missing)

    def _encode(self, phrases: list[str]) -> list[PhraseFeatures]:
        self.encoder_calls += 1
        out = self._encode_fn(phrases)
        tokens, mask, pooled = (_to_numpy(out.tokens), _to_numpy(out.mask), _to_numpy(out.pooled))
        k = len(phrases)
        width = tokens.shape[-1] if tokens.ndim == 3 else -1
        if (
            tokens.shape[:1] != (k,)
            or mask.shape != tokens.shape[:2]
            or pooled.shape != (k, width)
        ):
            raise ValueError(
                f'text encoder {self.identity!r} returned tokens {tokens.shape}, mask'
                f' {mask.shape}, pooled {pooled.shape} for {k} phrases;'
                ' expected [K, L, D], [K, L], [K, D]'
            )
        mask = mask.astype(bool)
        features = []
        for i in range(k):
            # Trailing padding carries nothing (fusion masks it out): dropping it makes a phrase's
            # entry the same whether its encoder pads to 77 tokens (CLIP graph) or to the batch,
            # and a cached CLIP phrase some 15x smaller.
            valid = np.flatnonzero(mask[i])
            length = int(valid[-1]) + 1 if valid.size else 1
            features.append(
                PhraseFeatures(
                    tokens[i, :length].astype(self.dtype),
                    mask[i, :length].copy(),
                    pooled[i].astype(self.dtype),
                )
            )
        return features

    def _from_memory(self, phrase: str) -> PhraseFeatures | None:
        with self._lock:
            features = self._memory.get(phrase)
            if features is not None:
                self._memory.move_to_end(phrase)
            return features

    def _remember(self, phrase: str, features: PhraseFeatures) -> None:
        with self._lock:
            self._memory[phrase] = features
            self._memory.move_to_end(phrase)
            while len(self._memory) > self.capacity:
                self._memory.popitem(last=False)

    def _path(self, phrase: str) -> Path:
        assert self.directory is not None
        return self.directory / f'{hashlib.sha256(phrase.encode()).hexdigest()[:40]}.npz'

    def _from_disk(self, phrase: str) -> PhraseFeatures | None:
        if self.directory is None:
            return None
        path = self._path(phrase)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data['version'])
                if version != _FILE_VERSION:
                    problem = f'version {version}, this cache writes {_FILE_VERSION}'
                elif str(data['identity']) != self.identity:
                    problem = f'written by text encoder {str(data["identity"])!r}'
                elif str(data['phrase']) != phrase:
                    problem = f'holds phrase {str(data["phrase"])!r}'
                else:
                    features = PhraseFeatures(data['tokens'], data['mask'], data['pooled'])
                    if str(data['sha256']) == _features_sha256(features):
                        return PhraseFeatures(
                            features.tokens.astype(self.dtype),
                            features.mask.astype(bool),
                            features.pooled.astype(self.dtype),
                        )
                    problem = 'its arrays do not match the sha256 recorded in it'
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            problem = f'unreadable ({type(error).__name__}: {error})'
        # Re-encoded and overwritten, so each damaged file is reported once.
        _LOG.warning('text cache file %s is damaged (%s); re-encoding %r', path, problem, phrase)
        return None

    def _to_disk(self, phrase: str, features: PhraseFeatures) -> None:
        if self.directory is None or not self._writable:
            return
        path = self._path(phrase)
        try:
            # Crash-safe: a reader (another node sharing the cache, the next start after a
            # power cut) sees the old file or the new one, never half of one.
            with atomic.atomic_path(path) as tmp, open(tmp, 'wb') as handle:
                np.savez(
                    handle,
                    tokens=features.tokens,
                    mask=features.mask,
                    pooled=features.pooled,
                    sha256=np.asarray(_features_sha256(features)),
                    phrase=np.asarray(phrase),
                    identity=np.asarray(self.identity),
                    version=np.asarray(_FILE_VERSION),
                )
        except OSError as error:
            self._writable = False
            _LOG.warning(
                'cannot write the text cache in %s (%s); text embeddings are kept in memory'
                ' only until restart',
                self.directory,
                error,
            )


def _features_sha256(features: PhraseFeatures) -> str:
    """sha256 of a phrase's arrays: dtypes, shapes and bytes."""
    hasher = hashlib.sha256()
    for array in (features.tokens, features.mask, features.pooled):
        array = np.ascontiguousarray(array)
        hasher.update(f'{array.dtype.str}{array.shape}'.encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()
