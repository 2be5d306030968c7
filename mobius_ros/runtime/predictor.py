"""The host loop: letterbox, encoder, decoder layers with pruning, mask head, post-processing.

Works over any `Runner` (PyTorch, ONNX Runtime, TensorRT), so the loop that prunes queries
between decoder layers is the same code on a laptop CPU and on a Jetson, and the CPU tests
exercise exactly what the robot runs. numpy and OpenCV only: no torch.

Per frame (DESIGN §4.7, §5):
1. letterbox the image into the fixed canvas and normalise it;
2. run the encoder graph (memory, mask features, the initial Q queries);
3. run decoder layer l = 0, 1, ...: after each, keep the queries whose confidence reaches
   thr(l) (the top `min_keep` always survive) and stop after `max_layers`;
4. run the mask head on the survivors of the last executed layer only;
5. score = class probability x mask quality (mean mask probability inside the mask), keep the
   top-k above the score threshold, paste masks and boxes back into the original image.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mobius_ros.common.errors import ImageError, SegmenterError
from mobius_ros.export import io_spec
from mobius_ros.model.pruning import PruningConfig, keep_indices, threshold
from mobius_ros.ops.boxes import box_cxcywh_to_xyxy, clip_boxes, scale_boxes
from mobius_ros.ops.image import letterbox, normalize_image
from mobius_ros.ops.masks import mask_quality, paste_masks
from mobius_ros.runtime.budget import BudgetController, BudgetDecision
from mobius_ros.runtime.result import Prediction, Task
from mobius_ros.runtime.runner import Runner
from mobius_ros.runtime.vocabulary import TextBatch


@dataclass(frozen=True)
class TextInputs:
    """The text side of one frame, shaped for the encoder graph (batch 1, numpy).

    Attributes:
        text_tokens: [1, T, D] float32, the valid tokens of all phrases, packed.
        text_mask: [1, T] bool (all True once packed; kept because the graphs take it).
        class_embed: [1, K, D] float32 pooled phrase embeddings (K = 1 for an expression).
    """

    text_tokens: np.ndarray
    text_mask: np.ndarray
    class_embed: np.ndarray

    @classmethod
    def from_batch(cls, batch: TextBatch) -> TextInputs:
        """Pack K phrases' features ([K, L, D], [K, L], [K, D]) into encoder inputs."""
        tokens, _ = batch.packed()
        return cls(
            text_tokens=np.ascontiguousarray(tokens[None], np.float32),
            text_mask=np.ones((1, tokens.shape[0]), bool),
            class_embed=np.ascontiguousarray(batch.pooled[None], np.float32),
        )

    @property
    def num_classes(self) -> int:
        return int(self.class_embed.shape[1])


@dataclass
class GraphRunners:
    """One runner per exported graph (see `export.io_spec`).

    Attributes:
        encoder: image + text -> memory, mask features, initial queries.
        decoder_layers: one runner per decoder layer, vocabulary / agnostic mode.
        mask_head: queries + mask features -> mask logits.
        referring_layers: decoder layers that also attend over the expression (may be empty:
            then referring mode is unavailable).
    """

    encoder: Runner
    decoder_layers: Sequence[Runner]
    mask_head: Runner
    referring_layers: Sequence[Runner] = field(default_factory=tuple)

    def close(self) -> None:
        for runner in (self.encoder, *self.decoder_layers, self.mask_head, *self.referring_layers):
            runner.close()


@dataclass(frozen=True)
class PredictorSettings:
    """Per-frame settings that may change at run time (replaced as a whole, never mutated)."""

    score_threshold: float = 0.3
    max_detections: int = 100
    pruning: PruningConfig = field(default_factory=PruningConfig)
    mask_threshold: float = 0.0  # on mask logits: probability 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f'score_threshold must be in [0, 1], got {self.score_threshold}')
        if self.max_detections < 1:
            raise ValueError(f'max_detections must be >= 1, got {self.max_detections}')


@dataclass(frozen=True)
class DecoderResult:
    """What the decoder loop leaves for post-processing (batch element 0).

    Attributes:
        logits: [Q', K] class logits of the survivors of the last executed layer (those that
            can reach the score threshold, see `Predictor.decode`).
        boxes: [Q', 4] cx, cy, w, h normalised to the canvas.
        confidence: [Q'].
        masks: [Q', H/4, W/4] mask logits.
        query_index: [Q'] indices of the survivors into the initial Q queries.
        queries_kept: survivors after each executed layer.
    """

    logits: np.ndarray
    boxes: np.ndarray
    confidence: np.ndarray
    masks: np.ndarray
    query_index: np.ndarray
    queries_kept: tuple[int, ...]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # The tanh form never overflows (1 / (1 + exp(-x)) warns for logits below about -88).
    return 0.5 + 0.5 * np.tanh(0.5 * x)


class Predictor:
    """Runs the split graphs with the pruning loop and post-processes to a `Prediction`.

    Args:
        runners: the graphs.
        input_size: (H, W) of the letterbox canvas the graphs were exported for.
        settings: thresholds and pruning; replace with `configure`.
        budget: an optional latency controller (`runtime.budget.BudgetController`); when given
            it picks the pruning and depth of each frame and is told what each stage cost.
    """

    def __init__(
        self,
        runners: GraphRunners,
        *,
        input_size: tuple[int, int],
        settings: PredictorSettings | None = None,
        budget: BudgetController | None = None,
    ) -> None:
        if input_size[0] % 32 or input_size[1] % 32:
            raise ValueError(f'input_size {input_size} must be multiples of 32')
        self.runners = runners
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.settings = settings or PredictorSettings()
        self.budget = budget

    @property
    def num_layers(self) -> int:
        return len(self.runners.decoder_layers)

    def configure(self, **changes: object) -> None:
        """Replace settings (score_threshold, max_detections, pruning, mask_threshold)."""
        self.settings = replace(self.settings, **changes)  # type: ignore[arg-type]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
        """[H, W, 3] uint8 RGB -> (image [1, 3, Hc, Wc] float32, scale, pad)."""
        check_image(image)
        canvas, scale, pad = letterbox(image, self.input_size)
        return normalize_image(canvas)[None], scale, pad

    def predict(
        self,
        image: np.ndarray,
        text: TextInputs,
        *,
        phrases: Sequence[str],
        task: Task = Task.VOCABULARY,
        vocabulary_version: int = 0,
        score_threshold: float | None = None,
    ) -> Prediction:
        """Segment one image [H, W, 3] uint8 RGB with the given text.

        In referring mode (`task=Task.REFERRING`, one expression) the single best instance is
        returned whatever its score: the expression asserts that its object is there.
        """
        # One read each: `Segmenter.configure` may replace them from another thread mid-frame,
        # and a decision must be reported to the controller that made it.
        settings, budget = self.settings, self.budget
        pruning, decision = self._choose_pruning(settings.pruning, budget)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        tensor, scale, pad = self.preprocess(image)
        timings['preprocess'] = _ms(start)

        t = time.perf_counter()
        state = self.runners.encoder.infer(
            {
                io_spec.IMAGE.name: tensor,
                io_spec.TEXT_TOKENS.name: text.text_tokens,
                io_spec.TEXT_MASK.name: text.text_mask,
                io_spec.CLASS_EMBED.name: text.class_embed,
            }
        )
        timings['encoder'] = _ms(t)

        t = time.perf_counter()
        threshold_ = settings.score_threshold if score_threshold is None else score_threshold
        referring = text.text_mask if task is Task.REFERRING else None
        result, masks_ms = self.decode(
            state,
            pruning=pruning,
            referring_mask=referring,
            # A referring frame returns its best query whatever the score: all need masks.
            min_class_prob=0.0 if task is Task.REFERRING else threshold_,
        )
        timings['decoder'] = _ms(t) - masks_ms
        timings['masks'] = masks_ms

        t = time.perf_counter()
        prediction = self.postprocess(
            result,
            image_size=(int(image.shape[0]), int(image.shape[1])),
            scale=scale,
            pad=pad,
            phrases=tuple(phrases),
            task=task,
            score_threshold=threshold_,
            vocabulary_version=vocabulary_version,
        )
        timings['postprocess'] = _ms(t)
        timings['total'] = _ms(start)
        prediction.timings_ms.update(timings)
        if budget is not None and decision is not None:
            report = budget.observe(timings, result.queries_kept, decision)
            prediction.budget.update(dict(report))
        return prediction

    def decode(
        self,
        state: Mapping[str, np.ndarray],
        *,
        pruning: PruningConfig,
        referring_mask: np.ndarray | None = None,
        min_class_prob: float = 0.0,
    ) -> tuple[DecoderResult, float]:
        """Decoder layers with the keep rule, then the mask head on the survivors.

        `state` holds the encoder graph's outputs; `referring_mask` ([1, T] bool, the
        expression's text mask) selects the referring decoder layers. Survivors whose best
        class probability is below `min_class_prob` are left out of the result and never reach
        the mask head: a score is class probability x mask quality <= class probability, so
        with the score threshold here they could not be returned anyway.

        Returns the survivors' outputs and the milliseconds spent in the mask head.
        """
        referring = referring_mask is not None
        layers = self.runners.referring_layers if referring else self.runners.decoder_layers
        if not layers:
            raise SegmenterError('this model was exported without referring decoder layers')
        num_layers = len(layers)
        depth = num_layers if pruning.max_layers is None else min(num_layers, pruning.max_layers)
        queries = state[io_spec.QUERIES.name]
        boxes = state[io_spec.REFERENCE_BOXES.name]
        index = np.arange(queries.shape[1], dtype=np.int64)
        shared = {
            io_spec.MEMORY.name: state[io_spec.MEMORY.name],
            io_spec.CLASS_EMBED_PROJ.name: state[io_spec.CLASS_EMBED_PROJ.name],
        }
        if referring:
            shared[io_spec.TEXT_MEMORY.name] = state[io_spec.TEXT_MEMORY.name]
            shared[io_spec.TEXT_MASK.name] = referring_mask
        kept: list[int] = []
        for layer in range(depth):
            out = layers[layer].infer(
                {io_spec.QUERIES.name: queries, io_spec.REFERENCE_BOXES.name: boxes, **shared}
            )
            queries = out[io_spec.NEXT_QUERIES.name]
            boxes = out[io_spec.NEXT_REFERENCE_BOXES.name]
            logits = out[io_spec.LOGITS.name]
            confidence = out[io_spec.CONFIDENCE.name]
            if pruning.enabled:
                thr = threshold(layer, num_layers, pruning)
                keep = keep_indices(confidence[0], thr, pruning.min_keep)
                queries, boxes = queries[:, keep], boxes[:, keep]
                logits, confidence, index = logits[:, keep], confidence[:, keep], index[keep]
            kept.append(int(index.shape[0]))
        if min_class_prob > 0.0:
            passing = np.flatnonzero(_sigmoid(logits[0]).max(axis=-1) >= min_class_prob)
            queries, boxes = queries[:, passing], boxes[:, passing]
            logits, confidence, index = logits[:, passing], confidence[:, passing], index[passing]
        t = time.perf_counter()
        mask_features = state[io_spec.MASK_FEATURES.name]
        if queries.shape[1] == 0:
            # Nothing to segment; an empty query axis is outside a TensorRT profile anyway.
            masks = np.zeros((1, 0, *mask_features.shape[2:]), np.float32)
        else:
            masks = self.runners.mask_head.infer(
                {
                    io_spec.QUERIES.name: np.ascontiguousarray(queries),
                    io_spec.MASK_FEATURES.name: mask_features,
                }
            )[io_spec.MASKS.name]
        result = DecoderResult(
            logits=logits[0],
            boxes=boxes[0],
            confidence=confidence[0],
            masks=masks[0],
            query_index=index,
            queries_kept=tuple(kept),
        )
        return result, _ms(t)

    def postprocess(
        self,
        result: DecoderResult,
        *,
        image_size: tuple[int, int],
        scale: float,
        pad: tuple[int, int],
        phrases: tuple[str, ...],
        task: Task,
        score_threshold: float,
        vocabulary_version: int = 0,
    ) -> Prediction:
        """Scores, top-k and the way back from the canvas to the original image."""
        probs = _sigmoid(result.logits.astype(np.float32))  # [Q', K]
        class_ids = probs.argmax(axis=1)
        class_prob = probs[np.arange(probs.shape[0]), class_ids]
        # score = class_prob x quality with quality <= 1, so a query whose class probability is
        # already below the threshold cannot pass: its masks are never scored.
        referring = task is Task.REFERRING
        candidates = np.arange(class_prob.shape[0])
        if not referring:
            candidates = np.flatnonzero(class_prob >= score_threshold)
        candidate_scores = class_prob[candidates] * mask_quality(
            result.masks[candidates], threshold=self.settings.mask_threshold
        )
        order = candidates[np.argsort(-candidate_scores, kind='stable')]
        scores = np.zeros_like(class_prob)
        scores[candidates] = candidate_scores
        if referring:
            order = order[:1]
        else:
            order = order[scores[order] >= score_threshold][: self.settings.max_detections]
        extra = {
            'task': task,
            'vocabulary_version': vocabulary_version,
            'queries_kept': result.queries_kept,
        }
        if order.size == 0:
            return Prediction.empty(image_size, phrases, **extra)
        canvas_h, canvas_w = self.input_size
        boxes = box_cxcywh_to_xyxy(result.boxes[order].astype(np.float32))
        boxes = boxes * np.array([canvas_w, canvas_h, canvas_w, canvas_h], np.float32)
        boxes = clip_boxes(scale_boxes(boxes, scale=scale, pad=pad), image_size)
        masks = paste_masks(
            result.masks[order],
            image_hw=image_size,
            scale=scale,
            pad=pad,
            canvas_hw=self.input_size,
            threshold=self.settings.mask_threshold,
        )
        return Prediction(
            boxes=boxes.astype(np.float32),
            scores=scores[order].astype(np.float32),
            class_ids=class_ids[order].astype(np.int64),
            phrases=phrases,
            masks=masks,
            image_size=image_size,
            **extra,  # type: ignore[arg-type]
        )

    @staticmethod
    def _choose_pruning(
        pruning: PruningConfig, budget: BudgetController | None
    ) -> tuple[PruningConfig, BudgetDecision | None]:
        if budget is None:
            return pruning, None
        decision = budget.choose()
        return decision.pruning, decision

    def close(self) -> None:
        self.runners.close()


def check_image(image: np.ndarray) -> None:
    """Raise ImageError unless `image` is a non-empty [H, W, 3] uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f'the image must be a numpy array, got {type(image).__name__}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f'the image must be [H, W, 3] RGB, got shape {list(image.shape)}')
    if image.dtype != np.uint8:
        raise ImageError(f'the image must be uint8 (0..255), got {image.dtype}')
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f'the image is empty or degenerate: {list(image.shape)}')


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
