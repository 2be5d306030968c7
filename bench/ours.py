"""MOBIUS cases for the benchmarks, built with `build_model` on random weights."""

from __future__ import annotations

from bench.peers import Case


def build_mobius_case(variant: str, size: tuple[int, int]) -> Case:
    """Full-graph PyTorch forward of `variant` on one [1, 3, H, W] image, 80 cached classes."""
    from mobius_ros.model.variants import build_model

    raise NotImplementedError(f'{variant}: waiting for the model ({build_model})')
