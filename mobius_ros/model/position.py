"""Sine positional embeddings for feature maps and for boxes."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _sine(coords: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """[..., n] coords in [0, 1] -> [..., n * num_feats] interleaved sin/cos features."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_feats)
    pos = coords[..., None] * (2 * math.pi) / dim_t  # [..., n, F]
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


def sine_position_2d(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """Positional embedding of an H x W map's cell centres -> [H * W, dim] (y then x halves)."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).view(-1, 2)
    return _sine(grid, dim // 2)


def sine_position_2d_detr(height: int, width: int, dim: int, device: torch.device) -> Tensor:
    """DETR's normalised sine embedding of an unpadded H x W map -> [H * W, dim] (y then x).

    Rows and columns are counted from 1 and divided by the count plus 1e-6 (DETR's cumulative
    sum over the unpadded mask), so the last cell sits at 1 rather than at a cell centre.
    """
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    ys = ys / (ys[-1:] + 1e-6)
    xs = xs / (xs[-1:] + 1e-6)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing='ij'), dim=-1).view(-1, 2)
    return _sine(grid, dim // 2)


def sine_box_embed(boxes: Tensor, dim: int) -> Tensor:
    """[B, Q, 4] cxcywh in [0, 1] -> [B, Q, 2 * dim] (dim / 2 features per coordinate)."""
    return _sine(boxes, dim // 2)


def cell_centres(
    shapes: list[tuple[int, int]] | tuple[tuple[int, int], ...], device: torch.device
) -> Tensor:
    """Normalised (x, y) centres of every cell of every level, flattened -> [N, 2]."""
    centres = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        y, x = torch.meshgrid(ys, xs, indexing='ij')
        centres.append(torch.stack((x, y), dim=-1).view(-1, 2))
    return torch.cat(centres, dim=0)
