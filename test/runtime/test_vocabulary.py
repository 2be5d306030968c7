"""Vocabulary validation and the text-embedding cache (memory LRU, disk, across processes)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
from dataclasses import FrozenInstanceError
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mobius_ros.common.errors import VocabularyError
from mobius_ros.runtime.result import Task
from mobius_ros.runtime.vocabulary import (
    TextBatch,
    TextEmbeddingCache,
    Vocabulary,
    agnostic_vocabulary,
    next_vocabulary,
    validate_phrases,
)

L, D = 8, 6


def phrase_features(phrase: str) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic stand-in encoder: tokens [L, D] from the phrase hash, words + 2 valid."""
    seed = int.from_bytes(hashlib.sha256(phrase.encode()).digest()[:4], 'little')
    tokens = np.random.default_rng(seed).standard_normal((L, D)).astype(np.float32)
    mask = np.arange(L) < min(L, len(phrase.split()) + 2)
    return tokens, mask


def valid_tokens(phrase: str) -> np.ndarray:
    """[n, D]: what the cache keeps of a phrase (trailing padding dropped)."""
    tokens, mask = phrase_features(phrase)
    return tokens[: mask.sum()]


def assert_phrase(batch: TextBatch, k: int, phrase: str) -> None:
    expected = valid_tokens(phrase)
    np.testing.assert_array_equal(batch.tokens[k, : len(expected)], expected)
    assert batch.mask[k].sum() == len(expected) and batch.mask[k, : len(expected)].all()
    assert not batch.tokens[k, len(expected) :].any()  # padding is zero


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0
        self.phrases: list[str] = []

    def __call__(self, phrases: list[str]) -> SimpleNamespace:
        self.calls += 1
        self.phrases += phrases
        tokens, mask = zip(*(phrase_features(p) for p in phrases))
        tokens, mask = np.stack(tokens), np.stack(mask)
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return SimpleNamespace(tokens=tokens, mask=mask, pooled=pooled)


def test_validate_strips_dedupes_and_keeps_order() -> None:
    assert validate_phrases(['  red  mug', 'cat', 'red mug', 'cat ', 'dog']) == (
        'red mug',
        'cat',
        'dog',
    )


@pytest.mark.parametrize(
    ('phrases', 'match'),
    [
        ([], 'empty'),
        (['cat', '   '], 'phrase 1 is blank'),
        (['x' * 201], 'at most 200'),
        ([f'p{i}' for i in range(257)], '257 distinct phrases, at most 256'),
        ('cat', 'single string'),
        (['cat', 3], 'phrase 1 must be a string'),
        (['ca\x00t'], 'control characters'),
    ],
)
def test_validate_rejects(phrases: object, match: str) -> None:
    with pytest.raises(VocabularyError, match=match):
        validate_phrases(phrases)  # type: ignore[arg-type]


def test_limits_are_parameters_and_duplicates_do_not_count() -> None:
    assert len(validate_phrases(['a', 'b', 'a'], max_phrases=2)) == 2
    with pytest.raises(VocabularyError):
        validate_phrases(['a', 'b', 'c'], max_phrases=2)
    with pytest.raises(VocabularyError):
        validate_phrases(['abcdef'], max_chars=5)


def test_vocabulary_versions_append_and_agnostic() -> None:
    first = next_vocabulary(None, ['cat', 'dog'])
    assert first == Vocabulary(('cat', 'dog'), 0, Task.VOCABULARY)
    appended = next_vocabulary(first, ['dog', 'bird'], append=True)
    assert appended.phrases == ('cat', 'dog', 'bird') and appended.version == 1
    replaced = next_vocabulary(appended, ['mug'])
    assert replaced.phrases == ('mug',) and replaced.version == 2
    agnostic = agnostic_vocabulary(replaced)
    assert agnostic.phrases == ('object',) and agnostic.task is Task.AGNOSTIC
    assert agnostic.version == 3
    with pytest.raises(FrozenInstanceError):
        agnostic.version = 9  # type: ignore[misc]
    with pytest.raises(VocabularyError):
        next_vocabulary(first, ['x'] * 1 + [f'{i}' for i in range(300)], append=True)


def test_known_phrases_are_never_reencoded() -> None:
    encoder = CountingEncoder()
    cache = TextEmbeddingCache(encoder, 'fake/v1', None, capacity=16)
    batch, hits, encoded = cache.get(['cat', 'red mug', 'dog'])
    assert (hits, encoded, encoder.calls) == (0, 3, 1)
    batch2, hits, encoded = cache.get(['dog', 'cat', 'bird'])
    assert (hits, encoded, encoder.calls) == (2, 1, 2)
    assert encoder.phrases == ['cat', 'red mug', 'dog', 'bird']
    # Same phrase, same features, wherever it sits in the batch.
    np.testing.assert_array_equal(batch2.tokens[1, :3], batch.tokens[0, :3])
    np.testing.assert_array_equal(batch2.pooled[0], batch.pooled[2])
    for k, phrase in enumerate(['cat', 'red mug', 'dog']):
        assert_phrase(batch, k, phrase)
    assert batch.tokens.shape == (3, 4, D)  # the longest phrase: 2 words + start/end
    assert batch.tokens.dtype == np.float32 and batch.mask.dtype == bool


def test_packed_tokens_follow_masks() -> None:
    cache = TextEmbeddingCache(CountingEncoder(), 'fake/v1')
    batch, _, _ = cache.get(['a', 'big red mug'])
    tokens, index = batch.packed()
    assert tokens.shape == (3 + 5, D)
    np.testing.assert_array_equal(index, [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(tokens[3:], batch.tokens[1, :5])


def test_lru_is_bounded_and_evicts_least_recent() -> None:
    encoder = CountingEncoder()
    cache = TextEmbeddingCache(encoder, 'fake/v1', None, capacity=2)
    cache.get(['a'])
    cache.get(['b'])
    cache.get(['a'])  # a is now the most recent
    cache.get(['c'])  # evicts b
    assert len(cache) == 2 and 'a' in cache and 'b' not in cache
    _, hits, encoded = cache.get(['b'])
    assert (hits, encoded) == (0, 1)


def test_disk_cache_serves_a_fresh_cache_and_separates_identities(tmp_path: Path) -> None:
    first = CountingEncoder()
    batch, _, _ = TextEmbeddingCache(first, 'clip-vit-b32/openai', tmp_path).get(['cat', 'dog'])
    second = CountingEncoder()
    batch2, hits, encoded = TextEmbeddingCache(second, 'clip-vit-b32/openai', tmp_path).get(
        ['dog', 'cat']
    )
    assert (hits, encoded, second.calls) == (2, 0, 0)
    np.testing.assert_array_equal(batch2.tokens[::-1], batch.tokens)
    other = CountingEncoder()
    _, hits, encoded = TextEmbeddingCache(other, 'minilm-l6-v2', tmp_path).get(['cat'])
    assert (hits, encoded, other.calls) == (0, 1, 1)
    assert not list(tmp_path.rglob('*.tmp'))


def test_corrupt_disk_file_is_reencoded(tmp_path: Path) -> None:
    TextEmbeddingCache(CountingEncoder(), 'fake/v1', tmp_path).get(['cat'])
    (path,) = tmp_path.rglob('*.npz')
    path.write_bytes(b'garbage')
    encoder = CountingEncoder()
    _, hits, encoded = TextEmbeddingCache(encoder, 'fake/v1', tmp_path).get(['cat'])
    assert (hits, encoded) == (0, 1)
    _, hits, _ = TextEmbeddingCache(CountingEncoder(), 'fake/v1', tmp_path).get(['cat'])
    assert hits == 1


def test_float16_storage_is_close_and_returns_float32(tmp_path: Path) -> None:
    cache = TextEmbeddingCache(CountingEncoder(), 'fake/v1', tmp_path, dtype='float16')
    batch, _, _ = cache.get(['cat'])
    assert batch.tokens.dtype == np.float32
    np.testing.assert_allclose(batch.tokens[0], valid_tokens('cat'), atol=2e-3)


def test_batches_large_vocabularies_in_chunks() -> None:
    encoder = CountingEncoder()
    cache = TextEmbeddingCache(encoder, 'fake/v1', capacity=500, batch_size=64)
    phrases = [f'thing {i}' for i in range(150)]
    batch, _, encoded = cache.get(phrases)
    assert encoded == 150 and encoder.calls == 3 and batch.tokens.shape == (150, 4, D)


def test_bad_encoder_output_is_reported() -> None:
    def broken(phrases: list[str]) -> SimpleNamespace:
        return SimpleNamespace(
            tokens=np.zeros((len(phrases), L)), mask=np.ones((1, L)), pooled=np.zeros((1, D))
        )

    with pytest.raises(ValueError, match='expected'):
        TextEmbeddingCache(broken, 'broken').get(['a', 'b'])


def test_concurrent_gets_agree() -> None:
    cache = TextEmbeddingCache(CountingEncoder(), 'fake/v1', capacity=8)
    phrases = [f'p{i}' for i in range(12)]
    results: list[TextBatch] = []

    def worker(offset: int) -> None:
        for i in range(20):
            chosen = [phrases[(offset + i + j) % 12] for j in range(3)]
            batch, _, _ = cache.get(chosen)
            for k, phrase in enumerate(chosen):
                assert_phrase(batch, k, phrase)
            results.append(batch)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 60 and len(cache) <= 8


def test_cache_persists_across_processes(tmp_path: Path) -> None:
    cache = TextEmbeddingCache(CountingEncoder(), 'fake/v1', tmp_path)
    batch, _, _ = cache.get(['red mug', 'cat'])
    out = tmp_path / 'child.npy'
    script = textwrap.dedent(
        f"""
        import numpy as np
        from mobius_ros.runtime.vocabulary import TextEmbeddingCache
        def never(phrases):
            raise AssertionError(f'encoder called for {{phrases}}')
        batch, hits, encoded = TextEmbeddingCache(never, 'fake/v1', {str(tmp_path)!r}).get(
            ['cat', 'red mug'])
        assert (hits, encoded) == (2, 0), (hits, encoded)
        np.save({str(out)!r}, batch.tokens)
        """
    )
    subprocess.run([sys.executable, '-c', script], check=True, timeout=60)
    np.testing.assert_array_equal(np.load(out), batch.tokens[::-1])


@pytest.mark.slow  # the first open_clip import alone takes seconds
def test_cache_over_the_real_tiny_text_encoder() -> None:
    torch = pytest.importorskip('torch')
    from mobius_ros.model.text_encoder import TinyTextEncoder

    torch.manual_seed(0)
    encoder = TinyTextEncoder(width=32).eval()
    cache = TextEmbeddingCache(encoder.encode, encoder.identity)
    batch, _, encoded = cache.get(['red circle', 'the small blue triangle'])
    with torch.no_grad():
        direct = encoder.encode(['the small blue triangle'])
    assert encoded == 2 and batch.tokens.shape[1:] == tuple(direct.tokens.shape[1:])
    assert batch.mask.all(axis=1).tolist() == [False, True]  # 'red circle' is padded
    np.testing.assert_allclose(batch.tokens[1], direct.tokens[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(batch.mask[1], direct.mask[0].numpy())
    np.testing.assert_allclose(batch.pooled[1], direct.pooled[0].numpy(), atol=1e-5)


@pytest.mark.slow
def test_graph_text_encoder_matches_torch(tmp_path: Path) -> None:
    """The torch-free path (exported text graph + tokenizer) fills the cache identically."""
    torch = pytest.importorskip('torch')
    pytest.importorskip('onnxruntime')
    from mobius_ros.common.tokenizer import load_tokenizer
    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.variants import build_model
    from mobius_ros.runtime.exported import GraphTextEncoder
    from mobius_ros.runtime.runner import OnnxRuntimeRunner

    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').eval()
    options = ExportOptions(input_size=(64, 64), referring=False, full=False)
    meta = json.loads(export_model(model, tmp_path / 'export', options).read_text())
    runner = OnnxRuntimeRunner(tmp_path / 'export' / 'text_encoder.onnx')
    graph = GraphTextEncoder(
        runner,
        load_tokenizer(meta['tokenizer'], tmp_path / 'export'),
        identity=model.text_encoder.identity,
        width=model.text_encoder.width,
    )
    phrases = ['object', 'the small blue triangle left of the red circle']
    from_graph, _, _ = TextEmbeddingCache(graph, model.text_encoder.identity).get(phrases)
    from_torch, _, _ = TextEmbeddingCache(
        model.text_encoder.encode, model.text_encoder.identity
    ).get(phrases)
    np.testing.assert_array_equal(from_graph.mask, from_torch.mask)
    valid = from_torch.mask
    np.testing.assert_allclose(from_graph.tokens[valid], from_torch.tokens[valid], atol=1e-4)
    np.testing.assert_allclose(from_graph.pooled, from_torch.pooled, atol=1e-4)
