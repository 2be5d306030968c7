"""Torch-free tokenizers for the exported text-encoder graph.

The ONNX text encoder takes token ids, so a runtime without torch must tokenize by itself:
- CLIP (open_clip's `SimpleTokenizer`, whose module imports torch): re-implemented here over
  the same BPE merges file, which the export copies beside the graphs, with the same cleaning
  ('lower'), start/end tokens and truncation, so the ids are identical (tested against open_clip);
- CLIP as Hugging Face's `CLIPTokenizer` (GLEE's) tokenizes: the same BPE over the same
  vocabulary (shipped in `mobius_ros/assets/clip/`), with its own normalisation (NFC, whitespace,
  lowercase; no ftfy or HTML unescaping), literal special tokens and end-token padding;
- MiniLM (BERT WordPiece): the `tokenizers` package reading the `tokenizer.json` the export copies.

Which one a graph needs is written in `model.json` (`tokenizer` entry) by the exporter.
"""

from __future__ import annotations

import gzip
import html
import itertools
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from mobius_ros.common.errors import ModelLoadError

CLIP_BPE = 'clip-bpe'
HF_CLIP_BPE = 'hf-clip-bpe'
HF_TOKENIZERS = 'hf-tokenizers'
# CLIP's BPE merges (open_clip's `bpe_simple_vocab_16e6.txt.gz`, the vocabulary of OpenAI CLIP
# and of Hugging Face's `openai/clip-vit-base-patch32` alike), shipped with the package.
CLIP_BPE_FILE = (
    Path(__file__).resolve().parents[1] / 'assets' / 'clip' / 'bpe_simple_vocab_16e6.txt.gz'
)


class Tokenizer(Protocol):
    """phrases -> token ids [P, L] int64, padded to the context length L (with zeros, or with
    the end token for `HfClipTokenizer`)."""

    context_length: int

    def __call__(self, phrases: Sequence[str]) -> np.ndarray: ...


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable-unicode table (the BPE works on these characters).
    bs = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1)]
    bs += list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; clean input tokenizes the same without it
        pass
    text = html.unescape(html.unescape(text)).strip()
    return ' '.join(text.split()).strip().lower()


class ClipBpeTokenizer:
    """CLIP's byte-level BPE tokenizer without torch (ids equal open_clip's `tokenize`).

    Args:
        bpe_path: `bpe_simple_vocab_16e6.txt.gz` (shipped by open_clip; copied by the export).
        context_length: L (77 for CLIP); longer phrases are truncated, ending on the end token.
    """

    def __init__(self, bpe_path: str | Path, context_length: int = 77) -> None:
        import regex

        with gzip.open(bpe_path) as handle:
            merges_text = handle.read().decode('utf-8').split('\n')
        merges = [tuple(m.split()) for m in merges_text[1 : 49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + '</w>' for v in vocab] + [''.join(m) for m in merges]
        specials = ['<start_of_text>', '<end_of_text>']
        vocab.extend(specials)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.cache: dict[str, str] = {t: t for t in specials}
        self.pattern = regex.compile(
            '|'.join(specials) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot = self.encoder['<start_of_text>']
        self.eot = self.encoder['<end_of_text>']
        self.context_length = context_length
        self._byte_encoder = _bytes_to_unicode()

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = (*token[:-1], token[-1] + '</w>')
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float('inf')))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = ' '.join(word)
        self.cache[token] = result
        return result

    def _word_ids(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word: its UTF-8 bytes as BPE characters, merged."""
        chars = ''.join(self._byte_encoder[b] for b in word.encode('utf-8'))
        return [self.encoder[piece] for piece in self._bpe(chars).split(' ')]

    def encode(self, text: str) -> list[int]:
        """Token ids of one phrase, without the start and end tokens."""
        ids: list[int] = []
        for token in self.pattern.findall(_clean(text)):
            ids.extend(self._word_ids(token))
        return ids

    def _rows(self, phrases: Sequence[str], pad: int) -> tuple[np.ndarray, np.ndarray]:
        """ids [P, L] int64 (start, phrase, end, then `pad`) and valid-token mask [P, L] bool."""
        out = np.full((len(phrases), self.context_length), pad, np.int64)
        mask = np.zeros((len(phrases), self.context_length), bool)
        for row, phrase in enumerate(phrases):
            ids = [self.sot, *self.encode(phrase), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[row, : len(ids)] = ids
            mask[row, : len(ids)] = True
        return out, mask

    def __call__(self, phrases: Sequence[str]) -> np.ndarray:
        return self._rows(phrases, 0)[0]


_HF_SOT, _HF_EOT = '<|startoftext|>', '<|endoftext|>'
# The two splits of `CLIPTokenizer`'s pre-tokenizer: CLIP's words (the special tokens' text,
# English contractions, letter runs, single digits, runs of anything else but whitespace), then
# GPT-2's byte-level split of each, which only matters where the first kept a special token's
# text as a word (a lowercased '<|ENDOFTEXT|>' becomes '<|', 'endoftext', '|>').
_HF_WORDS = (
    r"""<\|startoftext\|>|<\|endoftext\|>"""
    r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
_GPT2_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class HfClipTokenizer(ClipBpeTokenizer):
    """CLIP's tokenizer as Hugging Face's `CLIPTokenizer` runs it (ids equal GLEE's calls).

    GLEE tokenizes with `max_length=77, padding='max_length', truncation=True`: start token,
    at most 75 phrase tokens, end token, then the end token again as padding; its attention
    mask covers start to end. Against open_clip's tokenizer this one does not repair text with
    ftfy nor unescape HTML ('&amp;' stays three words), lowercases character by character
    (no final-sigma rule), and reads a literal '<|endoftext|>' (case-sensitive) or
    '<|startoftext|>' (after lowercasing) in a phrase as that special token.

    Args:
        bpe_path: the BPE merges file; default the one shipped with the package.
        context_length: L (77 for CLIP).
    """

    def __init__(self, bpe_path: str | Path = CLIP_BPE_FILE, context_length: int = 77) -> None:
        import regex

        super().__init__(bpe_path, context_length)
        self.words = regex.compile(_HF_WORDS)
        self.byte_words = regex.compile(_GPT2_WORDS)

    def encode(self, text: str) -> list[int]:
        """Token ids of one phrase, without the start and end tokens it gets around it."""
        ids: list[int] = []
        # '<|endoftext|>' is matched in the raw text, '<|startoftext|>' in the normalised text.
        for i, raw in enumerate(text.split(_HF_EOT)):
            if i:
                ids.append(self.eot)
            for j, part in enumerate(self._normalize(raw).split(_HF_SOT)):
                if j:
                    ids.append(self.sot)
                for word in self.words.findall(part):
                    for piece in self.byte_words.findall(word):
                        ids.extend(self._word_ids(piece))
        return ids

    @staticmethod
    def _normalize(text: str) -> str:
        # NFC, then lowercase per character as `tokenizers` does; its whitespace folding is left
        # out because the word split drops whitespace anyway.
        return ''.join(char.lower() for char in unicodedata.normalize('NFC', text))

    def __call__(self, phrases: Sequence[str]) -> np.ndarray:
        return self._rows(phrases, self.eot)[0]

    def with_mask(self, phrases: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids [P, L] int64 as `__call__`, and the attention mask [P, L] bool (start to end)."""
        return self._rows(phrases, self.eot)


class HfTokenizer:
    """A `tokenizers` tokenizer.json (e.g. MiniLM's WordPiece), padded to a fixed length.

    Args:
        path: the tokenizer.json file.
        context_length: L; longer phrases are truncated (the tokenizer keeps its end token).
    """

    def __init__(self, path: str | Path, context_length: int) -> None:
        from tokenizers import Tokenizer as HfTokenizerImpl

        self._tokenizer = HfTokenizerImpl.from_file(str(path))
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.no_padding()
        self.context_length = context_length

    def __call__(self, phrases: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(phrases), self.context_length), np.int64)
        for row, encoding in enumerate(self._tokenizer.encode_batch(list(phrases))):
            out[row, : len(encoding.ids)] = encoding.ids
        return out


def load_tokenizer(spec: Mapping[str, object], directory: str | Path) -> Tokenizer:
    """The tokenizer described by `model.json`'s `tokenizer` entry, files relative to `directory`.

    Raises:
        ModelLoadError: unknown kind, or its file is missing.
    """
    kind = spec.get('kind')
    path = Path(directory) / str(spec.get('file', ''))
    if not path.is_file():
        raise ModelLoadError(f'tokenizer file {path} is missing (re-run `mobius export`)')
    length = int(spec['context_length'])  # type: ignore[call-overload]
    if kind == CLIP_BPE:
        return ClipBpeTokenizer(path, length)
    if kind == HF_CLIP_BPE:
        return HfClipTokenizer(path, length)
    if kind == HF_TOKENIZERS:
        return HfTokenizer(path, length)
    raise ModelLoadError(f'unknown tokenizer kind {kind!r} in model.json')
