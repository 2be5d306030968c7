"""The runtime facade: one object that loads a model and segments images with text.

The ROS node, `mobius segment` and `mobius bag` use only this. It composes the pieces:
checkpoint or export folder -> graphs for the chosen backend (PyTorch wrappers, ONNX Runtime, or
TensorRT engines built from the ONNX files on first use) -> the predictor's pruning loop, the
vocabulary cache and, with a latency budget, the budget controller.

Backends: 'torch' loads the checkpoint with PyTorch; 'onnxruntime' and 'tensorrt' use an export
folder: either the one given as `checkpoint`, or `engine_dir/<key>/` exported from the
checkpoint on first use (which needs torch once); with that folder in place neither needs torch.

Thread safety: `segment` may run on a worker thread while `set_vocabulary` runs on a service
thread. The active vocabulary and its text inputs are one immutable object, swapped by a single
attribute assignment, so a frame sees either the old or the new vocabulary, never a mix. Changes
of the vocabulary are serialised among themselves (an append reads the current vocabulary, so two
concurrent appends must not both start from the same one); frames never wait for that lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType

import numpy as np

from mobius_ros.common.errors import SegmenterError
from mobius_ros.export.engine_cache import PRECISIONS
from mobius_ros.model.pruning import PruningConfig
from mobius_ros.runtime.backends import open_backend, resolve_checkpoint
from mobius_ros.runtime.budget import BudgetController
from mobius_ros.runtime.predictor import Predictor, PredictorSettings, TextInputs
from mobius_ros.runtime.result import Prediction, Task
from mobius_ros.runtime.vocabulary import (
    TextEmbeddingCache,
    Vocabulary,
    VocabularyUpdate,
    agnostic_vocabulary,
    next_vocabulary,
    validate_phrases,
)

_LOG = logging.getLogger(__name__)

BACKENDS = ('torch', 'onnxruntime', 'tensorrt')
BUILD_POLICIES = ('never', 'if_missing', 'if_mismatched')
ENGINE_PRECISIONS = PRECISIONS

__all__ = [
    'Segmenter',
    'SegmenterConfig',
    'Vocabulary',
    'VocabularyUpdate',
    'resolve_checkpoint',
]


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything the facade needs; parsed once from YAML / ROS parameters / CLI flags.

    Attributes:
        checkpoint: a `.safetensors` checkpoint (JSON config beside it), an export folder
            (`model.json`), or None for the bundled demo model (`mobius_ros/assets/demo/`).
        backend: 'torch', 'onnxruntime' or 'tensorrt'.
        engine_dir: where exports and engines are cached (never the install tree).
        build_policy: 'never' (missing exports/engines are errors), 'if_missing', or
            'if_mismatched' (also rebuild stale engines).
        engine_precision: TensorRT engines to use or build: 'fp16', 'fp32' or 'int8' (INT8
            engines must be built ahead of time with calibration images: `mobius build-engine`).
        input_size: (H, W) fixed letterbox canvas, multiples of 32.
        score_threshold, max_detections: post-processing.
        pruning: decoder query pruning (ignored while a latency budget is set).
        latency_budget_ms: when set, the budget controller picks pruning and depth per frame.
        max_vocabulary, max_phrase_chars: vocabulary limits.
        cache_dir: on-disk text-embedding cache (None: memory only).
        device: torch device for the 'torch' backend; CUDA ordinal 'cuda:N' for TensorRT.
    """

    checkpoint: str | None = None
    backend: str = 'onnxruntime'
    engine_dir: str = '~/.cache/mobius_ros/engines'
    build_policy: str = 'if_mismatched'
    engine_precision: str = 'fp16'
    input_size: tuple[int, int] = (384, 512)
    score_threshold: float = 0.3
    max_detections: int = 100
    pruning: PruningConfig = field(default_factory=PruningConfig)
    latency_budget_ms: float | None = None
    max_vocabulary: int = 256
    max_phrase_chars: int = 200
    cache_dir: str | None = '~/.cache/mobius_ros/text'
    device: str = 'cpu'

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {self.backend!r}')
        if self.build_policy not in BUILD_POLICIES:
            raise ValueError(
                f'build_policy must be one of {BUILD_POLICIES}, got {self.build_policy!r}'
            )
        if self.engine_precision not in ENGINE_PRECISIONS:
            raise ValueError(
                f'engine_precision must be one of {ENGINE_PRECISIONS},'
                f' got {self.engine_precision!r}'
            )
        h, w = self.input_size
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ValueError(f'input_size {self.input_size} must be positive multiples of 32')
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError(f'latency_budget_ms must be > 0, got {self.latency_budget_ms}')
        if self.max_vocabulary < 1 or self.max_phrase_chars < 1:
            raise ValueError('max_vocabulary and max_phrase_chars must be >= 1')


@dataclass(frozen=True)
class _Active:
    """The installed vocabulary and its ready-made encoder inputs (swapped as one)."""

    vocabulary: Vocabulary
    text: TextInputs


class Segmenter:
    """Open-vocabulary instance segmentation of single images (see the module docstring).

    Raises:
        ModelLoadError: the checkpoint, export or engines cannot be loaded or built.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        self.config = config
        source = resolve_checkpoint(config.checkpoint)
        runners, encoder, self.num_queries = open_backend(source, config)
        self.text_encoder = encoder
        settings = PredictorSettings(
            score_threshold=config.score_threshold,
            max_detections=config.max_detections,
            pruning=config.pruning,
        )
        self._predictor = Predictor(runners, input_size=config.input_size, settings=settings)
        if config.latency_budget_ms is not None:
            self._predictor.budget = self._make_budget(config.latency_budget_ms)
        # An empty cache_dir (e.g. an unset ROS parameter) means memory only, not the cwd.
        cache_dir = config.cache_dir or None
        self._cache = TextEmbeddingCache(encoder.encode, encoder.identity, cache_dir)
        self._active: _Active | None = None
        self._swap_lock = threading.Lock()
        # Frames (the node's worker) and one-shot requests (a service thread) share one predictor:
        # its budget controller and a TensorRT execution context are single-threaded, so
        # inference is serialised. Vocabulary swaps never wait on it.
        self._infer_lock = threading.Lock()
        self.set_agnostic()

    @property
    def vocabulary(self) -> Vocabulary:
        """The installed vocabulary (immutable)."""
        assert self._active is not None
        return self._active.vocabulary

    def text_inputs(self) -> TextInputs:
        """The installed vocabulary's cached encoder inputs (what each frame is fed)."""
        assert self._active is not None
        return self._active.text

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    def set_vocabulary(self, phrases: Sequence[str], *, append: bool = False) -> VocabularyUpdate:
        """Validate, encode (known phrases come from the cache) and install a vocabulary.

        Raises:
            VocabularyError: empty, too many phrases, blank/overlong phrase, control chars.
        """
        with self._swap_lock:
            current = self._active.vocabulary if self._active is not None else None
            vocabulary = next_vocabulary(
                current,
                phrases,
                append=append,
                max_phrases=self.config.max_vocabulary,
                max_chars=self.config.max_phrase_chars,
            )
            return self._install(vocabulary)

    def set_agnostic(self) -> VocabularyUpdate:
        """Install the category-agnostic vocabulary ('object',)."""
        with self._swap_lock:
            current = self._active.vocabulary if self._active is not None else None
            return self._install(agnostic_vocabulary(current))

    def _install(self, vocabulary: Vocabulary) -> VocabularyUpdate:
        start = time.perf_counter()
        text, hits, encoded = self._text(vocabulary.phrases)
        self._active = _Active(vocabulary, text)  # the atomic swap
        return VocabularyUpdate(vocabulary, (time.perf_counter() - start) * 1e3, hits, encoded)

    def _text(self, phrases: Sequence[str]) -> tuple[TextInputs, int, int]:
        batch, hits, encoded = self._cache.get(list(phrases))
        return TextInputs.from_batch(batch), hits, encoded

    def segment(
        self,
        image: np.ndarray,
        *,
        phrases: Sequence[str] | None = None,
        expression: str | None = None,
        agnostic: bool = False,
        score_threshold: float | None = None,
    ) -> Prediction:
        """Segment `image` [H, W, 3] uint8 RGB.

        By default with the installed vocabulary; `phrases` is a one-shot vocabulary (not
        installed); `expression` segments one referring expression (the single best instance,
        Task.REFERRING); `agnostic` segments every 'object'. The prediction always carries the
        phrases it used; its `vocabulary_version` is the installed vocabulary's.

        Raises:
            ImageError: not a non-empty [H, W, 3] uint8 array.
            VocabularyError: bad one-shot phrases or expression.
            SegmenterError: more than one of phrases / expression / agnostic.
        """
        chosen = sum([phrases is not None, expression is not None, bool(agnostic)])
        if chosen > 1:
            raise SegmenterError('give at most one of phrases, expression and agnostic')
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise SegmenterError(f'score_threshold must be in [0, 1], got {score_threshold}')
        active = self._active
        assert active is not None
        version = active.vocabulary.version
        if phrases is not None:
            words = validate_phrases(
                phrases,
                max_phrases=self.config.max_vocabulary,
                max_chars=self.config.max_phrase_chars,
            )
            text, task = self._text(words)[0], Task.VOCABULARY
        elif expression is not None:
            words = validate_phrases(
                [expression], max_phrases=1, max_chars=self.config.max_phrase_chars
            )
            text, task = self._text(words)[0], Task.REFERRING
        elif agnostic:
            words = agnostic_vocabulary(None).phrases
            text, task = self._text(words)[0], Task.AGNOSTIC
        else:
            words, text, task = active.vocabulary.phrases, active.text, active.vocabulary.task
        with self._infer_lock:
            return self._predictor.predict(
                image,
                text,
                phrases=words,
                task=task,
                vocabulary_version=version,
                score_threshold=score_threshold,
            )

    def configure(
        self,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        latency_budget_ms: float | None = None,
        pruning: PruningConfig | None = None,
    ) -> None:
        """Change run-time settings; None leaves a setting as it is.

        A latency budget <= 0 switches the budget controller off.
        """
        changes: dict[str, object] = {}
        if score_threshold is not None:
            changes['score_threshold'] = float(score_threshold)
        if max_detections is not None:
            changes['max_detections'] = int(max_detections)
        if pruning is not None:
            changes['pruning'] = pruning
        try:
            settings = replace(self._predictor.settings, **changes)  # type: ignore[arg-type]
        except ValueError as error:
            raise SegmenterError(str(error)) from error
        self._predictor.settings = settings
        if latency_budget_ms is not None:
            if latency_budget_ms <= 0:
                self._predictor.budget = None
            elif self._predictor.budget is None:
                self._predictor.budget = self._make_budget(latency_budget_ms)
            else:
                self._predictor.budget.set_budget(latency_budget_ms)
            # `config` describes what runs now (it was left at the constructor's budget).
            changes['latency_budget_ms'] = (
                float(latency_budget_ms) if latency_budget_ms > 0 else None
            )
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]

    def _make_budget(self, budget_ms: float) -> BudgetController:
        return BudgetController(
            budget_ms, num_queries=self.num_queries, num_layers=self._predictor.num_layers
        )

    def close(self) -> None:
        self._predictor.close()
        close = getattr(self.text_encoder, 'close', None)
        if close is not None:
            close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
