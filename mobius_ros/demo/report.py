"""What the demo prints and writes: table lines, overlays rebuilt from messages, statistics.

The overlays are drawn from what the node *published* (an `InstanceSegmentation` message and the
image the camera sent), not from a second local inference, so a PNG shows exactly what a robot
subscribed to the node would have received. Works on rclpy and rosbags messages alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.runtime.result import Prediction, Task

HEADER = (
    f'{"frame":>7}  {"source":<11} {"task":<10} {"latency":>8}  {"queries kept":<16}'
    f' {"budget":<12}  objects (phrase score)'
)


def prediction_from_message(msg: Any) -> Prediction:
    """A `Prediction` from a mobius_ros_msgs/InstanceSegmentation message.

    Masks come from the per-instance crops when the node sent them (overlap-safe), otherwise
    from the label image (one instance per pixel).

    Returns:
        boxes [N, 4], scores [N], masks [N, H, W] at the label image's size.
    """
    label = msg.label_image
    height, width = int(label.height), int(label.width)
    dtype = np.uint16 if label.encoding == 'mono16' else np.uint8
    labels = np.frombuffer(bytes(label.data), dtype)
    labels = labels.reshape(height, int(label.step) // labels.itemsize)[:, :width]
    if label.is_bigendian:
        labels = labels.byteswap()
    phrases = tuple(msg.phrases)
    detections = list(msg.detections.detections)
    n = len(detections)
    boxes = np.zeros((n, 4), np.float32)
    scores = np.zeros(n, np.float32)
    class_ids = np.zeros(n, np.int64)
    for k, detection in enumerate(detections):
        box = detection.bbox
        cx, cy = box.center.position.x, box.center.position.y
        boxes[k] = (
            cx - box.size_x / 2,
            cy - box.size_y / 2,
            cx + box.size_x / 2,
            cy + box.size_y / 2,
        )
        hypothesis = detection.results[0].hypothesis if detection.results else None
        scores[k] = hypothesis.score if hypothesis is not None else 0.0
        name = hypothesis.class_id if hypothesis is not None else ''
        class_ids[k] = phrases.index(name) if name in phrases else 0
    masks = np.stack([labels == k + 1 for k in range(n)]) if n else np.zeros((0, height, width))
    masks = masks.astype(bool)
    for crop in msg.masks:
        k = int(crop.index)
        if k >= n or crop.mask.height == 0:
            continue
        pixels = np.frombuffer(bytes(crop.mask.data), np.uint8)
        pixels = pixels.reshape(crop.mask.height, crop.mask.step)[:, : crop.mask.width]
        y, x = int(crop.roi.y_offset), int(crop.roi.x_offset)
        masks[k] = False
        masks[k, y : y + crop.mask.height, x : x + crop.mask.width] = pixels > 0
    task = Task(msg.task) if msg.task in {t.value for t in Task} else Task.VOCABULARY
    return Prediction(
        boxes=boxes,
        scores=scores,
        class_ids=class_ids,
        phrases=phrases or ('object',),
        masks=masks,
        image_size=(height, width),
        task=task,
        vocabulary_version=int(msg.vocabulary_version),
        queries_kept=tuple(int(q) for q in msg.queries_kept),
        timings_ms={'total': float(msg.inference_ms)},
    )


def budget_met(latency_ms: float, budget_ms: float | None) -> bool | None:
    """Whether one frame met the latency budget (None without a budget)."""
    return None if budget_ms is None else latency_ms <= budget_ms


def table_line(
    frame: int | str,
    source: str,
    prediction: Prediction,
    *,
    latency_ms: float,
    inference_ms: float | None = None,
    budget_ms: float | None = None,
    top: int = 4,
) -> str:
    """One readable line: frame, source, task, latency, queries kept per layer, budget, objects.

    The budget column is the budget in force and whether the frame met it: its model time
    (`inference_ms`, what the controller holds at p95), else its latency, within the budget.
    """
    met = budget_met(latency_ms if inference_ms is None else inference_ms, budget_ms)
    budget = '-' if met is None else f'{budget_ms:.1f} {"met" if met else "MISSED"}'
    kept = '/'.join(str(q) for q in prediction.queries_kept) or '-'
    objects = ', '.join(
        f'{label} {score:.2f}'
        for label, score in zip(prediction.labels[:top], prediction.scores[:top])
    )
    if len(prediction) > top:
        objects += f', +{len(prediction) - top} more'
    return (
        f'{frame!s:>7}  {source[:11]:<11} {prediction.task.value:<10} {latency_ms:6.1f}ms'
        f'  {kept:<16} {budget:<12}  {objects or "(nothing above the threshold)"}'
    )


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [H, W] bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def latency_stats(latencies: Sequence[float]) -> dict[str, float]:
    """count, mean, p50 and p95 (ms) of per-frame latencies."""
    if not latencies:
        return {'count': 0}
    values = np.asarray(latencies, np.float64)
    return {
        'count': int(values.size),
        'mean_ms': round(float(values.mean()), 2),
        'p50_ms': round(float(np.percentile(values, 50)), 2),
        'p95_ms': round(float(np.percentile(values, 95)), 2),
    }


def plot_latency(records: Sequence[dict[str, Any]], path: Path) -> bool:
    """Latency and model time per frame against the budget in force, queries kept below.

    Returns False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    frames = [r['frame'] for r in records]
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(7.0, 5.0), dpi=110, height_ratios=(2, 1)
    )
    top.plot(frames, [r['latency_ms'] for r in records], 'o-', label='latency (node)')
    top.plot(frames, [r['inference_ms'] for r in records], 's-', ms=4, label='model time')
    budget = [np.nan if r['budget_ms'] is None else r['budget_ms'] for r in records]
    top.step(frames, budget, 'k--', where='mid', label='latency budget')
    missed = [r for r in records if r['budget_met'] is False]
    if missed:
        top.plot(
            [r['frame'] for r in missed], [r['inference_ms'] for r in missed], 'rx', ms=9,
            label='budget missed',
        )  # fmt: skip
    top.set_ylabel('ms')
    top.set_ylim(bottom=0)
    top.legend(loc='upper right', fontsize=8)
    top.set_title('mobius demo: latency against the budget')
    bottom.bar(frames, [r['queries_kept'][-1] if r['queries_kept'] else 0 for r in records])
    bottom.set_ylabel('queries kept\n(last layer)')
    bottom.set_xlabel('frame')
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
