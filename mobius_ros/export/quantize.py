"""Post-training int8 quantisation of an export folder for ONNX Runtime (and TensorRT).

`quantize_export` runs the float export on calibration images exactly as the runtime does
(letterbox, encoder, decoder layers with the keep rule, mask head, for the vocabulary and, where
exported, a referring expression), records every graph's inputs, and quantises each graph
statically with ONNX Runtime's quantiser: QDQ format, int8 weights per output channel, uint8
activations calibrated on the recorded inputs, for the convolutions and matrix products. The
result is a new export folder with the same tensors and metadata, so it runs wherever an export
folder runs (`mobius segment --checkpoint DIR`, the node, `mobius eval --export DIR`); TensorRT
builds QDQ graphs as explicitly quantised int8 engines. Its `export_key` differs from the float
one so engine caches never mix them. The text graph stays float (it runs once per phrase).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.common import atomic
from mobius_ros.common.errors import ModelLoadError
from mobius_ros.common.images import IMAGE_SUFFIXES, image_files
from mobius_ros.export import io_spec

QUANTIZED_OPS = ('Conv', 'MatMul', 'Gemm')


class _Recorder:
    """A runner that keeps a copy of every feed it is given (up to `limit` per graph)."""

    def __init__(self, runner: Any, store: list, limit: int) -> None:
        self._runner, self._store, self._limit = runner, store, limit

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(self._store) < self._limit:
            self._store.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self._runner.infer(feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def record_feeds(
    directory: Path,
    images: Sequence[np.ndarray],
    phrases: Sequence[str],
    *,
    expression: str | None = None,
    limit: int = 64,
    text: Any | None = None,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """{graph name: [feeds, ...]} seen while the float export segments `images`.

    The phrases are encoded by the export's text graph, or `text` (TextInputs of `phrases`)
    stands in for an export without one.
    """
    from mobius_ros.runtime.exported import ExportedModel, onnxruntime_factory
    from mobius_ros.runtime.predictor import Predictor, PredictorSettings, TextInputs
    from mobius_ros.runtime.result import Task

    exported = ExportedModel.open(directory)
    base = onnxruntime_factory()
    feeds: dict[str, list] = defaultdict(list)

    def factory(name: str, path: Path) -> Any:
        return _Recorder(base(name, path), feeds[name], limit)

    has_text = bool(exported.meta['options'].get('text_encoder'))
    if text is None and not has_text:
        raise ModelLoadError(
            f'{directory} was exported without the text encoder: calibration needs it to '
            'encode the phrases (re-export without --no-text)'
        )
    encoder = exported.text_encoder(base) if has_text else None
    runners = exported.runners(factory)
    predictor = Predictor(
        # Threshold 0: every decoder layer and the mask head run on every image (a frame with
        # nothing above the threshold would skip them); the keep rule still prunes as at run time.
        runners,
        input_size=exported.input_size,
        settings=PredictorSettings(score_threshold=0.0),
    )
    try:
        if text is None:
            text = TextInputs.from_batch(encoder.encode(list(phrases)))
        referring = None
        if exported.has_referring and encoder is not None:
            expression = expression or phrases[0]  # the referring layers need calibrating too
            referring = TextInputs.from_batch(encoder.encode([expression]))
        for image in images:
            predictor.predict(image, text, phrases=phrases)
            if referring is not None:
                predictor.predict(image, referring, phrases=[expression], task=Task.REFERRING)
    finally:
        predictor.close()
        if encoder is not None:
            encoder.close()
    missing = [n for n in exported.meta['graphs'] if n not in feeds and _runs_per_frame(n)]
    if missing:
        raise ModelLoadError(f'calibration never ran graphs {missing} of {directory}')
    # The full graph takes the encoder's inputs.
    if 'full' in exported.meta['graphs']:
        feeds['full'] = feeds[io_spec.ENCODER]
    return dict(feeds)


def load_images(folder: str | Path, count: int) -> tuple[list[np.ndarray], int]:
    """Up to `count` RGB images of `folder` (sorted, recursive) and how many were unreadable.

    Raises:
        ValueError: the folder has no image files.
    """
    import cv2

    files = image_files(folder)
    if not files:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in {folder}')
    images, unreadable = [], 0
    for path in files:
        if len(images) == count:
            break
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            unreadable += 1
            continue
        images.append(np.ascontiguousarray(bgr[..., ::-1]))
    return images, unreadable


def _runs_per_frame(name: str) -> bool:
    """Graphs the frame loop runs (not the text graph, not the full graph)."""
    return name not in ('full', io_spec.TEXT_ENCODER_SPEC.name)


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


def check_paths(source: Path, destination: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """model.json of the float export `source`, once `destination` may be written.

    Raises:
        ModelLoadError: `source` is not an export folder, or is already quantised.
        ValueError: `destination` exists without `overwrite`.
    """
    path = Path(source) / io_spec.MODEL_JSON
    if not path.is_file():
        raise ModelLoadError(f'{source} is not an export folder (no {io_spec.MODEL_JSON})')
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f'{path} is unreadable: {error}') from error
    if meta.get('precision') == 'int8':
        raise ModelLoadError(f'{source} is already an int8 export')
    if Path(destination).exists() and not overwrite:
        raise ValueError(f'{destination} exists; pass --overwrite to replace it')
    return meta


def quantize_export(
    source: str | Path,
    destination: str | Path,
    images: Sequence[np.ndarray],
    phrases: Sequence[str],
    *,
    expression: str | None = None,
    overwrite: bool = False,
    text: Any | None = None,
) -> dict[str, Any]:
    """Write an int8 copy of the export folder `source` to `destination`; returns its meta.

    Args:
        images: calibration images [H, W, 3] uint8 RGB (a few dozen of the robot's scenes).
        phrases: the vocabulary to calibrate with (e.g. the one the robot will run).
        expression: a referring expression for the referring graphs, where exported
            (default: the first phrase).
        text: TextInputs of `phrases` for an export without a text graph.

    Raises:
        ModelLoadError: `source` is not an export folder, or is already quantised.
        ValueError: no calibration images, or `destination` exists without `overwrite`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    source, destination = Path(source), Path(destination)
    meta = check_paths(source, destination, overwrite=overwrite)
    if not images:
        raise ValueError('int8 calibration needs at least one image')
    feeds = record_feeds(source, images, phrases, expression=expression, text=text)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix='.quantize-', dir=destination.parent))
    try:
        for item in source.iterdir():
            if item.is_file() and item.suffix != '.onnx':
                shutil.copy2(item, staging / item.name)
        for name, graph in meta['graphs'].items():
            src = source / graph['file']
            if name not in feeds:  # e.g. the text graph: runs once per phrase, stays float
                shutil.copy2(src, staging / graph['file'])
                continue
            quantize_static(
                str(src),
                str(staging / graph['file']),
                _Reader(feeds[name]),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=list(QUANTIZED_OPS),
                calibrate_method=CalibrationMethod.MinMax,
            )
            graph.update(atomic.digest(staging / graph['file']).to_dict())
        for extra in staging.glob('*.onnx.data'):  # quantiser side files, if any
            extra.unlink()
        digest = hashlib.sha256()
        for image in images:
            digest.update(np.ascontiguousarray(image).tobytes())
        meta['precision'] = 'int8'
        meta['quantized_from'] = {
            'export_key': meta['export_key'],
            'calibration_images': len(images),
            'calibration_sha256': digest.hexdigest(),
            'phrases': list(phrases),
            'ops': list(QUANTIZED_OPS),
        }
        meta['export_key'] = f'{meta["export_key"]}-int8-{digest.hexdigest()[:8]}'
        (staging / io_spec.MODEL_JSON).write_text(json.dumps(meta, indent=1) + '\n')
        if destination.exists():
            shutil.rmtree(destination)
        staging.chmod(0o755)  # mkdtemp makes it private
        atomic.fsync_tree(staging)  # data on disk before the rename publishes the folder
        staging.rename(destination)
        atomic.fsync_dir(destination.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return meta
