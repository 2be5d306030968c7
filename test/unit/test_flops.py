"""MAC counter: hand-computed formulas, attribution, dead-code removal, and the paper's tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobius_ros.model.flops import (
    UNATTRIBUTED,
    MacCounter,
    conv_macs,
    count_macs,
    giga,
    grid_sample_macs,
)


def test_grid_sample_counts_four_macs_per_sampled_point_and_channel() -> None:
    # input [N=2, C=3, 10, 10], grid [2, 4, 6, 2]: 2 * 3 * 24 points, 4 MACs each (bilinear).
    x = torch.randn(2, 3, 10, 10)
    grid = torch.rand(2, 4, 6, 2) * 2 - 1
    report = count_macs(lambda: F.grid_sample(x, grid, align_corners=False))
    assert report.total == 4 * 2 * 3 * 4 * 6 == 576
    assert grid_sample_macs((2, 3, 10, 10), (2, 4, 6, 2)) == 576
    assert grid_sample_macs((2, 3, 10, 10), (2, 4, 6, 2), mode=1) == 144


def test_linear_and_conv_known_counts() -> None:
    linear = nn.Linear(16, 8)
    assert count_macs(lambda: linear(torch.randn(2, 5, 16))).total == 2 * 5 * 16 * 8
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, bias=False)
    # output [1, 6, 5, 5]; each output element takes 4 * 3 * 3 multiply-adds.
    assert count_macs(lambda: conv(torch.randn(1, 4, 10, 10))).total == 6 * 25 * 36
    grouped = nn.Conv2d(4, 8, 3, padding=1, groups=4)
    assert count_macs(lambda: grouped(torch.randn(1, 4, 6, 6))).total == 8 * 36 * 1 * 9
    assert conv_macs((1, 4, 10, 10), (6, 4, 3, 3), (1, 6, 5, 5)) == 5400


def test_attention_counted_once_on_cpu_and_meta() -> None:
    q = torch.randn(2, 4, 10, 8)
    kv = torch.randn(2, 4, 7, 8)
    expected = 2 * 4 * 10 * 7 * (8 + 8)
    assert count_macs(lambda: F.scaled_dot_product_attention(q, kv, kv)).total == expected
    meta = [t.to('meta') for t in (q, kv)]
    report = count_macs(lambda: F.scaled_dot_product_attention(meta[0], meta[1], meta[1]))
    assert report.total == expected
    blind = count_macs(lambda: F.scaled_dot_product_attention(q, kv, kv), fused_attention=False)
    assert blind.total == 0


def test_norms_follow_fvcore() -> None:
    x = torch.randn(2, 8, 4, 4)
    assert count_macs(lambda: nn.GroupNorm(2, 8)(x)).total == 5 * x.numel()
    assert count_macs(lambda: nn.LayerNorm(4)(x)).total == 5 * x.numel()
    bn = nn.BatchNorm2d(8).eval()
    assert count_macs(lambda: bn(x)).total == 2 * x.numel()
    assert count_macs(lambda: bn(x), batch_norm=False).total == 0


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(8, 8)
        self.inner = nn.Linear(8, 8)
        self.head = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
        self.aux = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        h = self.inner(h) + h
        return self.head(h), self.aux(h)


def test_attribution_by_innermost_component_sums_to_total() -> None:
    toy = _Toy()
    x = torch.randn(3, 8)
    components = {'encoder': [toy.encoder, toy.inner], 'head': toy.head, 'fusion': toy.inner}
    report = count_macs(lambda: toy(x), components)
    assert report.by_component == {
        'encoder': 3 * 64,
        'fusion': 3 * 64,
        'head': 3 * 32,
        UNATTRIBUTED: 3 * 16,
    }
    assert sum(report.by_component.values()) == report.total == sum(report.by_op.values())


def test_dead_outputs_are_left_out() -> None:
    toy = _Toy()
    report = count_macs(lambda: toy(torch.randn(3, 8)), {'head': toy.head}, outputs=lambda r: r[0])
    assert report.total == 3 * (64 + 64 + 32)
    assert report.dead_by_component == {UNATTRIBUTED: 3 * 16}


def test_write_through_a_view_keeps_its_producer_alive() -> None:
    linear = nn.Linear(4, 4)

    def fn() -> torch.Tensor:
        out = torch.zeros(2, 8)
        out[:, :4] = linear(torch.randn(2, 4))
        return out

    assert count_macs(fn).total == 2 * 16


def test_component_block_for_code_outside_modules() -> None:
    counter = MacCounter()
    with torch.no_grad(), counter, counter.component('selection'):
        out = torch.randn(4, 5) @ torch.randn(5, 6)
    assert counter.report(out).by_component == {'selection': 120}
    assert giga(2_500_000_000) == 2.5
