"""The latency-budget controller (DESIGN 6): the least pruning that keeps p95 under budget.

Before each frame `choose()` walks a ladder of pruning settings ordered from "no pruning, all
layers" to "maximal pruning, fewest layers" and returns the first whose predicted latency, plus a
p95 margin taken from recent prediction residuals, fits the budget. After the frame `observe()`
feeds the measured stage times back. The cost model is learned online:

- preprocess, encoder, postprocess and host overhead: exponentially weighted means;
- decoder: `a * layers + b * sum(queries entering each layer)`, the layers being one architecture,
  fitted by recursive least squares with forgetting (so it follows thermal throttling);
- mask head: `a + b * surviving queries`, likewise;
- surviving queries per layer under each setting: an exponentially weighted mean of what that
  setting actually kept. A setting never tried is assumed to keep only `min_keep` (the best case),
  so the controller tries it once when it might help and learns its real cost: optimism under
  uncertainty settles on the right rung within a few frames of each change.

torch-free; the ONNX Runtime / TensorRT host loop on a Jetson uses it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import pairwise

import numpy as np

from mobius_ros.model.pruning import PruningConfig

# Frames before residuals count: the first predictions come from a model fitted to 0-2 frames.
_WARMUP_FRAMES = 3


def default_ladder(
    num_layers: int, *, num_queries: int = 300, lower: float = 0.05
) -> tuple[PruningConfig, ...]:
    """No pruning; the paper's default; stronger pruning; then fewer layers at max pruning.

    `min_keep` scales with Q: the paper keeps 100 of 300 queries (Tab. 14), a third.
    """

    def keep(fraction: float) -> int:
        return max(1, round(num_queries * fraction))

    rungs = [
        PruningConfig(trajectory='none', lower=lower, upper=max(lower, 0.2), min_keep=1),
        PruningConfig(lower=lower, upper=0.2, min_keep=keep(1 / 3)),
        PruningConfig(lower=lower, upper=0.3, min_keep=keep(1 / 6)),
        PruningConfig(lower=lower, upper=0.4, min_keep=keep(1 / 12)),
        PruningConfig(lower=lower, upper=0.5, min_keep=keep(1 / 30)),
    ]
    rungs += [replace(rungs[-1], max_layers=n) for n in range(num_layers - 1, 0, -1)]
    return tuple(rungs)


def _aggressiveness(p: PruningConfig, num_layers: int) -> tuple[float, float, float]:
    depth = num_layers if p.max_layers is None else min(p.max_layers, num_layers)
    upper = p.upper if p.enabled else -1.0
    return upper, -float(p.min_keep if p.enabled else math.inf), -float(depth)


@dataclass(frozen=True)
class StageTimings:
    """Measured milliseconds of one frame and the queries that survived each decoder layer."""

    preprocess_ms: float
    encoder_ms: float
    decoder_ms: float
    masks_ms: float
    postprocess_ms: float
    total_ms: float
    queries_kept: tuple[int, ...]

    @classmethod
    def from_timings(
        cls, timings: Mapping[str, float], queries_kept: Sequence[int]
    ) -> StageTimings:
        """From `Prediction.timings_ms` keys (preprocess, encoder, decoder, masks, postprocess,
        total) and `Prediction.queries_kept`."""
        stages = [float(timings[k]) for k in ('preprocess', 'encoder', 'decoder', 'masks')]
        post = float(timings['postprocess'])
        total = float(timings.get('total', sum(stages) + post))
        return cls(*stages, post, total, tuple(int(q) for q in queries_kept))


@dataclass(frozen=True)
class BudgetDecision:
    """What the controller chose for the next frame, and why.

    `trajectory`, `upper`, `min_keep` and `max_layers` mirror the chosen `pruning`, so the
    predictor can read the decision like a PruningConfig.
    """

    index: int
    pruning: PruningConfig
    predicted_ms: float
    margin_ms: float
    budget_ms: float
    feasible: bool
    reason: str = ''

    @property
    def trajectory(self) -> str:
        return self.pruning.trajectory

    @property
    def upper(self) -> float:
        return self.pruning.upper

    @property
    def min_keep(self) -> int:
        return self.pruning.min_keep

    @property
    def max_layers(self) -> int | None:
        return self.pruning.max_layers


@dataclass(frozen=True)
class BudgetReport(Mapping[str, float | int | bool | str]):
    """Per-frame account: the choice, predicted vs measured, and the recent p50/p95.

    A read-only mapping so it drops straight into `Prediction.budget`.
    """

    setting: int
    upper: float
    min_keep: int
    layers: int
    predicted_ms: float
    measured_ms: float
    budget_ms: float
    budget_met: bool
    infeasible: bool
    reason: str
    p50_ms: float
    p95_ms: float

    def __getitem__(self, key: str) -> float | int | bool | str:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(f.name for f in fields(self))

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


def _quantile(values: Iterable[float], q: float) -> float:
    """numpy's default (linear) quantile; np.quantile's overhead is ~100 us per call, and this
    runs three times per frame."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _Rls:
    """Recursive least squares with exponential forgetting, y ~ theta . x."""

    def __init__(self, size: int, *, forgetting: float, prior: float = 1e4) -> None:
        self.theta = np.zeros(size)
        self.p = np.eye(size) * prior
        self.forgetting = forgetting
        self.count = 0

    def update(self, x: np.ndarray, y: float) -> None:
        px = self.p @ x
        gain = px / (self.forgetting + x @ px)
        self.theta = self.theta + gain * (y - x @ self.theta)
        self.p = (self.p - np.outer(gain, px)) / self.forgetting
        self.count += 1


class _Ewma:
    def __init__(self, weight: float) -> None:
        self.value = 0.0
        self.count = 0
        self.weight = weight

    def update(self, y: float) -> None:
        # The first samples are averaged plainly so the start-up value is not biased to 0.
        w = max(self.weight, 1.0 / (self.count + 1))
        self.value += w * (y - self.value)
        self.count += 1


class BudgetController:
    """Chooses per frame the least pruning whose predicted p95 latency fits `budget_ms`.

    Args:
        budget_ms: the latency budget of a whole frame (preprocess to postprocess).
        ladder: pruning settings from least to most aggressive (default: `default_ladder`
            for this Q and L).
        num_queries: Q, the queries entering the first decoder layer.
        num_layers: L, the model's decoder layers (thresholds follow the L-layer trajectory
            even when a setting exits early).
        window: recent frames kept for p50/p95 and the residual margin.
        quantile: the latency quantile the budget is held at (0.95: p95).
        forgetting: RLS forgetting factor; smaller adapts faster to changing cost.
        smoothing: EWMA weight of new samples for constant stages and survivor counts.
    """

    def __init__(
        self,
        budget_ms: float,
        ladder: Sequence[PruningConfig] | None = None,
        *,
        num_queries: int,
        num_layers: int,
        window: int = 100,
        quantile: float = 0.95,
        forgetting: float = 0.98,
        smoothing: float = 0.1,
    ) -> None:
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.ladder = tuple(
            default_ladder(num_layers, num_queries=num_queries) if ladder is None else ladder
        )
        if not self.ladder:
            raise ValueError('the ladder needs at least one setting')
        keys = [_aggressiveness(p, num_layers) for p in self.ladder]
        for i, (a, b) in enumerate(pairwise(keys)):
            if any(y < x for x, y in zip(a, b)):
                raise ValueError(
                    f'ladder rung {i + 1} is less aggressive than rung {i} (upper must not fall,'
                    ' min_keep and layers must not grow)'
                )
        self.quantile = quantile
        self.window = window
        self.smoothing = smoothing
        self.budget_ms = budget_ms
        self.set_budget(budget_ms)
        self._constant = {k: _Ewma(smoothing) for k in ('pre', 'enc', 'post', 'overhead')}
        self._decoder = _Rls(2, forgetting=forgetting)
        self._masks = _Rls(2, forgetting=forgetting)
        self._kept: dict[int, np.ndarray] = {}
        self._seen: dict[int, int] = {}
        self._residuals: deque[float] = deque(maxlen=window)
        self._latencies: deque[float] = deque(maxlen=window)
        self._last: BudgetDecision | None = None

    def set_budget(self, budget_ms: float) -> None:
        """Change the budget at run time (the learned cost model is kept)."""
        if not budget_ms > 0:
            raise ValueError(f'the latency budget must be > 0 ms, got {budget_ms}')
        self.budget_ms = float(budget_ms)

    def depth(self, index: int) -> int:
        """Decoder layers that rung `index` executes."""
        p = self.ladder[index]
        return self.num_layers if p.max_layers is None else min(p.max_layers, self.num_layers)

    def expected_kept(self, index: int) -> np.ndarray:
        """[layers] queries expected to survive each executed layer under rung `index`."""
        if index in self._kept:
            return self._kept[index]
        p = self.ladder[index]
        survive = min(p.min_keep, self.num_queries) if p.enabled else self.num_queries
        return np.full(self.depth(index), float(survive))

    def predict_ms(self, index: int, kept: np.ndarray | None = None) -> float:
        """Predicted frame latency under rung `index` (given survivor counts, or expected)."""
        kept = self.expected_kept(index) if kept is None else np.asarray(kept, float)
        # Plain floats: this runs for every rung before every frame, and 2-vectors in numpy
        # cost more in call overhead than in arithmetic.
        entering = self.num_queries + float(kept[:-1].sum())
        a, b = self._decoder.theta
        decoder = a * len(kept) + b * entering
        a, b = self._masks.theta
        masks = a + b * float(kept[-1])
        constant = sum(e.value for e in self._constant.values())
        return float(constant + max(decoder, 0.0) + max(masks, 0.0))

    def margin_ms(self) -> float:
        """The residual quantile added to predictions (0 until a few frames were seen)."""
        if len(self._residuals) < 5:
            return 0.0
        return _quantile(self._residuals, self.quantile)

    def choose(self) -> BudgetDecision:
        """The least aggressive rung predicted to meet the budget (or the most aggressive)."""
        margin = self.margin_ms()
        for index in range(len(self.ladder)):
            predicted = self.predict_ms(index)
            if predicted + margin <= self.budget_ms:
                return self._decide(index, predicted, margin, feasible=True)
        last = len(self.ladder) - 1
        predicted = self.predict_ms(last)
        reason = (
            f'even the most aggressive setting (upper {self.ladder[last].upper:.2f}, min_keep'
            f' {self.ladder[last].min_keep}, {self.depth(last)} layers) is predicted at'
            f' {predicted + margin:.1f} ms (p{round(self.quantile * 100)}), over the'
            f' {self.budget_ms:.1f} ms budget'
        )
        return self._decide(last, predicted, margin, feasible=False, reason=reason)

    def _decide(
        self, index: int, predicted: float, margin: float, *, feasible: bool, reason: str = ''
    ) -> BudgetDecision:
        decision = BudgetDecision(
            index, self.ladder[index], predicted, margin, self.budget_ms, feasible, reason
        )
        self._last = decision
        return decision

    def observe(
        self,
        timings: StageTimings | Mapping[str, float],
        queries_kept: Sequence[int] = (),
        decision: BudgetDecision | None = None,
    ) -> BudgetReport:
        """Learn from one frame run with `decision` (default: the last `choose()`)."""
        if not isinstance(timings, StageTimings):
            timings = StageTimings.from_timings(timings, queries_kept)
        decision = decision or self._last
        if decision is None:
            raise RuntimeError('observe() needs a decision: call choose() first')
        kept = np.asarray(timings.queries_kept, float)
        if kept.size == 0:
            raise ValueError('the frame reports no executed decoder layer (queries_kept empty)')
        index = decision.index
        # Residuals of frames whose survivor counts were already known include survivor
        # variability; for a first try only the cost model's own error is meaningful.
        known = self._seen.get(index, 0) >= 2
        before = decision.predicted_ms if known else self.predict_ms(index, kept)
        if sum(self._seen.values()) >= _WARMUP_FRAMES:
            self._residuals.append(timings.total_ms - before)

        entering = np.concatenate([[float(self.num_queries)], kept[:-1]])
        self._decoder.update(np.array([kept.size, entering.sum()]), timings.decoder_ms)
        self._masks.update(np.array([1.0, kept[-1]]), timings.masks_ms)
        self._constant['pre'].update(timings.preprocess_ms)
        self._constant['enc'].update(timings.encoder_ms)
        self._constant['post'].update(timings.postprocess_ms)
        staged = (
            timings.preprocess_ms
            + timings.encoder_ms
            + timings.decoder_ms
            + timings.masks_ms
            + timings.postprocess_ms
        )
        self._constant['overhead'].update(max(timings.total_ms - staged, 0.0))
        if index in self._kept and self._kept[index].shape == kept.shape:
            self._kept[index] += self.smoothing * (kept - self._kept[index])
        else:
            self._kept[index] = kept.copy()
        self._seen[index] = self._seen.get(index, 0) + 1

        self._latencies.append(timings.total_ms)
        return BudgetReport(
            setting=index,
            upper=decision.pruning.upper if decision.pruning.enabled else 0.0,
            min_keep=decision.pruning.min_keep,
            layers=int(kept.size),
            predicted_ms=round(decision.predicted_ms + decision.margin_ms, 3),
            measured_ms=round(timings.total_ms, 3),
            budget_ms=self.budget_ms,
            budget_met=bool(timings.total_ms <= self.budget_ms),
            infeasible=not decision.feasible,
            reason=decision.reason,
            p50_ms=round(_quantile(self._latencies, 0.5), 3),
            p95_ms=round(_quantile(self._latencies, 0.95), 3),
        )
