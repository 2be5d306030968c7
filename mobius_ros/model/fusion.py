"""Early vision-language fusion: one GLIP-style bi-directional attention block."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BiAttention(nn.Module):
    """Bi-directional multi-head attention between visual tokens and text tokens (GLIP).

    Both directions share one attention matrix: vision attends to text through it, text to
    vision through its transpose.

    Args:
        vision_dim: visual channels.
        text_dim: text channels.
        embed_dim: inner attention width (2048 in GLIP / GLEE).
        num_heads: heads (embed_dim % num_heads == 0).
    """

    def __init__(self, vision_dim: int, text_dim: int, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f'embed_dim {embed_dim} not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.v_proj = nn.Linear(vision_dim, embed_dim)
        self.l_proj = nn.Linear(text_dim, embed_dim)
        self.values_v_proj = nn.Linear(vision_dim, embed_dim)
        self.values_l_proj = nn.Linear(text_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, vision_dim)
        self.out_l_proj = nn.Linear(embed_dim, text_dim)

    def _heads(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, vision: Tensor, text: Tensor, text_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Exchange information between the two streams.

        Args:
            vision: [B, N, Cv].
            text: [B, T, Ct].
            text_mask: [B, T] bool, True on valid tokens; None attends to every token.

        Returns:
            (delta_vision [B, N, Cv], delta_text [B, T, Ct]).
        """
        B, N, _ = vision.shape
        q = self._heads(self.v_proj(vision)) * self.scale  # [B, M, N, d]
        k = self._heads(self.l_proj(text))  # [B, M, T, d]
        attn = q @ k.transpose(-1, -2)  # [B, M, N, T]
        # GLIP clamps the logits: the shared matrix is exponentiated in both directions.
        attn = attn.clamp(-50_000.0, 50_000.0)
        attn_v = attn
        if text_mask is not None:
            attn_v = attn.masked_fill(~text_mask[:, None, None, :], float('-inf'))
        attn_v = attn_v.softmax(-1)
        attn_l = attn.transpose(-1, -2).softmax(-1)  # [B, M, T, N]
        out_v = attn_v @ self._heads(self.values_l_proj(text))
        out_l = attn_l @ self._heads(self.values_v_proj(vision))
        out_v = out_v.transpose(1, 2).reshape(B, N, -1)
        out_l = out_l.transpose(1, 2).reshape(B, text.shape[1], -1)
        return self.out_v_proj(out_v), self.out_l_proj(out_l)


class BiAttentionBlock(nn.Module):
    """Pre-norm bi-attention with layer-scaled residuals on both streams (GLIP's block).

    At inference only the vision branch matters: the fused text is not used downstream of the
    pixel decoder, so the exported graph drops it.

    Args:
        dim: channels C of both streams (text already projected to C).
        embed_dim: inner attention width.
        num_heads: heads.
        init_scale: initial layer scale (small, so fusion starts as identity).
        residual_from_norm: add the updates to the normalised streams instead of the inputs
            (GLEE's early fusion: its block overwrites v and l with their layer norms first).
    """

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        num_heads: int,
        init_scale: float = 1e-4,
        *,
        residual_from_norm: bool = False,
    ) -> None:
        super().__init__()
        self.residual_from_norm = residual_from_norm
        self.norm_v = nn.LayerNorm(dim)
        self.norm_l = nn.LayerNorm(dim)
        self.attn = BiAttention(dim, dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(torch.full((dim,), init_scale))
        self.gamma_l = nn.Parameter(torch.full((dim,), init_scale))

    def forward(
        self, vision: Tensor, text: Tensor, text_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """[B, N, C], [B, T, C], [B, T] bool or None -> fused ([B, N, C], [B, T, C])."""
        normed_v, normed_l = self.norm_v(vision), self.norm_l(text)
        dv, dl = self.attn(normed_v, normed_l, text_mask)
        if self.residual_from_norm:
            vision, text = normed_v, normed_l
        return vision + self.gamma_v * dv, text + self.gamma_l * dl
