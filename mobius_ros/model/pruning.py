"""Confidence-threshold trajectories and the keep rule for decoder query pruning.

Torch-free on purpose: the ONNX Runtime / TensorRT host loop on a Jetson imports this without
torch. The torch twin of the keep rule lives in `transformer_decoder.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

TRAJECTORIES = ('sigmoid', 'logarithmic', 'exponential', 'none')


@dataclass(frozen=True)
class PruningConfig:
    """How aggressively to prune decoder queries (DESIGN §4.7, defaults from the paper's Tab. 14).

    Attributes:
        trajectory: how the threshold rises from `lower` to `upper` over the layers; 'none'
            disables pruning (early exit by `max_layers` still applies).
        lower: threshold at the first layer.
        upper: threshold approached at the last layer.
        alpha: steepness of the exponential and logarithmic trajectories.
        beta: steepness of the sigmoid trajectory.
        min_keep: the top `min_keep` queries by confidence always survive.
        max_layers: stop after this many decoder layers (None: run all).
    """

    trajectory: str = 'sigmoid'
    lower: float = 0.05
    upper: float = 0.2
    alpha: float = 5.0
    beta: float = 1.0
    min_keep: int = 100
    max_layers: int | None = None

    def __post_init__(self) -> None:
        if self.trajectory not in TRAJECTORIES:
            raise ValueError(f'trajectory must be one of {TRAJECTORIES}, got {self.trajectory!r}')
        if not 0.0 <= self.lower <= self.upper <= 1.0:
            raise ValueError(f'need 0 <= lower <= upper <= 1, got {self.lower}, {self.upper}')
        if self.min_keep < 1:
            raise ValueError(f'min_keep must be >= 1, got {self.min_keep}')
        if self.max_layers is not None and self.max_layers < 1:
            raise ValueError(f'max_layers must be >= 1 or None, got {self.max_layers}')

    @property
    def enabled(self) -> bool:
        """Whether queries are pruned at all."""
        return self.trajectory != 'none'

    def to_dict(self) -> dict[str, object]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PruningConfig:
        """Inverse of `to_dict`; unknown keys are errors."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f'unknown PruningConfig keys: {sorted(unknown)}')
        return cls(**data)  # type: ignore[arg-type]


def threshold(layer: int, num_layers: int, config: PruningConfig) -> float:
    """Confidence threshold after decoder layer `layer` (0-based) of `num_layers`.

    The supplementary's eqs. 6-8, with the lower bound as the starting value:
    exponential  lower + (upper - lower) (e^{a l/(L-1)} - 1) / (e^a - 1)
    logarithmic  lower + (upper - lower) log(1 + a l/(L-1)) / log(1 + a)
    sigmoid      lower + (upper - lower) / (1 + e^{-b (l - L/2) / (L/10)})
    'none' gives 0.0 (everything survives).
    """
    if not 0 <= layer < num_layers:
        raise ValueError(f'layer {layer} outside 0..{num_layers - 1}')
    lo, up = config.lower, config.upper
    if config.trajectory == 'none':
        return 0.0
    if config.trajectory == 'sigmoid':
        z = -config.beta * (layer - num_layers / 2) / (num_layers / 10)
        return lo + (up - lo) / (1.0 + math.exp(z))
    # A single layer has no trajectory to follow: l/(L-1) is taken as 0.
    t = layer / (num_layers - 1) if num_layers > 1 else 0.0
    a = config.alpha
    if config.trajectory == 'exponential':
        return lo + (up - lo) * (math.exp(a * t) - 1.0) / (math.exp(a) - 1.0)
    return lo + (up - lo) * math.log(1.0 + a * t) / math.log(1.0 + a)


def keep_indices(confidence: np.ndarray, threshold: float, min_keep: int) -> np.ndarray:
    """Indices of the surviving queries, sorted by confidence (descending).

    A query survives if its confidence >= threshold; the top `min_keep` always survive.

    Args:
        confidence: [Q] per-query confidence.
        threshold: the layer's threshold.
        min_keep: how many top queries survive regardless.

    Returns:
        [Q'] int64 indices into `confidence`, Q' = max(#(c >= thr), min(min_keep, Q)).
    """
    confidence = np.asarray(confidence).reshape(-1)
    # Stable sort so that ties keep their original order on every backend.
    order = np.argsort(-confidence, kind='stable')
    count = max(int((confidence >= threshold).sum()), min(min_keep, confidence.shape[0]))
    return order[:count].astype(np.int64)
