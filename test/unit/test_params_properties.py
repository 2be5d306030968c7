"""Property-based tests of the node's parameter validation (no ROS needed).

Whatever value of whatever type reaches a parameter, `validate` answers with None or a reason and
never raises; every value it accepts is of the declared type, inside the declared range and
choices; and any full parameter set that `validate_all` accepts builds the segmenter's and the
pruning controller's configuration without an error, so an accepted change can never fail later
when the node applies it.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobius_ros.ros import params

NAMES = st.sampled_from(sorted(params.SPECS))
TEXT = st.text(st.characters(exclude_categories=('Cs',)), max_size=300)
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(['sigmoid', 'none', 'agnostic', 'vocabulary', 'onnxruntime', 'fp16']),
    st.lists(TEXT, max_size=5).map(tuple),
    st.lists(st.integers(-3, 3), max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3),
    st.binary(max_size=8),
)


def _near(spec: params.ParamSpec) -> st.SearchStrategy[Any]:
    """Values close to what the parameter takes (edges of its range, its choices)."""
    default = spec.default
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        low, high = spec.range or (-(2**31), 2**31)
        return st.integers(int(low) - 2, int(high) + 2)
    if isinstance(default, float):
        low, high = spec.range or (-1e9, 1e9)
        return st.one_of(
            st.floats(low - 1, high + 1, allow_nan=False), st.sampled_from([low, high])
        )
    if isinstance(default, tuple):
        return st.lists(TEXT, max_size=6).map(tuple)
    return st.one_of(st.sampled_from(spec.choices or ('',)), TEXT)


@st.composite
def name_and_value(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(NAMES)
    value = draw(st.one_of(_near(params.SPECS[name]), ANY_VALUE))
    return name, value


@settings(max_examples=600, deadline=None)
@given(name_and_value())
def test_validate_never_raises_and_accepts_only_declared_values(item: tuple[str, Any]) -> None:
    name, value = item
    spec = params.SPECS[name]
    reason = params.validate(name, value)
    assert reason is None or (isinstance(reason, str) and reason)
    if reason is not None:
        return
    default = spec.default
    if isinstance(default, float):
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert math.isfinite(value)
    elif isinstance(default, tuple):
        assert all(isinstance(v, str) for v in value)
    else:
        assert type(value) is type(default)
    if spec.range is not None:
        assert spec.range[0] <= value <= spec.range[1]
    if spec.choices:
        assert value in spec.choices


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(name_and_value(), min_size=1, max_size=6))
def test_an_accepted_parameter_set_always_builds_the_runtime_configuration(
    changes: list[tuple[str, Any]],
) -> None:
    values = {**params.defaults(), **dict(changes)}
    reasons = params.validate_all(values)
    assert all(isinstance(r, str) and r for r in reasons)
    if reasons:
        return
    params.pruning_config(values)  # raises if an accepted set is not a valid configuration
    params.segmenter_config(values)
    params.latency_budget(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, max_size=8))
def test_vocabulary_parameter_accepts_exactly_the_lists_the_vocabulary_takes(
    phrases: list[str],
) -> None:
    cleaned = [' '.join(p.split()) for p in phrases]
    control = any(
        (ord(c) < 32 and c not in '\t\n\r') or 127 <= ord(c) < 160 for p in phrases for c in p
    )
    expected_ok = (
        bool(phrases)
        and all(cleaned)
        and all(len(p) <= 200 for p in cleaned)
        and not control
        and len(dict.fromkeys(cleaned)) <= 256
    )
    assert (params.validate('vocabulary', tuple(phrases)) is None) == expected_ok
