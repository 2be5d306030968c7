"""Layers both pixel decoders and both query decoders are built from: conv + norm, the
post-norm FFN, the encoder's self-attention layer and the query decoder's layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.deformable_attention import MSDeformAttn

Shapes = tuple[tuple[int, int], ...]
SELF_ATTENTION = ('deformable', 'standard', 'none')
PROJECTED_STRIDES = (8, 16, 32)  # the backbone strides both pixel decoders project to C


NORMS = ('group', 'batch')


def norm_2d(kind: str, channels: int) -> nn.Module:
    """'group': GroupNorm (32 groups, or fewer for narrow widths), the paper's; 'batch':
    BatchNorm, which the exporter folds into the convolution before it (no node at all), where
    GroupNorm exports as InstanceNormalization between two reshapes and an affine Mul + Add."""
    if kind == 'group':
        return nn.GroupNorm(next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0), channels)
    if kind == 'batch':
        return nn.BatchNorm2d(channels)
    raise ValueError(f'norm must be one of {NORMS}, got {kind!r}')


def conv_gn(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    *,
    relu: bool = False,
    bias: bool = False,
    norm: str = 'group',
) -> nn.Sequential:
    """Conv [with bias] + GroupNorm (or `norm_2d`'s other kind) [+ ReLU]."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
        norm_2d(norm, cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def separable_conv_gn(
    cin: int, cout: int, kernel: int, *, relu: bool = False, norm: str = 'group'
) -> nn.Sequential:
    """Depthwise kxk conv, pointwise 1x1 conv, GroupNorm (or `norm_2d`'s other kind) [+ ReLU]:
    `conv_gn`'s role at about k^2 times fewer MACs when cin = cout is wide."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        norm_2d(norm, cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FeedForward(nn.Module):
    """C -> hidden -> C with ReLU, residual and post-norm."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, N, C]."""
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention over the encoder tokens (deformable / standard / none), then an FFN."""

    def __init__(
        self,
        dim: int,
        *,
        self_attn: str,
        num_heads: int,
        num_levels: int,
        num_points: int,
        ffn_dim: int,
    ) -> None:
        super().__init__()
        if self_attn not in SELF_ATTENTION:
            raise ValueError(f'self_attn must be one of {SELF_ATTENTION}, got {self_attn!r}')
        self.kind = self_attn
        if self_attn == 'deformable':
            self.attn: nn.Module | None = MSDeformAttn(dim, num_levels, num_heads, num_points)
        elif self_attn == 'standard':
            self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        else:
            self.attn = None
        self.norm = nn.LayerNorm(dim) if self.attn is not None else None
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(
        self,
        tokens: Tensor,
        pos: Tensor,
        reference: Tensor,
        value: Tensor,
        shapes: list[tuple[int, int]],
    ) -> Tensor:
        """tokens/pos [B, Nt, C], reference [B, Nt, 2], value [B, N, C] -> [B, Nt, C]."""
        if self.kind == 'deformable':
            tokens = self.norm(tokens + self.attn(tokens + pos, reference, value, shapes))
        elif self.kind == 'standard':
            q = tokens + pos
            tokens = self.norm(tokens + self.attn(q, q, tokens, need_weights=False)[0])
        return self.ffn(tokens)


class DecoderLayer(nn.Module):
    """Query self-attention (+ optional extra keys), deformable cross-attention, FFN."""

    def __init__(
        self, dim: int, *, num_heads: int, num_levels: int, num_points: int, ffn_dim: int
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformAttn(dim, num_levels, num_heads, num_points)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim)

    def forward(
        self,
        queries: Tensor,
        query_pos: Tensor,
        reference_boxes: Tensor,
        memory: Tensor,
        memory_shapes: Shapes,
        *,
        extra_tokens: Tensor | None = None,
        extra_mask: Tensor | None = None,
        extra_pos: Tensor | None = None,
    ) -> Tensor:
        """Update the queries.

        Args:
            queries, query_pos: [B, Q, C].
            reference_boxes: [B, Q, 4] cxcywh in [0, 1].
            memory: [B, N, C]; memory_shapes: its levels' (H, W).
            extra_tokens: optional [B, T, C] extra keys/values of the self-attention (the
                referring expression's tokens); extra_mask [B, T] bool, True on valid tokens.
            extra_pos: optional [B, T, C] added to the extra tokens' keys only.

        Returns:
            [B, Q, C].
        """
        q = queries + query_pos
        k, v, padding = q, queries, None
        if extra_tokens is not None:
            keys = extra_tokens if extra_pos is None else extra_tokens + extra_pos
            k = torch.cat([q, keys], dim=1)
            v = torch.cat([queries, extra_tokens], dim=1)
            valid = torch.ones(queries.shape[:2], dtype=torch.bool, device=queries.device)
            padding = ~torch.cat([valid, extra_mask], dim=1)
        attn = self.self_attn(q, k, v, key_padding_mask=padding, need_weights=False)[0]
        x = self.norm1(queries + attn)
        x = self.norm2(x + self.cross_attn(x + query_pos, reference_boxes, memory, memory_shapes))
        return self.ffn(x)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, D], index [B, Q] -> [B, Q, D]."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))
