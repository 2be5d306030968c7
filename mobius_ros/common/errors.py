"""The runtime's user-facing errors (the facade contract of `runtime/segmenter.py`).

Every message is meant to be read by a robot operator: it names the tensor, phrase, file or
setting at fault and says what was expected.
"""

from __future__ import annotations


class SegmenterError(Exception):
    """Base of every runtime error; the message is user-facing."""


class VocabularyError(SegmenterError):
    """Empty or oversized vocabulary, overlong or blank phrase, bad characters."""


class ImageError(SegmenterError):
    """Wrong image shape or dtype, or an empty image."""


class ModelLoadError(SegmenterError):
    """Missing or corrupt checkpoint, graph or engine; engine sidecar mismatch."""


class RunnerInputError(SegmenterError, ValueError):
    """Feeds that do not match a runner's inputs (missing, extra, dtype, rank, fixed dim)."""
