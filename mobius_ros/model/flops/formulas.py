"""Per-op MAC formulas (fvcore's rules; see the package docstring for the list)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

aten = torch.ops.aten

Formula = Callable[[tuple, dict, Any], int]


def shape_of(t: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


def _numel(t: torch.Tensor) -> int:
    return math.prod(t.shape)


def _mm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = (args[1], args[2]) if len(args) > 2 else (args[0], args[1])
    m, k = shape_of(a)
    return m * k * shape_of(b)[1]


def _bmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = (args[1], args[2]) if len(args) > 2 else (args[0], args[1])
    batch, m, k = shape_of(a)
    return batch * m * k * shape_of(b)[2]


def _mv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    matrix = args[1] if len(args) > 2 else args[0]
    return _numel(matrix)


def conv_macs(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    transposed: bool = False,
) -> int:
    """MACs of an N-d convolution: one per output (input when transposed) element per tap.

    input [N, Cin, *S], weight [Cout, Cin/g, *k] ([Cin, Cout/g, *k] when transposed).
    """
    taps = math.prod(weight_shape[2:])
    if transposed:
        return math.prod(input_shape) * weight_shape[1] * taps
    return math.prod(output_shape[:1]) * math.prod(output_shape[1:]) * weight_shape[1] * taps


def _conv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get('transposed', False))
    return conv_macs(shape_of(args[0]), shape_of(args[1]), shape_of(out), transposed=transposed)


def attention_macs(query_shape: Sequence[int], key_shape: Sequence[int], value_dim: int) -> int:
    """MACs of softmax(q kᵀ) v for q [..., Lq, Dqk], k [..., Lk, Dqk], v [..., Lk, Dv]."""
    *lead, lq, dqk = query_shape
    lk = key_shape[-2]
    return math.prod(lead) * lq * lk * (dqk + value_dim)


def _sdpa_macs(args: tuple, kwargs: dict, out: Any) -> int:
    query, key, value = args[:3]
    return attention_macs(shape_of(query), shape_of(key), shape_of(value)[-1])


def _native_mha_macs(args: tuple, kwargs: dict, out: Any) -> int:
    # nn.MultiheadAttention's inference fast path: projections, attention, output projection.
    batch, lq, dim = shape_of(args[0])
    lk = shape_of(args[1])[1]
    return batch * ((2 * lq + 2 * lk) * dim * dim + 2 * lq * lk * dim)


def grid_sample_macs(
    input_shape: Sequence[int], grid_shape: Sequence[int], *, mode: int = 0
) -> int:
    """MACs of `grid_sample`: 4 per sampled point per channel (bilinear), 1 for nearest.

    input [N, C, H, W], grid [N, Ho, Wo, 2] -> output [N, C, Ho, Wo].
    """
    per_point = 1 if mode == 1 else 4
    return per_point * input_shape[0] * input_shape[1] * math.prod(grid_shape[1:-1])


def _grid_sample_macs(args: tuple, kwargs: dict, out: Any) -> int:
    mode = int(args[2]) if len(args) > 2 else int(kwargs.get('interpolation_mode', 0))
    return grid_sample_macs(shape_of(args[0]), shape_of(args[1]), mode=mode)


def _per_output(factor: int) -> Formula:
    def formula(args: tuple, kwargs: dict, out: Any) -> int:
        first = out[0] if isinstance(out, (tuple, list)) else out
        return factor * _numel(first)

    return formula


def _per_input(factor: int) -> Formula:
    def formula(args: tuple, kwargs: dict, out: Any) -> int:
        return factor * _numel(args[0])

    return formula


def _norm_macs(weight_index: int) -> Formula:
    def formula(args: tuple, kwargs: dict, out: Any) -> int:
        affine = len(args) > weight_index and args[weight_index] is not None
        return (5 if affine else 4) * _numel(args[0])

    return formula


def _batch_norm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    affine = len(args) > 1 and args[1] is not None
    return (2 if affine else 1) * _numel(args[0])


def _packets(names: str) -> list[torch._ops.OpOverloadPacket]:
    """The aten op packets among the space-separated `names` that this torch build has."""
    return [getattr(aten, n) for n in names.split() if hasattr(aten, n)]


_CONVOLUTIONS = (
    'convolution _convolution convolution_overrideable cudnn_convolution _slow_conv2d_forward '
    'mkldnn_convolution thnn_conv2d'
)
_ATTENTION_KERNELS = (
    '_scaled_dot_product_flash_attention_for_cpu _scaled_dot_product_flash_attention '
    '_scaled_dot_product_efficient_attention _scaled_dot_product_cudnn_attention '
    '_scaled_dot_product_fused_attention_overrideable'
)
_BATCH_NORMS = '_native_batch_norm_legit_no_training _native_batch_norm_legit native_batch_norm'


def mac_formulas(*, batch_norm: bool) -> dict[torch._ops.OpOverloadPacket, Formula]:
    """aten op packet -> MAC formula(args, kwargs, out); batch norm only when asked."""
    groups: list[tuple[str, Formula]] = [
        ('mm addmm', _mm_macs),
        ('bmm baddbmm', _bmm_macs),
        ('mv addmv', _mv_macs),
        (_CONVOLUTIONS, _conv_macs),
        (_ATTENTION_KERNELS, _sdpa_macs),
        ('_native_multi_head_attention', _native_mha_macs),
        ('grid_sampler_2d cudnn_grid_sampler', _grid_sample_macs),
        ('upsample_bilinear2d _upsample_bilinear2d_aa', _per_output(4)),
        ('upsample_nearest2d _upsample_nearest_exact2d', _per_output(1)),
        ('native_layer_norm', _norm_macs(2)),
        ('native_group_norm', _norm_macs(1)),
        ('_adaptive_avg_pool2d', _per_input(1)),
    ]
    if batch_norm:
        groups.append((_BATCH_NORMS, _batch_norm_macs))
    table: dict[torch._ops.OpOverloadPacket, Formula] = {}
    for names, formula in groups:
        table.update(dict.fromkeys(_packets(names), formula))
    return table
