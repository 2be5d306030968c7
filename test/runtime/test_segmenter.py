"""The Segmenter facade on the PyTorch backend with a tiny random checkpoint."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from mobius_ros.common.errors import ImageError, ModelLoadError, SegmenterError, VocabularyError
from mobius_ros.model.pruning import PruningConfig
from mobius_ros.runtime.result import Task

torch = pytest.importorskip('torch')

from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig  # noqa: E402

CANVAS = (64, 96)
# Building the model and its first forward passes take seconds on a loaded 2-core machine.
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'tiny.safetensors'
    save_checkpoint(build_model('MOBIUS-tiny').eval(), path)
    return path


@pytest.fixture(scope='module')
def segmenter(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    config = SegmenterConfig(
        checkpoint=str(checkpoint),
        backend='torch',
        input_size=CANVAS,
        score_threshold=0.0,
        max_detections=5,
        cache_dir=str(tmp_path_factory.mktemp('text')),
        engine_dir=str(tmp_path_factory.mktemp('engines')),
    )
    with Segmenter(config) as s:
        yield s


def _image(h: int = 50, w: int = 80, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_starts_agnostic_and_swaps_vocabularies_with_versions(segmenter: Segmenter) -> None:
    start = segmenter.vocabulary
    update = segmenter.set_vocabulary(['red circle', 'blue square', 'red circle'])
    assert update.vocabulary.phrases == ('red circle', 'blue square')
    assert update.vocabulary.version == start.version + 1
    assert segmenter.vocabulary is update.vocabulary
    again = segmenter.set_vocabulary(['star'], append=True)
    assert again.vocabulary.phrases == ('red circle', 'blue square', 'star')
    assert again.cache_hits == 2 and again.encoded == 1  # known phrases are not re-encoded
    prediction = segmenter.segment(_image())
    assert prediction.phrases == again.vocabulary.phrases
    assert prediction.vocabulary_version == again.vocabulary.version
    assert prediction.task is Task.VOCABULARY
    agnostic = segmenter.set_agnostic()
    assert agnostic.vocabulary.phrases == ('object',)
    assert segmenter.segment(_image()).task is Task.AGNOSTIC


def test_masks_and_boxes_in_original_pixels(segmenter: Segmenter) -> None:
    segmenter.set_vocabulary(['ring', 'star'])
    prediction = segmenter.segment(_image(37, 121))
    assert len(prediction) == 5  # max_detections, threshold 0
    assert prediction.image_size == (37, 121)
    assert prediction.masks.shape == (5, 37, 121)
    assert (prediction.boxes[:, [0, 2]] <= 121).all() and (prediction.boxes[:, [1, 3]] <= 37).all()
    assert np.all(np.diff(prediction.scores) <= 0)


def test_one_shot_phrases_expression_and_agnostic(segmenter: Segmenter) -> None:
    installed = segmenter.set_vocabulary(['cup']).vocabulary
    one_shot = segmenter.segment(_image(), phrases=['mug', 'plate'])
    assert one_shot.phrases == ('mug', 'plate') and set(one_shot.class_ids) <= {0, 1}
    assert segmenter.vocabulary is installed  # one-shot queries do not install anything
    referring = segmenter.segment(_image(), expression='the mug left of the plate')
    assert len(referring) == 1 and referring.task is Task.REFERRING
    assert referring.phrases == ('the mug left of the plate',)
    assert segmenter.segment(_image(), agnostic=True).phrases == ('object',)
    with pytest.raises(SegmenterError):
        segmenter.segment(_image(), phrases=['a'], expression='b')


@pytest.mark.parametrize(
    'phrases', [[], ['  '], ['x' * 201], ['bad\x00phrase'], [f'p{i}' for i in range(257)]]
)
def test_bad_vocabularies_are_refused_and_keep_the_old_one(
    segmenter: Segmenter, phrases: list[str]
) -> None:
    before = segmenter.vocabulary
    with pytest.raises(VocabularyError):
        segmenter.set_vocabulary(phrases)
    assert segmenter.vocabulary is before


def test_bad_images_and_thresholds(segmenter: Segmenter) -> None:
    with pytest.raises(ImageError):
        segmenter.segment(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ImageError):
        segmenter.segment(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(SegmenterError):
        segmenter.segment(_image(), score_threshold=1.5)
    # The next good frame works.
    assert segmenter.segment(_image()).image_size == (50, 80)


def test_configure_at_run_time(segmenter: Segmenter) -> None:
    segmenter.set_vocabulary(['ring'])
    segmenter.configure(max_detections=2, pruning=PruningConfig(min_keep=3, lower=0.9, upper=1.0))
    prediction = segmenter.segment(_image())
    assert len(prediction) == 2 and prediction.queries_kept == (3, 3)
    segmenter.configure(score_threshold=1.0)
    assert len(segmenter.segment(_image())) == 0
    segmenter.configure(latency_budget_ms=10_000)
    assert segmenter.segment(_image()).budget['budget_ms'] == 10_000
    assert segmenter.config.latency_budget_ms == 10_000
    segmenter.configure(
        latency_budget_ms=0, score_threshold=0.0, max_detections=5, pruning=PruningConfig()
    )
    assert segmenter.segment(_image()).budget == {}
    assert segmenter.config.latency_budget_ms is None and segmenter.config.max_detections == 5
    with pytest.raises(SegmenterError):
        segmenter.configure(max_detections=0)


def test_vocabulary_swaps_while_segmenting_never_mix(segmenter: Segmenter) -> None:
    vocabularies = [('red circle', 'blue square'), ('star',), ('ring', 'cup', 'plate')]
    for v in vocabularies:
        segmenter.set_vocabulary(v)
    seen: list[tuple[tuple[str, ...], int]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(6):
                p = segmenter.segment(_image(40, 40))
                seen.append((p.phrases, int(p.class_ids.max(initial=0))))
        except BaseException as error:  # reported below
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    for i in range(12):
        segmenter.set_vocabulary(vocabularies[i % 3])
    thread.join()
    assert not errors
    for phrases, top in seen:
        assert phrases in vocabularies and top < len(phrases)


def test_missing_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match='not found'):
        Segmenter(SegmenterConfig(checkpoint=str(tmp_path / 'nope.safetensors'), backend='torch'))
    lonely = tmp_path / 'lonely.safetensors'
    lonely.write_bytes(b'')
    with pytest.raises(ModelLoadError, match='no config'):
        Segmenter(SegmenterConfig(checkpoint=str(lonely), backend='torch'))
    with pytest.raises(ModelLoadError):
        Segmenter(
            SegmenterConfig(
                checkpoint=str(tmp_path), backend='onnxruntime', engine_dir=str(tmp_path)
            )
        )


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_corrupt_weights_with_a_valid_config_are_a_clear_error(
    checkpoint: Path, tmp_path: Path, backend: str
) -> None:
    from mobius_ros.model.checkpoint import sidecar_path

    broken = tmp_path / 'broken.safetensors'
    broken.write_bytes(checkpoint.read_bytes()[:100])  # truncated download
    sidecar_path(broken).write_text(sidecar_path(checkpoint).read_text())
    config = SegmenterConfig(
        checkpoint=str(broken), backend=backend, engine_dir=str(tmp_path), input_size=CANVAS
    )
    with pytest.raises(ModelLoadError, match=r'broken\.safetensors'):
        Segmenter(config)


def test_export_cache_policy_never_refuses_to_export(checkpoint: Path, tmp_path: Path) -> None:
    config = SegmenterConfig(
        checkpoint=str(checkpoint),
        backend='onnxruntime',
        build_policy='never',
        engine_dir=str(tmp_path),
        input_size=CANVAS,
    )
    with pytest.raises(ModelLoadError, match='mobius export'):
        Segmenter(config)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SegmenterConfig(backend='tflite')
    with pytest.raises(ValueError):
        SegmenterConfig(input_size=(100, 128))
    with pytest.raises(ValueError):
        SegmenterConfig(build_policy='always')


def test_concurrent_appends_are_serialised(segmenter: Segmenter) -> None:
    # Each append reads the current vocabulary: without serialisation two service calls start
    # from the same one, and one's phrases are lost and versions repeat.
    start = segmenter.set_vocabulary(['base']).vocabulary
    updates: list[int] = []

    def append(worker: int) -> None:
        for i in range(4):
            update = segmenter.set_vocabulary([f'thing {worker} {i}'], append=True)
            updates.append(update.vocabulary.version)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phrases = segmenter.vocabulary.phrases
    assert set(phrases) == {'base'} | {f'thing {w} {i}' for w in range(3) for i in range(4)}
    assert sorted(updates) == list(range(start.version + 1, start.version + 13))
