"""MOBIUS-tiny end to end: the three tasks, the three stages, pruning, early exit, gradients."""

from __future__ import annotations

import pytest
import torch

from mobius_ros.model.calibration import calibration_loss
from mobius_ros.model.mobius import Mobius
from mobius_ros.model.pruning import PruningConfig, threshold
from mobius_ros.model.variants import build_model

SIZE = 96


@pytest.fixture(scope='module')
def model() -> Mobius:
    torch.manual_seed(0)
    return build_model('MOBIUS-tiny').eval()


@pytest.fixture(scope='module')
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_vocabulary_mode_shapes(model: Mobius, images: torch.Tensor) -> None:
    with torch.no_grad():
        out = model(images, ['cat', 'dog', 'traffic light'])
    Q, L = 20, model.num_layers
    assert len(out.layers) == L
    for layer in out.layers:
        assert layer.logits.shape == (2, Q, 3)
        assert layer.boxes.shape == (2, Q, 4)
        assert ((layer.boxes >= 0) & (layer.boxes <= 1)).all()
        torch.testing.assert_close(layer.confidence, layer.logits.sigmoid().amax(-1))
    # Inference: masks only on the last executed layer.
    assert [layer.masks is None for layer in out.layers] == [True] * (L - 1) + [False]
    assert out.final.masks.shape == (2, Q, SIZE // 4, SIZE // 4)
    assert out.mask_features.shape == (2, 32, SIZE // 4, SIZE // 4)
    assert out.proposals.logits.shape == (2, Q, 3)


def test_agnostic_mode_is_the_object_vocabulary(model: Mobius, images: torch.Tensor) -> None:
    with torch.no_grad():
        out = model(images, ('object',))
    assert out.final.logits.shape == (2, 20, 1)


def test_referring_mode_one_expression_per_image(model: Mobius, images: torch.Tensor) -> None:
    expressions = ['the red cup on the left', 'dog']
    with torch.no_grad():
        out = model(images, expressions, referring=True)
        alone = model(images[1:], expressions[1:], referring=True)
    assert out.final.logits.shape == (2, 20, 1)
    # Image 1 sees only its own expression, so batching does not change its result.
    torch.testing.assert_close(out.final.logits[1:], alone.final.logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match='expressions'):
        model(images, ['only one'], referring=True)


def test_referring_tokens_join_decoder_self_attention(model: Mobius, images: torch.Tensor) -> None:
    text = model.encode_text(['a cat'])
    tokens, mask, class_embed = model.text_inputs(text, 1, referring=True)
    with torch.no_grad():
        state = model.encode(images[:1], tokens, mask, class_embed)
        args = (0, state.queries, state.reference_boxes, state.memory, state.class_embed_proj)
        plain = model.decoder_layer(*args, state.memory_shapes)[0]
        joined = model.decoder_layer(
            *args, state.memory_shapes, text_tokens=state.text_tokens, text_mask=state.text_mask
        )[0]
    assert not torch.allclose(plain, joined)


def _attention_pooling_model() -> Mobius:
    torch.manual_seed(0)
    return build_model('MOBIUS-tiny', decoder={'referring_pooling': 'attention'}).eval()


def test_attention_pooling_starts_as_the_mean_and_leaves_vocabularies_alone(
    model: Mobius, images: torch.Tensor
) -> None:
    pooled = _attention_pooling_model()
    unexpected = model.load_state_dict(pooled.state_dict(), strict=False).unexpected_keys
    assert unexpected and all(k.startswith('decoder.referring_pool.') for k in unexpected)
    expressions = ['the star right of the triangle', 'a cup']
    with torch.no_grad():
        start = pooled(images, expressions, referring=True).final.logits
        mean = model(images, expressions, referring=True).final.logits
        torch.testing.assert_close(start, mean, atol=1e-4, rtol=1e-4)
        torch.nn.init.normal_(pooled.decoder.referring_pool[-1].weight)
        learned = pooled(images, expressions, referring=True).final.logits
        vocabulary = pooled(images, ['cat', 'dog']).final.logits
    assert not torch.allclose(learned, mean, atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(vocabulary, model(images, ['cat', 'dog']).final.logits)


def test_attention_pooling_weighs_only_valid_tokens_and_learns() -> None:
    decoder = _attention_pooling_model().decoder
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 5, decoder.dim, generator=generator)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        pooled = decoder.pool_expression(tokens, mask)
        torch.testing.assert_close(pooled[0, 0], tokens[0, :3].mean(0))
        torch.testing.assert_close(pooled[1, 0], tokens[1].mean(0))
        torch.nn.init.normal_(decoder.referring_pool[-1].weight, generator=generator)
        weighted = decoder.pool_expression(tokens, mask)
        padded = tokens.clone()
        padded[0, 3:] = 1e4
        torch.testing.assert_close(decoder.pool_expression(padded, mask), weighted)
    assert not torch.allclose(weighted[0, 0], tokens[0, :3].mean(0), atol=1e-3)
    decoder.referring_pool[-1].weight.data.zero_()
    decoder.pool_expression(tokens, mask).square().sum().backward()
    assert decoder.referring_pool[-1].weight.grad.abs().sum() > 0


def test_unknown_referring_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match='referring_pooling'):
        build_model('MOBIUS-tiny', decoder={'referring_pooling': 'max'})


def test_stages_compose_to_forward(model: Mobius, images: torch.Tensor) -> None:
    phrases = ['cat', 'dog']
    with torch.no_grad():
        out = model(images, phrases)
        tokens, mask, class_embed = model.text_inputs(
            model.encode_text(phrases), 2, referring=False
        )
        state = model.encode(images, tokens, mask, class_embed)
        assert state.memory.shape[0] == 2 and state.memory.shape[2] == 32
        assert sum(h * w for h, w in state.memory_shapes) == state.memory.shape[1]
        q, boxes = state.queries, state.reference_boxes
        for layer in range(model.num_layers):
            q, boxes, logits, _ = model.decoder_layer(
                layer, q, boxes, state.memory, state.class_embed_proj, state.memory_shapes
            )
        masks = model.mask_head(q, state.mask_features)
    torch.testing.assert_close(logits, out.final.logits)
    torch.testing.assert_close(boxes, out.final.boxes)
    torch.testing.assert_close(masks, out.final.masks)


def test_training_mode_masks_on_every_layer_and_proposals(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').train()
    out = model(images, ['cat'])
    assert all(layer.masks is not None for layer in out.layers)
    assert out.proposals.masks.shape == (2, 20, SIZE // 4, SIZE // 4)
    with pytest.raises(ValueError, match='inference'):
        model(images[:1], ['cat'], pruning=PruningConfig())


# The single fusion block's text branch feeds nothing downstream (DESIGN §4.5: at inference
# only the vision branch matters), so its parameters get no gradient by design.
DEAD_BY_DESIGN = ('fusion.gamma_l', 'fusion.attn.values_v_proj', 'fusion.attn.out_l_proj')


def test_gradients_reach_every_trainable_parameter(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').train()
    # Zero-initialised layers (box refinement, deformable offsets) block gradients to what
    # lies before them at step 0; a small perturbation makes every path carry gradient.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = model(images[:1], ['cat', 'dog'])
    loss = out.mask_features.mean() + out.proposals.logits.mean()
    loss = loss + out.proposals.boxes.mean() + out.proposals.masks.mean()
    for layer in out.layers:
        loss = loss + layer.logits.mean() + layer.boxes.mean() + layer.masks.mean()
        loss = loss + calibration_loss(layer.confidence, torch.rand_like(layer.confidence))
    loss.backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad
        and not any(dead in name for dead in DEAD_BY_DESIGN)
        and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []


def test_pruning_min_keep_and_query_index(model: Mobius, images: torch.Tensor) -> None:
    # An impossible threshold after every layer: only the top min_keep survive.
    config = PruningConfig(trajectory='exponential', lower=0.99, upper=1.0, min_keep=7)
    with torch.no_grad():
        out = model(images[:1], ['cat', 'dog'], pruning=config)
        full = model(images[:1], ['cat', 'dog'])
    assert out.queries_kept == (7, 7)
    first = out.layers[0]
    assert first.query_index.shape == (1, 7)
    # Layer 0 saw all queries: its survivors are the top 7 of the unpruned layer 0.
    top = full.layers[0].confidence[0].topk(7).indices
    assert first.query_index[0].tolist() == top.tolist()
    torch.testing.assert_close(first.confidence[0], full.layers[0].confidence[0, top])
    assert out.final.masks.shape == (1, 7, SIZE // 4, SIZE // 4)
    # Later layers run on fewer queries, so their indices are a subset of the earlier ones.
    assert set(out.final.query_index[0].tolist()) <= set(first.query_index[0].tolist())


def test_pruning_threshold_keeps_confident_queries(model: Mobius, images: torch.Tensor) -> None:
    with torch.no_grad():
        full = model(images[:1], ['cat'])
    confidence = full.layers[0].confidence[0]
    # Put lower at the median confidence: about half survive layer 0.
    median = float(confidence.median())
    config = PruningConfig(trajectory='logarithmic', lower=median, upper=median, min_keep=1)
    assert threshold(0, model.num_layers, config) == pytest.approx(median)
    with torch.no_grad():
        out = model(images[:1], ['cat'], pruning=config)
    assert out.queries_kept[0] == int((confidence >= median).sum())
    assert (out.layers[0].confidence >= median).all()


def test_pruning_needs_batch_one(model: Mobius, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match='batch size 1'), torch.no_grad():
        model(images, ['cat'], pruning=PruningConfig())


def test_model_pruning_attribute_is_used(images: torch.Tensor) -> None:
    model = build_model('MOBIUS-tiny').eval()
    model.pruning = PruningConfig(lower=1.0, upper=1.0, min_keep=3)
    with torch.no_grad():
        assert model(images[:1], ['cat']).queries_kept == (3, 3)


@pytest.mark.parametrize('how', ['argument', 'config'])
def test_early_exit(model: Mobius, images: torch.Tensor, how: str) -> None:
    with torch.no_grad():
        if how == 'argument':
            out = model(images, ['cat'], max_layers=1)
        else:
            out = model(
                images[:1], ['cat'], pruning=PruningConfig(trajectory='none', max_layers=1)
            )
        full = model(images[: out.final.logits.shape[0]], ['cat'])
    assert len(out.layers) == 1
    assert out.final.masks is not None
    torch.testing.assert_close(out.final.logits, full.layers[0].logits)


def test_precomputed_text_features_equal_phrases(model: Mobius, images: torch.Tensor) -> None:
    with torch.no_grad():
        a = model(images, ['cat', 'dog'])
        b = model(images, model.encode_text(['cat', 'dog']))
    torch.testing.assert_close(a.final.logits, b.final.logits)


def test_empty_vocabulary_and_zero_layers_are_rejected(
    model: Mobius, images: torch.Tensor
) -> None:
    with pytest.raises(ValueError, match='vocabulary'):
        model(images, [])
    with pytest.raises(ValueError, match='max_layers'):
        model(images, ['cat'], max_layers=0)
