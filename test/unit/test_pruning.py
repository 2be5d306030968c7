"""Threshold trajectories (by hand for L = 6), the keep rule, and the calibration loss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobius_ros.model.pruning import PruningConfig, keep_indices, threshold


def test_sigmoid_trajectory_l6_by_hand() -> None:
    # L = 6, lower 0.05, upper 0.2, beta 1: thr(l) = 0.05 + 0.15 / (1 + e^{-(l - 3) / 0.6}).
    config = PruningConfig(trajectory='sigmoid', lower=0.05, upper=0.2, beta=1.0)
    # l = 3: e^0 = 1 -> 0.05 + 0.15 / 2 = 0.125
    assert threshold(3, 6, config) == pytest.approx(0.125)
    # l = 0: e^{5} = 148.4131591 -> 0.05 + 0.15 / 149.4131591 = 0.0510039
    assert threshold(0, 6, config) == pytest.approx(0.05 + 0.15 / 149.4131591, abs=1e-9)
    assert threshold(0, 6, config) == pytest.approx(0.0510039, abs=1e-7)
    # l = 5: e^{-10/3} = 0.0356740 -> 0.05 + 0.15 / 1.0356740 = 0.1948332
    assert threshold(5, 6, config) == pytest.approx(0.1948332, abs=1e-7)
    values = [threshold(layer, 6, config) for layer in range(6)]
    assert values == sorted(values)


def test_exponential_trajectory_l6_by_hand() -> None:
    # alpha 5: thr(l) = 0.05 + 0.15 (e^{l} - 1) / (e^5 - 1) for l/(L-1) = l/5, alpha l/5 = l.
    config = PruningConfig(trajectory='exponential', alpha=5.0)
    assert threshold(0, 6, config) == pytest.approx(0.05)
    assert threshold(5, 6, config) == pytest.approx(0.2)
    # l = 2: (e^2 - 1) / (e^5 - 1) = 6.3890561 / 147.4131591 = 0.0433411 -> 0.0565012
    assert threshold(2, 6, config) == pytest.approx(0.0565012, abs=1e-7)


def test_logarithmic_trajectory_l6_by_hand() -> None:
    # alpha 5: thr(l) = 0.05 + 0.15 log(1 + l) / log(6).
    config = PruningConfig(trajectory='logarithmic', alpha=5.0)
    assert threshold(0, 6, config) == pytest.approx(0.05)
    assert threshold(5, 6, config) == pytest.approx(0.2)
    # l = 1: log 2 / log 6 = 0.6931472 / 1.7917595 = 0.3868528 -> 0.1080279
    assert threshold(1, 6, config) == pytest.approx(0.1080279, abs=1e-7)


def test_none_trajectory_keeps_everything() -> None:
    config = PruningConfig(trajectory='none')
    assert not config.enabled
    assert threshold(2, 6, config) == 0.0


def test_single_layer_decoder_has_defined_thresholds() -> None:
    for trajectory in ('exponential', 'logarithmic'):
        assert threshold(0, 1, PruningConfig(trajectory=trajectory)) == pytest.approx(0.05)
    assert math.isfinite(threshold(0, 1, PruningConfig()))


def test_keep_indices_threshold_and_order() -> None:
    confidence = np.array([0.1, 0.5, 0.05, 0.3, 0.2])
    kept = keep_indices(confidence, 0.15, min_keep=1)
    np.testing.assert_array_equal(kept, [1, 3, 4])
    assert kept.dtype == np.int64


def test_keep_indices_min_keep_wins_over_threshold() -> None:
    confidence = np.array([0.01, 0.04, 0.02, 0.03])
    np.testing.assert_array_equal(keep_indices(confidence, 0.5, min_keep=2), [1, 3])
    # min_keep larger than Q keeps all of them.
    assert len(keep_indices(confidence, 0.5, min_keep=100)) == 4


def test_keep_indices_ties_are_stable() -> None:
    np.testing.assert_array_equal(keep_indices(np.array([0.2, 0.2, 0.2]), 0.1, 1), [0, 1, 2])


@pytest.mark.parametrize(
    'kwargs',
    [
        {'trajectory': 'linear'},
        {'lower': 0.3, 'upper': 0.2},
        {'min_keep': 0},
        {'max_layers': 0},
    ],
)
def test_invalid_configs_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PruningConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys() -> None:
    config = PruningConfig(trajectory='logarithmic', upper=0.3, max_layers=4)
    assert PruningConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match='unknown'):
        PruningConfig.from_dict({**config.to_dict(), 'uper': 0.1})


def test_torch_keep_rule_matches_numpy() -> None:
    torch = pytest.importorskip('torch')
    from mobius_ros.model.transformer_decoder import keep_topk

    rng = np.random.default_rng(0)
    for _ in range(20):
        confidence = rng.random(50).astype(np.float32)
        thr, min_keep = float(rng.random()), int(rng.integers(1, 60))
        expected = keep_indices(confidence, thr, min_keep)
        got = keep_topk(torch.from_numpy(confidence), thr, min_keep).numpy()
        np.testing.assert_array_equal(got, expected)


def test_calibration_loss_is_bce_against_detached_target() -> None:
    torch = pytest.importorskip('torch')
    from mobius_ros.model.calibration import calibration_loss

    confidence = torch.tensor([[0.9, 0.2]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = calibration_loss(confidence, target)
    expected = -(math.log(0.9) + math.log(0.8)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert confidence.grad is not None
    assert target.grad is None
