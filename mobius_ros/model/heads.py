"""Per-query prediction heads: class (text similarity), box refinement, mask embedding."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.config import DecoderConfig


class MLP(nn.Module):
    """Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))

    def forward(self, x: Tensor) -> Tensor:
        """[..., in_dim] -> [..., out_dim]."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ClassHead(nn.Module):
    """logits = (LN(q) W) . text^T * exp(scale) + bias  (sigmoid, no no-object class).

    Args:
        dim: hidden width C.
        prior: initial sigmoid probability, as in focal-loss detectors.
    """

    def __init__(self, dim: int, prior: float = 0.01) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim, bias=False)
        # Text embeddings are L2-normalised, so a learned scale sets the logit range. LN(q) W
        # has a norm of about sqrt(C) and the text side a norm of 1, so a unit scale starts the
        # logits with unit spread; 1/sqrt(C), the factor for two unnormalised vectors, starts
        # them near 0.1, where the phrases cannot be told apart (their projections collapse
        # towards one "object" direction before the scale opens).
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.tensor(-math.log((1.0 - prior) / prior)))

    def forward(self, queries: Tensor, class_embed: Tensor) -> Tensor:
        """queries [B, Q, C], class_embed [B, K, C] -> logits [B, Q, K]."""
        q = self.proj(self.norm(queries))
        t = F.normalize(class_embed, dim=-1)
        return (q @ t.transpose(1, 2)) * self.logit_scale.exp() + self.bias


class DotClassHead(nn.Module):
    """logits = (q W) . class_embed^T: MaskDINO's (GLEE's) class head, no norm, scale or bias.

    The caller normalises the queries (the decoder's final norm); class embeddings enter as
    they are (GLEE's mean of projected tokens, not L2-normalised).

    Args:
        dim: query width C.
        embed_dim: class embedding width (GLEE's DIM_PROJ).
    """

    def __init__(self, dim: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, queries: Tensor, class_embed: Tensor) -> Tensor:
        """queries [B, Q, C], class_embed [B, K, E] -> logits [B, Q, K]."""
        return self.proj(queries) @ class_embed.transpose(1, 2)


def confidence_from_logits(logits: Tensor) -> Tensor:
    """[B, Q, K] -> [B, Q] max_k sigmoid(logit): the language-guided confidence."""
    return logits.sigmoid().amax(dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of x in (0, 1), clamped for stability."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


def clamped_odds_logit(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(max(x, eps) / max(1 - x, eps)) of x in [0, 1] (MaskDINO's inverse sigmoid).

    Equal to `inverse_sigmoid` inside (eps, 1 - eps); at the ends it is +-log(1 / eps) exactly.
    """
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


class BoxHead(nn.Module):
    """Iterative box refinement: boxes = sigmoid(MLP(q) + inverse_sigmoid(reference))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = MLP(dim, dim, 4, 3)
        # Start as identity so untrained layers keep the proposals' boxes.
        nn.init.zeros_(self.mlp.layers[-1].weight)
        nn.init.zeros_(self.mlp.layers[-1].bias)

    def forward(self, queries: Tensor, reference: Tensor) -> Tensor:
        """queries [B, Q, C], reference [B, Q, 4] cxcywh -> refined [B, Q, 4] cxcywh."""
        return (self.mlp(queries) + inverse_sigmoid(reference)).sigmoid()


class MaskHead(nn.Module):
    """masks = MLP(LN(q)) . mask_features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.embed = MLP(dim, dim, dim, 3)

    def forward(self, queries: Tensor, mask_features: Tensor) -> Tensor:
        """queries [B, Q, C], mask_features [B, C, H/4, W/4] -> mask logits [B, Q, H/4, W/4]."""
        embed = self.embed(self.norm(queries))
        return torch.einsum('bqc,bchw->bqhw', embed, mask_features)


class RenormMaskHead(MaskHead):
    """masks = MLP(LN(LN(q))) . mask_features: MaskDINO's decoder norms each layer's output
    and its mask head norms it again with the same norm (GLEE's layers; its proposals, a
    training-only output, see the norm once)."""

    def forward(self, queries: Tensor, mask_features: Tensor) -> Tensor:
        """queries [B, Q, C], mask_features [B, C, H/4, W/4] -> mask logits [B, Q, H/4, W/4]."""
        return super().forward(self.norm(queries), mask_features)


def build_mask_head(config: DecoderConfig, dim: int) -> MaskHead:
    """The mask head of the decoder style: `MaskHead` ('mobius') or `RenormMaskHead`."""
    return RenormMaskHead(dim) if config.style == 'maskdino' else MaskHead(dim)
