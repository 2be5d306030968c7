"""Run a model over an evaluation set and score it with `train/evaluate.py` (DESIGN §4.9).

Three tasks: category-guided mask/box AP, category-agnostic AR@100 (prompt "object") and
referring P@0.5 / oIoU (every expression of every image, held-out phrasings reported apart), plus
the pruning study: AP, mean queries kept per layer and decoder MACs for pruning off and each
threshold trajectory. Post-processing mirrors `runtime/predictor.py` (score = class probability x
mask quality, top-k, masks back at the original resolution). Category-guided AP ranks every
(query, class) pair as the paper's codebase does; the runtime's one label per query is reported
beside it ('one_label/'), so both the paper-comparable and the deployed numbers are there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.pruning import PruningConfig
from mobius_ros.ops.boxes import box_cxcywh_to_xyxy, box_xyxy_to_xywh
from mobius_ros.ops.image import PIXEL_MEAN, PIXEL_STD, letterbox, normalize_image
from mobius_ros.ops.masks import rle_encode
from mobius_ros.runtime.result import Prediction, Task
from mobius_ros.train.data.collate import collate
from mobius_ros.train.data.sample import Sample
from mobius_ros.train.evaluate import (
    coco_evaluate,
    predictions_to_coco,
    referring_metrics,
    referring_top1,
)

TRAJECTORIES = ('none', 'sigmoid', 'logarithmic', 'exponential')


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate.

    Attributes:
        batch_size: images per forward pass without pruning (pruning runs batch 1).
        max_detections: top-k per image (100 for AR@100).
        score_threshold: 0 keeps every top-k detection, as COCO AP expects.
        pruning_min_keep: `min_keep` of the pruning study (the paper's 100 is for Q = 300).
        flops_images: images whose decoder MACs are counted per pruning setting.
        labels_per_query: 'all' ranks every (query, class) pair, so a query may be reported
            under several classes: COCO AP as Mask2Former, MaskDINO and GLEE (and so the paper)
            compute it. 'one' scores each query once, with its best class: what the runtime
            publishes (one label per object); `evaluate_model` reports it too, under
            'one_label/'. Category-guided AP only; agnostic and referring have one class.
        canvas: (H, W) letterbox canvas, multiples of 32, or None. None runs each image at
            its own size. A canvas feeds the model what the runtime feeds it: the frame scaled
            (up or down) to fit the canvas, placed top-left on black (`ops.image.letterbox`),
            with predictions mapped back to the frame's pixels. So 'at 640 px through the
            node's 384x512 canvas' is measured as the node would see it.
    """

    batch_size: int = 8
    max_detections: int = 100
    score_threshold: float = 0.0
    pruning_min_keep: int = 30
    flops_images: int = 8
    labels_per_query: str = 'all'
    canvas: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.labels_per_query not in ('one', 'all'):
            raise ValueError(f"labels_per_query is 'one' or 'all', got {self.labels_per_query!r}")
        if self.canvas is not None:
            h, w = self.canvas
            if h <= 0 or w <= 0 or h % 32 or w % 32:
                raise ValueError(f'canvas {self.canvas} must be positive multiples of 32')


@dataclass(frozen=True)
class EvalSet:
    """Evaluation images with their ground truth.

    Attributes:
        samples: vocabulary-mode samples (images as normalised tensors [3, h, w]).
        ground_truth: COCO instances dict of the same images (ids = sample.image_id).
        category_ids: phrase -> COCO category id.
        referring: referring samples (one expression each), possibly empty.
    """

    samples: list[Sample]
    ground_truth: dict[str, Any]
    category_ids: dict[str, int]
    referring: list[Sample]


def to_prediction(
    logits: Tensor,
    boxes: Tensor,
    masks: Tensor,
    *,
    tensor_hw: tuple[int, int],
    sample: Sample,
    task: Task,
    settings: EvalSettings,
    queries_kept: tuple[int, ...] = (),
) -> Prediction:
    """One image's final-layer output -> a `Prediction` in original-image pixels.

    Args:
        logits: [Q, K] class logits; boxes: [Q, 4] cxcywh normalised to the padded tensor;
            masks: [Q, H/4, W/4] mask logits.
        tensor_hw: (H, W) of the padded input tensor.
        sample: the evaluated sample (its image sits top-left in the tensor; `orig_size` is
            the size on disk).
    """
    probs = logits.float().sigmoid()
    masks = masks.float()
    inside = masks > 0
    quality = (masks.sigmoid() * inside).sum((1, 2)) / inside.sum((1, 2)).clamp(min=1)
    if task is Task.VOCABULARY and settings.labels_per_query == 'all':
        pair_scores = (probs * quality[:, None]).flatten()
        pairs = pair_scores.argsort(descending=True)[: settings.max_detections]
        num_classes = probs.shape[1]
        queries, class_ids = pairs // num_classes, pairs % num_classes
        scores, boxes, masks = pair_scores[pairs], boxes[queries], masks[queries]
    else:
        class_prob, class_ids = probs.max(dim=1)
        scores = class_prob * quality
    order = scores.argsort(descending=True)
    if task is Task.REFERRING:
        order = order[:1]
    else:
        order = order[scores[order] >= settings.score_threshold][: settings.max_detections]
    h, w = sample.image_hw
    orig_h, orig_w = sample.orig_size
    extra = {'task': task, 'queries_kept': queries_kept}
    if order.numel() == 0:
        return Prediction.empty((orig_h, orig_w), sample.phrases, **extra)
    H, W = tensor_hw
    xyxy = box_cxcywh_to_xyxy(boxes[order].float()) * boxes.new_tensor([W, H, W, H])
    xyxy = xyxy * boxes.new_tensor([orig_w / w, orig_h / h, orig_w / w, orig_h / h])
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, orig_w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, orig_h)
    full = F.interpolate(masks[order][None], size=(H, W), mode='bilinear', align_corners=False)
    full = full[:, :, :h, :w]
    if (h, w) != (orig_h, orig_w):
        full = F.interpolate(full, size=(orig_h, orig_w), mode='bilinear', align_corners=False)
    return Prediction(
        boxes=xyxy.cpu().numpy().astype(np.float32),
        scores=scores[order].cpu().numpy().astype(np.float32),
        class_ids=class_ids[order].cpu().numpy().astype(np.int64),
        phrases=tuple(sample.phrases),
        masks=(full[0] > 0).cpu().numpy(),
        image_size=(orig_h, orig_w),
        **extra,  # type: ignore[arg-type]
    )


def predict(
    model: nn.Module,
    samples: Sequence[Sample],
    *,
    task: Task,
    settings: EvalSettings,
    pruning: PruningConfig | None = None,
) -> list[Prediction]:
    """Predictions for samples (one dataset); batch 1 when pruning is enabled."""
    return predict_each(model, samples, task=task, settings=(settings,), pruning=pruning)[0]


@torch.inference_mode()
def predict_each(
    model: nn.Module,
    samples: Sequence[Sample],
    *,
    task: Task,
    settings: Sequence[EvalSettings],
    pruning: PruningConfig | None = None,
) -> list[list[Prediction]]:
    """One forward pass, post-processed once per settings (e.g. both AP protocols).

    The batch size is that of the first settings (1 when pruning is enabled).
    """
    device = next(model.parameters()).device
    batch_size = 1 if pruning is not None and pruning.enabled else settings[0].batch_size
    referring = task is Task.REFERRING
    features = None if referring else model.encode_text(list(samples[0].phrases))
    out: list[list[Prediction]] = [[] for _ in settings]
    canvas = settings[0].canvas
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        if canvas is not None:
            chunk, canvases = zip(*(letterbox_sample(s, canvas) for s in chunk))
            chunk = list(chunk)
        batch = collate(chunk)
        images = torch.stack(canvases) if canvas is not None else batch.images
        images = images.to(device)
        text = list(batch.phrases) if referring else features
        output = model(images, text, referring=referring, pruning=pruning)
        final = output.layers[-1]
        kept = tuple(int(layer.logits.shape[1]) for layer in output.layers)
        for b, sample in enumerate(chunk):
            for predictions, each in zip(out, settings):
                predictions.append(
                    to_prediction(
                        final.logits[b],
                        final.boxes[b],
                        final.masks[b],
                        tensor_hw=tuple(images.shape[-2:]),
                        sample=sample,
                        task=task,
                        settings=each,
                        queries_kept=kept,
                    )
                )
    return out


def sample_rgb(sample: Sample) -> np.ndarray:
    """A sample's normalised tensor back to [H, W, 3] uint8 RGB at its original size."""
    import cv2

    image = sample.image.detach().cpu().numpy().transpose(1, 2, 0)
    rgb = np.clip(np.rint(image * np.array(PIXEL_STD) + np.array(PIXEL_MEAN)), 0, 255)
    rgb = rgb.astype(np.uint8)
    height, width = sample.orig_size
    if rgb.shape[:2] != (height, width):
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    return rgb


def letterbox_sample(sample: Sample, canvas: tuple[int, int]) -> tuple[Sample, Tensor]:
    """`sample` as the runtime would feed it: (the sample with its image at the scale that fits
    `canvas`, its original size kept and its masks dropped (the ground truth stays with the
    evaluation set), and the normalised [3, H, W] canvas tensor)."""
    placed, scale, _ = letterbox(sample_rgb(sample), canvas)
    oh, ow = sample.orig_size
    h = min(canvas[0], max(1, round(oh * scale)))
    w = min(canvas[1], max(1, round(ow * scale)))
    tensor = torch.from_numpy(normalize_image(placed))
    return replace(sample, image=tensor[:, :h, :w], masks=None), tensor


def evaluate_vocabulary(
    model: nn.Module,
    data: EvalSet,
    *,
    settings: EvalSettings,
    pruning: PruningConfig | None = None,
) -> tuple[dict[str, float], list[Prediction]]:
    """COCO box and mask AP of category-guided predictions."""
    predictions = predict(
        model, data.samples, task=Task.VOCABULARY, settings=settings, pruning=pruning
    )
    return vocabulary_metrics(data, predictions), predictions


def vocabulary_metrics(data: EvalSet, predictions: Sequence[Prediction]) -> dict[str, float]:
    detections = predictions_to_coco(
        predictions, [s.image_id for s in data.samples], data.category_ids
    )
    return coco_evaluate(data.ground_truth, detections)


def evaluate_agnostic(
    model: nn.Module, data: EvalSet, *, settings: EvalSettings
) -> dict[str, float]:
    """Category-agnostic AR@100 (and AP) with the prompt "object"."""
    samples = [
        replace(s, phrases=('object',), labels=np.zeros_like(s.labels)) for s in data.samples
    ]
    predictions = predict(model, samples, task=Task.AGNOSTIC, settings=settings)
    return agnostic_metrics(data, predictions)


def agnostic_metrics(data: EvalSet, predictions: Sequence[Prediction]) -> dict[str, float]:
    """'agnostic/*' COCO metrics of class-agnostic predictions, one per sample of `data`."""
    detections = _agnostic_detections(predictions, [s.image_id for s in data.samples])
    metrics = coco_evaluate(data.ground_truth, detections, use_categories=False)
    return {f'agnostic/{k}': v for k, v in metrics.items()}


def _agnostic_detections(
    predictions: Sequence[Prediction], image_ids: Sequence[int]
) -> list[dict]:
    results = []
    for pred, image_id in zip(predictions, image_ids):
        xywh = box_xyxy_to_xywh(np.asarray(pred.boxes, np.float64))
        for n in range(len(pred)):
            results.append(
                {
                    'image_id': int(image_id),
                    'category_id': 1,  # ignored: use_categories=False
                    'bbox': [float(v) for v in xywh[n]],
                    'score': float(pred.scores[n]),
                    'segmentation': rle_encode(pred.masks[n]),
                }
            )
    return results


def evaluate_referring(
    model: nn.Module, data: EvalSet, *, settings: EvalSettings
) -> dict[str, float]:
    """Referring P@0.5, oIoU and mIoU over all expressions, seen and held-out phrasings apart,
    and per expression kind where the samples name one (synthetic scenes: attribute, extreme,
    relation; keys `referring/kind_<kind>/...`)."""
    if not data.referring:
        return {}
    predictions = predict(model, data.referring, task=Task.REFERRING, settings=settings)
    return referring_metrics_of(data, predictions)


def referring_metrics_of(data: EvalSet, predictions: Sequence[Prediction]) -> dict[str, float]:
    """'referring/*' metrics of one prediction per referring sample of `data`."""
    groups: dict[str, list[int]] = {'all': list(range(len(data.referring)))}
    for i, sample in enumerate(data.referring):
        meta = sample.meta or {}
        groups.setdefault('held_out' if meta.get('held_out') else 'seen', []).append(i)
        if meta.get('kind'):
            groups.setdefault(f'kind_{meta["kind"]}', []).append(i)
    metrics: dict[str, float] = {}
    for group, index in groups.items():
        tops = [referring_top1(predictions[i]) for i in index]
        gts = [data.referring[i] for i in index]
        scale = [_orig_scale(s) for s in gts]
        values = referring_metrics(
            np.stack([t[0] for t in tops]),
            np.stack([s.boxes[0] * k for s, k in zip(gts, scale)]),
            pred_masks=[t[1] for t in tops],
            gt_masks=[_orig_mask(s) for s in gts],
        )
        metrics.update({f'referring/{group}/{k}': v for k, v in values.items()})
        metrics[f'referring/{group}/count'] = float(len(index))
    return metrics


def _orig_scale(sample: Sample) -> np.ndarray:
    h, w = sample.image_hw
    oh, ow = sample.orig_size
    return np.array([ow / w, oh / h, ow / w, oh / h], np.float32)


def _orig_mask(sample: Sample) -> np.ndarray:
    mask = sample.masks[0]
    if mask.shape != tuple(sample.orig_size):
        import cv2

        resized = cv2.resize(mask.astype(np.uint8), sample.orig_size[::-1], cv2.INTER_NEAREST)
        return resized.astype(bool)
    return mask


def pruning_study(
    model: nn.Module,
    data: EvalSet,
    *,
    settings: EvalSettings,
    trajectories: Sequence[str] = TRAJECTORIES,
    configs: Sequence[PruningConfig] | None = None,
    done: dict[PruningConfig, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Per trajectory: mask/box AP, mean queries kept per layer, decoder MMACs per image.

    `configs` replaces the default configuration of each trajectory (equal-FLOPs study);
    `done` holds rows already measured, by configuration, and receives the new ones.
    """
    from mobius_ros.model.flops import DECODER, count_model_forward

    rows = []
    features = model.encode_text(list(data.samples[0].phrases))
    device = next(model.parameters()).device
    if configs is None:
        configs = [_study_config(name, settings) for name in trajectories]
    done = {} if done is None else done
    for config in configs:
        if config in done:
            rows.append(done[config])
            continue
        metrics, predictions = evaluate_vocabulary(model, data, settings=settings, pruning=config)
        kept = np.asarray([p.queries_kept for p in predictions], np.float64).mean(0)
        macs = []
        for sample in data.samples[: settings.flops_images]:
            image = collate([sample]).images.to(device)
            # no_grad, not inference_mode: the MAC counter's dispatch mode sees no ops under
            # inference_mode.
            with torch.no_grad():
                counted = count_model_forward(model, image, features, pruning=config)
            macs.append(counted.components[DECODER] / 1e6)
        done[config] = {
            'trajectory': config.trajectory,
            'lower': config.lower,
            'upper': round(config.upper, 4),
            'mask_AP': metrics['segm/AP'],
            'box_AP': metrics['bbox/AP'],
            'queries_kept': [round(float(k), 1) for k in kept],
            'decoder_MMACs': float(np.mean(macs)) if macs else float('nan'),
        }
        rows.append(done[config])
    return rows


def _study_config(trajectory: str, settings: EvalSettings) -> PruningConfig:
    return PruningConfig(trajectory=trajectory, min_keep=settings.pruning_min_keep)


def equal_flops_configs(
    model: nn.Module,
    data: EvalSet,
    *,
    settings: EvalSettings,
    reference: str = 'sigmoid',
    others: Sequence[str] = ('logarithmic', 'exponential'),
    steps: int = 12,
) -> list[PruningConfig]:
    """Configurations of `others` that prune as much as `reference` (the paper's Tab. 15).

    Decoder MACs grow with the queries each layer keeps, so the comparison holds the total of
    queries kept over the layers (mean per image) equal: each other trajectory's `upper`
    threshold is found by bisection (the count falls as `upper` rises) on the first
    `settings.flops_images` images. Where no `upper` reaches the reference (min_keep floors, or
    too few layers for the shapes to differ) the closest one is taken; the study's MMACs column
    shows how close it came.
    """
    samples = data.samples[: max(settings.flops_images, 1)]

    def total_kept(config: PruningConfig) -> float:
        preds = predict(model, samples, task=Task.VOCABULARY, settings=settings, pruning=config)
        return float(np.mean([sum(p.queries_kept) for p in preds]))

    base = _study_config(reference, settings)
    target = total_kept(base)
    matched = [base]
    for name in others:
        config = replace(base, trajectory=name)
        upper = match_upper(
            lambda u, c=config: total_kept(replace(c, upper=u)),
            target,
            low=config.lower,
            start=config.upper,
            steps=steps,
        )
        matched.append(replace(config, upper=upper))
    return matched


def match_upper(
    count: Callable[[float], float],
    target: float,
    *,
    low: float,
    start: float,
    high: float = 1.0,
    steps: int = 12,
) -> float:
    """The threshold in [low, high] whose `count` comes closest to `target`, by bisection.

    `count` (queries kept) must not rise as the threshold rises. `start` is tried first and kept
    unless a bisection point comes strictly closer.
    """
    best, best_gap = start, abs(count(start) - target)
    for _ in range(steps):
        middle = (low + high) / 2
        value = count(middle)
        if abs(value - target) < best_gap:
            best, best_gap = middle, abs(value - target)
        if value > target:
            low = middle
        else:
            high = middle
    return best


def evaluate_model(
    model: nn.Module,
    data: EvalSet,
    *,
    settings: EvalSettings | None = None,
    tasks: Sequence[str] = ('vocabulary', 'agnostic', 'referring'),
    with_pruning_study: bool = False,
    with_equal_flops: bool = False,
) -> dict[str, Any]:
    """All metrics of `tasks` (percentages), plus the pruning studies when asked.

    `with_pruning_study`: every trajectory at its default thresholds ('pruning_study');
    `with_equal_flops`: sigmoid, logarithmic and exponential pruning the same number of queries
    ('pruning_equal_flops', see `equal_flops_configs`).
    """
    settings = settings or EvalSettings()
    model.eval()
    results: dict[str, Any] = {}
    if 'vocabulary' in tasks:
        other = 'one' if settings.labels_per_query == 'all' else 'all'
        main, second = predict_each(
            model,
            data.samples,
            task=Task.VOCABULARY,
            settings=(settings, replace(settings, labels_per_query=other)),
        )
        results.update(vocabulary_metrics(data, main))
        prefix = 'one_label' if other == 'one' else 'all_labels'
        results.update({f'{prefix}/{k}': v for k, v in vocabulary_metrics(data, second).items()})
    if 'agnostic' in tasks:
        results.update(evaluate_agnostic(model, data, settings=settings))
    if 'referring' in tasks:
        results.update(evaluate_referring(model, data, settings=settings))
    done: dict[PruningConfig, dict[str, Any]] = {}  # the sigmoid default serves both studies
    if with_pruning_study:
        results['pruning_study'] = pruning_study(model, data, settings=settings, done=done)
    if with_equal_flops:
        configs = equal_flops_configs(model, data, settings=settings)
        results['pruning_equal_flops'] = pruning_study(
            model, data, settings=settings, configs=configs, done=done
        )
    return results
