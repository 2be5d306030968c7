"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

`ms_deform_attn` is the grid_sample path used by the model and exported to ONNX;
`ms_deform_attn_reference` is an explicit bilinear gather used only to test it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shapes = Sequence[tuple[int, int]]


def level_start_index(shapes: Shapes) -> list[int]:
    """Offset of each level in the flattened token axis."""
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += h * w
    return starts


def ms_deform_attn(
    value: Tensor, shapes: Shapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Sample and weight the value maps at the given locations (grid_sample, bilinear).

    Args:
        value: [B, N, M, Dh] per-head values, N = sum_l H_l W_l.
        shapes: ((H_l, W_l), ...) for the L levels.
        sampling_locations: [B, Nq, M, L, P, 2] x, y in [0, 1] of each level's map.
        attention_weights: [B, Nq, M, L, P], softmax-normalised over L * P.

    Returns:
        [B, Nq, M * Dh].
    """
    B, N, M, Dh = value.shape
    _, Nq, _, L, P, _ = sampling_locations.shape
    # One transpose of all values, grids and weights, then per level a sample and a weighted sum
    # over its P points added into the output. Stacking the levels' samples and summing over
    # (L, P) at the end exported to 2.3x the nodes (a transpose per level, a Concat copying
    # every sample) and was slower on ONNX Runtime (README, Performance).
    values = value.permute(0, 2, 3, 1).reshape(B * M, Dh, N).split([h * w for h, w in shapes], -1)
    grids = (2.0 * sampling_locations - 1.0).transpose(1, 2).reshape(B * M, Nq, L, P, 2)
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Nq, L, P)
    out = None
    for lvl, (h, w) in enumerate(shapes):
        sampled = F.grid_sample(  # [B*M, Dh, Nq, P]
            values[lvl].reshape(B * M, Dh, h, w),
            grids[:, :, lvl],
            mode='bilinear',
            padding_mode='zeros',
            align_corners=False,
        )
        part = (sampled * weights[..., lvl, :]).sum(-1)
        out = part if out is None else out + part
    return out.view(B, M * Dh, Nq).transpose(1, 2)


def ms_deform_attn_reference(
    value: Tensor, shapes: Shapes, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Same contract as `ms_deform_attn`, by explicit bilinear interpolation (slow, tests only).

    Pixel centres sit at (i + 0.5) / W, samples outside the map read zeros, as grid_sample
    with align_corners=False and zero padding.
    """
    B, _, M, Dh = value.shape
    Nq = sampling_locations.shape[1]
    out = value.new_zeros(B, Nq, M, Dh)
    for lvl, (h, w) in enumerate(shapes):
        start = level_start_index(shapes)[lvl]
        v = value[:, start : start + h * w]  # [B, HW, M, Dh]
        x = sampling_locations[:, :, :, lvl, :, 0] * w - 0.5  # [B, Nq, M, P]
        y = sampling_locations[:, :, :, lvl, :, 1] * h - 0.5
        x0, y0 = torch.floor(x), torch.floor(y)
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                wx = 1.0 - (x - xi).abs()
                wy = 1.0 - (y - yi).abs()
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                flat = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()  # [B, Nq, M, P]
                for b in range(B):
                    for m in range(M):
                        corner = v[b, flat[b, :, m], m]  # [Nq, P, Dh]
                        weight = (wx[b, :, m] * wy[b, :, m] * inside[b, :, m]) * attention_weights[
                            b, :, m, lvl
                        ]
                        out[b, :, m] += (corner * weight[..., None]).sum(1)
    return out.reshape(B, Nq, M * Dh)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module.

    Args:
        dim: channels C.
        num_levels: levels L of the value maps.
        num_heads: heads M (C % M == 0).
        num_points: sampling points P per head and level.
    """

    def __init__(self, dim: int, num_levels: int, num_heads: int, num_points: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} not divisible by num_heads {num_heads}')
        self.num_levels, self.num_heads, self.num_points = num_levels, num_heads, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Deformable DETR's init: points start on rays in M directions at growing radii,
        # so an untrained layer already looks around each reference point.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        for p in range(self.num_points):
            grid[:, :, p, :] *= p + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        value: Tensor,
        shapes: Shapes,
        value_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to P points per level around its reference.

        Args:
            query: [B, Nq, C] (positional embedding already added).
            reference: [B, Nq, 2] points (x, y) or [B, Nq, 4] boxes (cx, cy, w, h), in [0, 1];
                the same normalised reference is used on every level.
            value: [B, N, C] flattened maps of all levels, N = sum H_l W_l.
            shapes: ((H_l, W_l), ...) with len == num_levels.
            value_mask: optional [B, N] bool, True where the value is padding.

        Returns:
            [B, Nq, C].
        """
        if len(shapes) != self.num_levels:
            raise ValueError(f'expected {self.num_levels} levels, got {len(shapes)}')
        B, Nq, C = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        v = self.value_proj(value)
        if value_mask is not None:
            v = v.masked_fill(value_mask[..., None], 0.0)
        v = v.view(B, v.shape[1], M, C // M)
        offsets = self.sampling_offsets(query).view(B, Nq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Nq, M, L * P).softmax(-1)
        weights = weights.view(B, Nq, M, L, P)
        if reference.shape[-1] == 2:
            # Offsets are in pixels of each level.
            normaliser = torch.tensor(
                [[w, h] for h, w in shapes], dtype=query.dtype, device=query.device
            )
            locations = reference[:, :, None, None, None, :] + offsets / normaliser[:, None, :]
        else:
            # Offsets are relative to half the box size (Deformable DETR's two-stage form).
            centre = reference[:, :, None, None, None, :2]
            size = reference[:, :, None, None, None, 2:]
            locations = centre + offsets / P * size * 0.5
        return self.output_proj(ms_deform_attn(v, shapes, locations, weights))
