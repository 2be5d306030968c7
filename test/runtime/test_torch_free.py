"""The ONNX Runtime path runs from exported files with torch made unimportable.

A Jetson runtime has numpy, OpenCV, onnxruntime/TensorRT and no torch. A subprocess installs a
meta-path finder that refuses torch (and what pulls it in), then loads the export folder through
the Segmenter, encodes phrases with the exported text graph and its torch-free tokenizer, and
segments in all three tasks; the results must match the PyTorch backend on the same checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('onnxruntime')

pytestmark = pytest.mark.slow  # one export and a fresh interpreter

CANVAS = (64, 96)
PHRASES = ['red circle', 'blue square', 'star']
EXPRESSION = 'the blue square left of the star'

SCRIPT = r"""
import importlib.abc, json, sys

BLOCKED = ('torch', 'torchvision', 'timm', 'open_clip', 'transformers')

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{name} is blocked in this test')
        return None

sys.meta_path.insert(0, Block())
import numpy as np
from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

args = json.loads(sys.argv[1])
image = np.load(args['image'])
config = SegmenterConfig(
    checkpoint=args['export'], backend='onnxruntime', input_size=tuple(args['canvas']),
    score_threshold=0.0, max_detections=5, cache_dir=args['cache'],
)
out = {}
with Segmenter(config) as segmenter:
    segmenter.set_vocabulary(args['phrases'])
    for task, kwargs in (('vocabulary', {}), ('referring', {'expression': args['expression']}),
                         ('agnostic', {'agnostic': True})):
        p = segmenter.segment(image, **kwargs)
        out[task] = {'boxes': p.boxes.tolist(), 'scores': p.scores.tolist(),
                     'labels': p.labels, 'mask_shape': list(p.masks.shape),
                     'task': p.task.value, 'mask_sum': int(p.masks.sum())}
out['torch_loaded'] = any(m.split('.')[0] == 'torch' for m in sys.modules)
print(json.dumps(out))
"""


def _segment_all(segmenter: object, image: np.ndarray) -> dict[str, object]:
    out = {}
    for task, kwargs in (
        ('vocabulary', {}),
        ('referring', {'expression': EXPRESSION}),
        ('agnostic', {'agnostic': True}),
    ):
        p = segmenter.segment(image, **kwargs)  # type: ignore[attr-defined]
        out[task] = p
    return out


def test_onnxruntime_inference_without_torch(tmp_path: Path) -> None:
    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.model.variants import build_model
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').eval()
    save_checkpoint(model, tmp_path / 'tiny.safetensors')
    export_model(model, tmp_path / 'export', ExportOptions(input_size=CANVAS, full=False))
    image = (np.random.default_rng(3).random((45, 130, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / 'image.npy', image)

    args = {
        'image': str(tmp_path / 'image.npy'),
        'export': str(tmp_path / 'export'),
        'canvas': list(CANVAS),
        'cache': str(tmp_path / 'text'),
        'phrases': PHRASES,
        'expression': EXPRESSION,
    }
    done = subprocess.run(
        [sys.executable, '-c', SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got['torch_loaded'] is False

    config = SegmenterConfig(
        checkpoint=str(tmp_path / 'tiny.safetensors'),
        backend='torch',
        input_size=CANVAS,
        score_threshold=0.0,
        max_detections=5,
        cache_dir=None,
    )
    with Segmenter(config) as segmenter:
        segmenter.set_vocabulary(PHRASES)
        want = _segment_all(segmenter, image)
    for task, prediction in want.items():
        result = got[task]
        assert result['task'] == prediction.task.value
        assert result['mask_shape'] == [len(prediction), 45, 130]
        assert result['labels'] == prediction.labels
        np.testing.assert_allclose(result['scores'], prediction.scores, atol=1e-4)
        np.testing.assert_allclose(result['boxes'], prediction.boxes, atol=1e-2)
        # Mask logits agree to ~1e-5; a handful of boundary pixels may flip.
        assert (
            abs(result['mask_sum'] - int(prediction.masks.sum())) <= 0.01 * prediction.masks.size
        )
    assert len(want['referring']) == 1


EXPORT_SCRIPT = r"""
import json, sys
import numpy as np
from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

args = json.loads(sys.argv[1])
config = SegmenterConfig(
    checkpoint=args['checkpoint'], backend='onnxruntime', engine_dir=args['engines'],
    input_size=tuple(args['canvas']), cache_dir=args['cache'],
)
image = np.zeros((40, 50, 3), np.uint8)
out = {}
for start in ('first', 'second'):  # the second finds 'object' and 'ring' in the text cache
    with Segmenter(config) as segmenter:
        segmenter.set_vocabulary(['ring'])
        prediction = segmenter.segment(image, agnostic=True)
        out[start] = {'text_graph_loaded': segmenter.text_encoder.loaded}
        segmenter.segment(image, expression=f'the ring on the {start} start')  # not cached
        out[start]['after_new_phrase'] = segmenter.text_encoder.loaded
out['task'] = prediction.task.value
out['torch_loaded'] = any(m.split('.')[0] == 'torch' for m in sys.modules)
print(json.dumps(out))
"""


def test_a_checkpoint_is_exported_without_torch_entering_the_process(tmp_path: Path) -> None:
    """The first use of a checkpoint on ONNX Runtime exports it in a child process: the node
    (a long-running process) never holds PyTorch's memory; nor the text graph while every
    phrase it needs is in the embedding cache."""
    from mobius_ros.model.checkpoint import save_checkpoint
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    save_checkpoint(build_model('MOBIUS-tiny').eval(), tmp_path / 'tiny.safetensors')
    args = {
        'checkpoint': str(tmp_path / 'tiny.safetensors'),
        'engines': str(tmp_path / 'engines'),
        'canvas': list(CANVAS),
        'cache': str(tmp_path / 'text'),
    }
    done = subprocess.run(
        [sys.executable, '-c', EXPORT_SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got['torch_loaded'] is False and got['task'] == 'agnostic'
    assert got['first'] == {'text_graph_loaded': True, 'after_new_phrase': True}
    assert got['second'] == {'text_graph_loaded': False, 'after_new_phrase': True}
    assert len(list((tmp_path / 'engines').glob('*/model.json'))) == 1
