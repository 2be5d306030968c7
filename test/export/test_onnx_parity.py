"""ONNX Runtime vs PyTorch: every split graph, the full graph, split vs full, pruned survivors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_fixture import CANVAS, Exported

from mobius_ros.export import io_spec
from mobius_ros.model.pruning import PruningConfig
from mobius_ros.runtime.exported import ExportedModel, onnxruntime_factory
from mobius_ros.runtime.predictor import Predictor, PredictorSettings
from mobius_ros.runtime.runner import Runner

torch = pytest.importorskip('torch')

pytestmark = pytest.mark.slow  # the session export takes several seconds

ATOL = 1e-4
# Different from the phrases the graphs were traced with, so T and K really are dynamic.
PHRASES = ['red circle', 'blue square', 'a small green star', 'ring']


def _ort(exported: Exported, name: str) -> Runner:
    model = ExportedModel.open(exported.directory)
    return onnxruntime_factory()(name, model.graph_path(name))


def _inputs(exported: Exported, phrases: list[str], *, referring: bool = False) -> dict:
    model = exported.model
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(1, 3, *CANVAS, generator=generator)
    with torch.no_grad():
        features = model.encode_text(phrases)
        tokens, mask, class_embed = model.text_inputs(features, 1, referring=referring)
    return {
        'image': image,
        'text_tokens': tokens.contiguous(),
        'text_mask': mask.contiguous(),
        'class_embed': class_embed.contiguous(),
    }


def _np(feeds: dict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in feeds.items()}


def test_encoder_matches_torch(exported: Exported) -> None:
    from mobius_ros.export.wrappers import EncoderGraph

    feeds = _inputs(exported, PHRASES)
    got = _ort(exported, io_spec.ENCODER).infer(_np(feeds))
    with torch.no_grad():
        want = EncoderGraph(exported.model).eval()(*feeds.values())
    assert list(got) == io_spec.ENCODER_SPEC.output_names
    for name, value in zip(io_spec.ENCODER_SPEC.output_names, want):
        np.testing.assert_allclose(got[name], value.numpy(), atol=ATOL, err_msg=name)
    assert got['class_embed_proj'].shape[1] == len(PHRASES)


@pytest.mark.parametrize('referring', [False, True])
def test_decoder_layer_dynamic_queries_match_torch(exported: Exported, referring: bool) -> None:
    from mobius_ros.export.wrappers import DecoderLayerGraph

    model = exported.model
    phrases = ['the blue square left of the ring'] if referring else PHRASES
    feeds = _inputs(exported, phrases, referring=referring)
    with torch.no_grad():
        state = model.encode(*feeds.values())
    keep = torch.tensor([5, 0, 11, 3, 7, 2, 19])  # 7 of 20 queries, out of order
    args = [state.queries[:, keep], state.reference_boxes[:, keep], state.memory]
    args.append(state.class_embed_proj)
    if referring:
        args += [state.text_tokens, state.text_mask]
    spec = io_spec.decoder_layer_spec(1, referring=referring)
    got = _ort(exported, spec.name).infer(dict(zip(spec.input_names, (a.numpy() for a in args))))
    graph = DecoderLayerGraph(model, 1, state.memory_shapes, referring=referring).eval()
    with torch.no_grad():
        want = graph(*args)
    for name, value in zip(spec.output_names, want):
        assert got[name].shape[1] == len(keep)
        np.testing.assert_allclose(got[name], value.numpy(), atol=ATOL, err_msg=name)


def test_mask_head_dynamic_queries_match_torch(exported: Exported) -> None:
    model = exported.model
    feeds = _inputs(exported, PHRASES)
    with torch.no_grad():
        state = model.encode(*feeds.values())
        queries = state.queries[:, :3]
        want = model.mask_head(queries, state.mask_features)
    got = _ort(exported, io_spec.MASK_HEAD).infer(
        {'queries': queries.numpy(), 'mask_features': state.mask_features.numpy()}
    )
    assert got['masks'].shape == (1, 3, CANVAS[0] // 4, CANVAS[1] // 4)
    np.testing.assert_allclose(got['masks'], want.numpy(), atol=ATOL)


def test_full_graph_matches_torch_forward(exported: Exported) -> None:
    feeds = _inputs(exported, PHRASES)
    got = _ort(exported, io_spec.FULL).infer(_np(feeds))
    with torch.no_grad():
        final = exported.model(feeds['image'], exported.model.encode_text(PHRASES)).final
    want = {
        'logits': final.logits,
        'boxes': final.boxes,
        'confidence': final.confidence,
        'masks': final.masks,
    }
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value.numpy(), atol=ATOL, err_msg=name)


def _predictor(exported: Exported, **settings: object) -> Predictor:
    model = ExportedModel.open(exported.directory)
    return Predictor(
        model.runners(onnxruntime_factory()),
        input_size=model.input_size,
        settings=PredictorSettings(**settings),  # type: ignore[arg-type]
    )


def test_split_graphs_equal_full_graph_without_pruning(exported: Exported) -> None:
    feeds = _np(_inputs(exported, PHRASES))
    full = _ort(exported, io_spec.FULL).infer(feeds)
    predictor = _predictor(exported)
    state = predictor.runners.encoder.infer(feeds)
    result, _ = predictor.decode(state, pruning=PruningConfig(trajectory='none'))
    assert result.queries_kept == (20,) * exported.model.num_layers
    np.testing.assert_array_equal(result.query_index, np.arange(20))
    np.testing.assert_allclose(result.logits, full['logits'][0], atol=ATOL)
    np.testing.assert_allclose(result.boxes, full['boxes'][0], atol=ATOL)
    np.testing.assert_allclose(result.masks, full['masks'][0], atol=ATOL)


def test_pruned_host_loop_keeps_the_same_survivors_as_torch(exported: Exported) -> None:
    model = exported.model
    torch_feeds = _inputs(exported, PHRASES)
    with torch.no_grad():
        unpruned = model(torch_feeds['image'], model.encode_text(PHRASES))
    # Thresholds inside the random model's confidence range, so pruning really removes queries.
    confidence = unpruned.layers[0].confidence[0].numpy()
    lower, upper = np.quantile(confidence, [0.3, 0.7])
    pruning = PruningConfig(lower=float(lower), upper=float(upper), min_keep=3)
    with torch.no_grad():
        pruned = model(torch_feeds['image'], model.encode_text(PHRASES), pruning=pruning)

    predictor = _predictor(exported)
    state = predictor.runners.encoder.infer(_np(torch_feeds))
    result, _ = predictor.decode(state, pruning=pruning)
    assert result.queries_kept == pruned.queries_kept
    assert result.queries_kept[-1] < 20, 'the thresholds must prune something'
    np.testing.assert_array_equal(result.query_index, pruned.final.query_index[0].numpy())
    np.testing.assert_allclose(result.logits, pruned.final.logits[0].numpy(), atol=ATOL)
    np.testing.assert_allclose(result.boxes, pruned.final.boxes[0].numpy(), atol=ATOL)
    np.testing.assert_allclose(result.masks, pruned.final.masks[0].numpy(), atol=ATOL)


def test_early_exit_runs_fewer_layers(exported: Exported) -> None:
    model = exported.model
    feeds = _inputs(exported, PHRASES)
    pruning = PruningConfig(trajectory='none', max_layers=1)
    with torch.no_grad():
        want = model(feeds['image'], model.encode_text(PHRASES), pruning=pruning).final
    predictor = _predictor(exported)
    result, _ = predictor.decode(predictor.runners.encoder.infer(_np(feeds)), pruning=pruning)
    assert result.queries_kept == (20,)
    np.testing.assert_allclose(result.logits, want.logits[0].numpy(), atol=ATOL)


def test_text_encoder_graph_matches_torch(exported: Exported) -> None:
    encoder = ExportedModel.open(exported.directory).text_encoder(onnxruntime_factory())
    got = encoder.encode(PHRASES)
    with torch.no_grad():
        want = exported.model.encode_text(PHRASES)
    assert encoder.identity == exported.model.text_encoder.identity
    np.testing.assert_array_equal(got.mask, want.mask.numpy())
    np.testing.assert_allclose(got.tokens[got.mask], want.tokens[want.mask].numpy(), atol=ATOL)
    np.testing.assert_allclose(got.pooled, want.pooled.numpy(), atol=ATOL)


def test_model_json_describes_the_export(exported: Exported) -> None:
    from mobius_ros.export.onnx import ExportOptions, export_key, weights_hash
    from mobius_ros.model.config import MobiusConfig

    meta = json.loads((exported.directory / io_spec.MODEL_JSON).read_text())
    assert MobiusConfig.from_dict(meta['config']) == exported.model.config
    assert meta['weights_sha256'] == weights_hash(exported.model)
    assert meta['export_key'] == export_key(exported.model, ExportOptions(input_size=CANVAS))
    assert meta['input_size'] == list(CANVAS)
    assert meta['dims']['H4'] == CANVAS[0] // 4 and meta['dims']['Q0'] == 20
    specs = io_spec.graph_specs(exported.model.num_layers)
    assert set(meta['graphs']) == set(specs)
    for name, graph in meta['graphs'].items():
        assert graph['inputs'] == specs[name].to_dict()['inputs']
    # Hashes are checked on open; an altered graph is refused.
    ExportedModel.open(exported.directory, verify_hashes=True)


def test_export_key_changes_with_the_graph_revision(
    exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter that writes different graphs for the same checkpoint must not reuse caches."""
    from mobius_ros.export import onnx as onnx_export

    options = onnx_export.ExportOptions(input_size=CANVAS)
    before = onnx_export.export_key(exported.model, options)
    monkeypatch.setattr(onnx_export, 'GRAPH_REVISION', onnx_export.GRAPH_REVISION + 1)
    assert onnx_export.export_key(exported.model, options) != before


def test_batch_norms_fold_into_the_convolutions(exported: Exported) -> None:
    """norm='batch' leaves no norm node in the encoder graph; GroupNorm stays as
    InstanceNormalization (the parity tests above check the folded graph's numbers)."""
    import onnx

    model = ExportedModel.open(exported.directory)
    graph = onnx.load(str(model.graph_path(io_spec.ENCODER)), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert 'BatchNormalization' not in ops
    norm = type(exported.model.pixel_decoder.input_proj['8'][1])
    if norm is torch.nn.BatchNorm2d:
        assert 'InstanceNormalization' not in ops
    else:
        assert norm is torch.nn.GroupNorm
        assert 'InstanceNormalization' in ops
