"""The evaluation of `eval_loop.py` through the runtime: an export folder on ONNX Runtime.

What the robot runs is the exported graphs, letterboxed to their fixed canvas, with the host
keep rule between decoder layers and the runtime's post-processing (one label per query). This
module feeds the evaluation images to a `Segmenter` on an export folder (float or int8,
`mobius quantize`) and scores its predictions with the same COCO and referring metrics as the
PyTorch evaluation, so a graph-level change (quantisation, a rebuilt export) is measured by
`mobius eval --export DIR` on the same data. Compare with the PyTorch evaluation's
'one_label/' numbers: the runtime reports one label per object.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mobius_ros.runtime.result import Prediction
from mobius_ros.train.eval_loop import (
    EvalSet,
    agnostic_metrics,
    referring_metrics_of,
    sample_rgb,
    vocabulary_metrics,
)


def open_export(directory: str | Path) -> Any:
    """A Segmenter on `directory` with COCO's protocol: every top-100 detection kept."""
    from mobius_ros.runtime.exported import ExportedModel
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    exported = ExportedModel.open(directory)
    return Segmenter(
        SegmenterConfig(
            checkpoint=str(directory),
            backend='onnxruntime',
            input_size=exported.input_size,
            score_threshold=0.0,
            max_detections=100,
            cache_dir=None,
        )
    )


TASKS = ('vocabulary', 'agnostic', 'referring')


def evaluate_export(segmenter: Any, data: EvalSet, *, tasks: Sequence[str] = TASKS) -> dict:
    """Metrics of `tasks` (percentages) for the runtime's predictions on `data`."""
    results: dict[str, Any] = {}
    images = [sample_rgb(s) for s in data.samples]
    if 'vocabulary' in tasks:
        phrases = list(data.samples[0].phrases)
        predictions = [segmenter.segment(image, phrases=phrases) for image in images]
        results.update(vocabulary_metrics(data, _in_eval_order(predictions, phrases)))
    if 'agnostic' in tasks:
        predictions = [segmenter.segment(image, agnostic=True) for image in images]
        results.update(agnostic_metrics(data, predictions))
    if 'referring' in tasks and data.referring:
        predictions = [
            segmenter.segment(sample_rgb(s), expression=s.phrases[0]) for s in data.referring
        ]
        results.update(referring_metrics_of(data, predictions))
    return results


def _in_eval_order(predictions: list[Prediction], phrases: list[str]) -> list[Prediction]:
    """The runtime validates phrases (strips, keeps order); class ids index the same list."""
    for prediction in predictions:
        if list(prediction.phrases) != phrases:
            raise ValueError(
                f'the runtime changed the vocabulary: {list(prediction.phrases)} != {phrases}'
            )
    return predictions
