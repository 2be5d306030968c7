"""grid_sample multi-scale deformable attention against an explicit bilinear reference."""

from __future__ import annotations

import pytest
import torch

from mobius_ros.model.deformable_attention import (
    MSDeformAttn,
    level_start_index,
    ms_deform_attn,
    ms_deform_attn_reference,
)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_grid_sample_matches_naive_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 9), (4, 5), (2, 3), (1, 1)]
    n = sum(h * w for h, w in shapes)
    B, Nq, M, Dh, L, P = 2, 6, 3, 4, len(shapes), 3
    value = torch.randn(B, n, M, Dh, generator=gen)
    # Locations reach outside [0, 1] to exercise the zero padding at the borders.
    locations = torch.rand(B, Nq, M, L, P, 2, generator=gen) * 1.4 - 0.2
    weights = torch.rand(B, Nq, M, L * P, generator=gen).softmax(-1).view(B, Nq, M, L, P)
    fast = ms_deform_attn(value, shapes, locations, weights)
    slow = ms_deform_attn_reference(value, shapes, locations, weights)
    assert fast.shape == (B, Nq, M * Dh)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_sampling_a_cell_centre_reads_that_cell() -> None:
    shapes = [(2, 2)]
    value = torch.arange(4.0).view(1, 4, 1, 1)
    # Centre of cell (row 1, col 0) is x = 0.25, y = 0.75.
    locations = torch.tensor([0.25, 0.75]).view(1, 1, 1, 1, 1, 2)
    weights = torch.ones(1, 1, 1, 1, 1)
    assert ms_deform_attn(value, shapes, locations, weights).item() == pytest.approx(2.0)


def test_level_start_index() -> None:
    assert level_start_index([(4, 4), (2, 3), (1, 1)]) == [0, 16, 22]


@pytest.mark.parametrize('reference_dim', [2, 4])
def test_module_shapes_and_level_check(reference_dim: int) -> None:
    shapes = [(8, 8), (4, 4)]
    attn = MSDeformAttn(16, num_levels=2, num_heads=4, num_points=2)
    out = attn(
        torch.randn(2, 5, 16),
        torch.rand(2, 5, reference_dim),
        torch.randn(2, 80, 16),
        shapes,
    )
    assert out.shape == (2, 5, 16)
    with pytest.raises(ValueError, match='levels'):
        attn(torch.randn(1, 5, 16), torch.rand(1, 5, 2), torch.randn(1, 64, 16), [(8, 8)])


def test_value_mask_zeroes_masked_values() -> None:
    shapes = [(4, 4)]
    attn = MSDeformAttn(8, num_levels=1, num_heads=2, num_points=2)
    query, ref, value = torch.randn(1, 3, 8), torch.rand(1, 3, 2), torch.randn(1, 16, 8)
    everything = torch.ones(1, 16, dtype=torch.bool)
    masked = attn(query, ref, value, shapes, value_mask=everything)
    # With every value masked, only the output projection's bias remains.
    torch.testing.assert_close(masked, attn.output_proj.bias.expand_as(masked))
