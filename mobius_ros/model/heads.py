"""Per-query prediction heads: class (text similarity), box refinement, mask embedding."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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


def confidence_from_logits(logits: Tensor) -> Tensor:
    """[B, Q, K] -> [B, Q] max_k sigmoid(logit): the language-guided confidence."""
    return logits.sigmoid().amax(dim=-1)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Logit of x in (0, 1), clamped for stability."""
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


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
