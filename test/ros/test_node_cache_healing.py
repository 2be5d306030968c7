"""A node whose caches were damaged between two starts (a power cut during an export, a bad
disk) comes up by itself and publishes exactly what a node on clean caches published.

The node runs on ONNX Runtime from a checkpoint, so it keeps its exported graphs, their
model.json and the text embeddings in `engine_dir` / `cache_dir`. Between starts one graph is
truncated, a text-cache file garbled, then model.json overwritten with junk; each damage is named
once in the log and the artefact rebuilt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NAMESPACE = '/mobius_heal'


def _mask(client: Any, stamp: int) -> bytes:
    from sensor_msgs.msg import Image

    masks = client.subscribe(Image, f'{NAMESPACE}/instance_mask')
    publisher = client.publisher(Image, f'{NAMESPACE}/image')
    rgb = np.random.default_rng(3).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    msg = Image(height=48, width=80, encoding='rgb8', step=80 * 3, data=rgb.tobytes())
    msg.header.stamp.sec = stamp

    def arrived() -> bool:
        publisher.publish(msg)
        return any(m.header.stamp.sec == stamp for m in masks)

    assert client.wait(arrived, timeout=60), 'no output'
    out = next(m for m in masks if m.header.stamp.sec == stamp)
    return bytes(out.data)


def test_damaged_caches_are_rebuilt_and_the_node_publishes_the_same_masks(
    start_node: Any, checkpoint: Path, ros_client: Any, tmp_path: Path
) -> None:
    engines, text = tmp_path / 'engines', tmp_path / 'text'

    def run(stamp: int) -> tuple[bytes, str]:
        node = start_node(
            namespace=NAMESPACE, checkpoint=str(checkpoint), backend='onnxruntime',
            input_height=64, input_width=96, vocabulary=['red box', 'sky'],
            score_threshold=0.0, engine_dir=str(engines), cache_dir=str(text),
        )  # fmt: skip
        assert node.wait_ready(timeout=180) is None, node.excerpt()
        try:
            return _mask(ros_client, stamp), node.log()
        finally:
            node.stop()

    clean, _ = run(1)
    (export,) = [p.parent for p in engines.glob('*/model.json')]
    graph = sorted(export.glob('*.onnx'), key=lambda p: p.stat().st_size)[-1]
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # a cut-off write
    phrases = sorted(text.rglob('*.npz'))
    assert phrases, 'the text cache was not written'
    phrases[0].write_bytes(b'\x00' * phrases[0].stat().st_size)

    healed, log = run(2)
    assert healed == clean
    assert log.count('is damaged') == 2, log  # the export and the phrase file, once each
    assert graph.name in log

    (export / 'model.json').write_text('{"format": ')
    healed, log = run(3)
    assert healed == clean
    assert log.count('is damaged') == 1, log
    assert (export / 'model.json').read_text().startswith('{')
