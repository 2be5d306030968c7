"""Property-based tests of the node's services and parameters on the real ROS graph.

Hypothesis draws requests (phrases with any unicode, blanks, control characters, overlong and too
many phrases; flags; thresholds including NaN and infinities; parameter values of every type)
and each property holds for the running node: every request is answered; a refusal says why
and changes nothing; an acceptance does what the request asked, visible through the node's own
read-back (get_vocabulary, get_parameters).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NAMESPACE = '/mobius_properties'
MAX_PHRASES, MAX_CHARS = 12, 40
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TEXT = st.text(st.characters(exclude_categories=('Cs',)), max_size=MAX_CHARS + 10)
PHRASE = st.one_of(TEXT, st.sampled_from(['red box', ' red  box ', 'sky', '', ' ', 'a\x07b']))


@pytest.fixture(scope='module')
def node(start_node: Any, checkpoint: Path) -> Any:
    process = start_node(
        namespace=NAMESPACE, checkpoint=str(checkpoint), backend='torch',
        input_height=64, input_width=96, vocabulary=['red box'],
        max_vocabulary=MAX_PHRASES, max_phrase_chars=MAX_CHARS,
    )  # fmt: skip
    assert process.wait_for_log('active: listening', timeout=90), process.log()
    return process


def _expected(phrases: list[str], current: list[str], append: bool) -> list[str] | None:
    """The vocabulary a set_vocabulary call must leave, or None when it must be refused:
    phrases stripped with inner whitespace collapsed, duplicates dropped in order."""
    merged = [*current, *phrases] if append else phrases
    cleaned = [' '.join(p.split()) for p in merged]
    control = any(
        (ord(c) < 32 and c not in '\t\n\r') or 127 <= ord(c) < 160 for p in merged for c in p
    )
    unique = list(dict.fromkeys(cleaned))
    if not merged or control or not all(cleaned) or any(len(p) > MAX_CHARS for p in cleaned):
        return None
    return unique if len(unique) <= MAX_PHRASES else None


@SETTINGS
@given(phrases=st.lists(PHRASE, max_size=MAX_PHRASES + 3), append=st.booleans())
def test_set_vocabulary_does_what_it_says_or_refuses_with_a_reason(
    node: Any, ros_client: Any, phrases: list[str], append: bool
) -> None:
    from mobius_ros_msgs.srv import GetVocabulary, SetVocabulary

    before = ros_client.call(GetVocabulary, f'{NAMESPACE}/get_vocabulary', GetVocabulary.Request())
    reply = ros_client.call(
        SetVocabulary, f'{NAMESPACE}/set_vocabulary',
        SetVocabulary.Request(phrases=phrases, append=append),
    )  # fmt: skip
    after = ros_client.call(GetVocabulary, f'{NAMESPACE}/get_vocabulary', GetVocabulary.Request())
    current = list(before.phrases) if before.task == 'vocabulary' else ['object']
    expected = _expected(phrases, current, append)
    if expected is None:
        assert not reply.success and reply.message, (phrases, reply.message)
        assert list(after.phrases) == list(before.phrases)
        assert after.vocabulary_version == before.vocabulary_version
    else:
        assert reply.success, (phrases, reply.message)
        assert list(reply.phrases) == expected == list(after.phrases)
        assert list(reply.class_ids) == list(range(len(expected)))
        assert after.vocabulary_version > before.vocabulary_version


@SETTINGS
@given(
    ask=st.sampled_from(['current', 'phrases', 'agnostic', 'expression', 'two']),
    phrases=st.lists(PHRASE, min_size=1, max_size=4),
    expression=TEXT,
    threshold=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-1.0, 0.0, 1.0])
    ),
    size=st.tuples(st.integers(0, 40), st.integers(0, 40)),
)
def test_segment_answers_every_request_with_a_result_or_a_reason(
    node: Any, ros_client: Any, ask: str, phrases: list[str], expression: str,
    threshold: float, size: tuple[int, int],
) -> None:  # fmt: skip
    import numpy as np
    from mobius_ros_msgs.srv import Segment
    from sensor_msgs.msg import Image

    height, width = size
    request = Segment.Request(score_threshold=threshold)
    rgb = np.full((height, width, 3), 128, np.uint8)
    request.image = Image(height=height, width=width, encoding='rgb8', step=width * 3,
                          data=rgb.tobytes())  # fmt: skip
    if ask in ('phrases', 'two'):
        request.phrases = phrases
    if ask in ('expression', 'two'):
        request.expression = expression
    request.agnostic = ask == 'agnostic'
    reply = ros_client.call(Segment, f'{NAMESPACE}/segment', request)
    fine_image = height >= 2 and width >= 2
    fine_threshold = threshold < 0 or (math.isfinite(threshold) and threshold <= 1)
    if not reply.success:
        assert reply.message, request
        return
    # An empty expression asks nothing: two asks only when both carry something.
    asks = sum([bool(request.phrases), request.agnostic, bool(request.expression)])
    assert fine_image and fine_threshold and asks <= 1, (request, reply.message)
    result = reply.result
    assert (result.label_image.height, result.label_image.width) == (height, width)


PARAMETER_VALUES = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), TEXT,
    st.lists(TEXT, max_size=3), st.lists(st.floats(), max_size=3),
)  # fmt: skip


@SETTINGS
@given(
    name=st.sampled_from(
        ['score_threshold', 'max_detections', 'latency_budget_ms', 'pruning.lower',
         'pruning.upper', 'pruning.trajectory', 'pruning.max_layers', 'task', 'vocabulary',
         'publish_detections', 'backend', 'input_height', 'no_such_parameter']
    ),
    value=PARAMETER_VALUES,
)  # fmt: skip
def test_a_parameter_change_is_applied_exactly_or_refused_with_a_reason(
    node: Any, ros_client: Any, name: str, value: Any
) -> None:
    from rcl_interfaces.srv import GetParameters, SetParameters
    from rclpy.parameter import Parameter, parameter_value_to_python

    def read() -> list[Any]:
        service = f'{NAMESPACE}/mobius/get_parameters'
        reply = ros_client.call(GetParameters, service, GetParameters.Request(names=[name]))
        return [parameter_value_to_python(v) for v in reply.values]

    before = read()
    try:
        message = Parameter(name, value=value).to_parameter_msg()
    except (TypeError, ValueError):  # not expressible as a ROS parameter at all
        return
    reply = ros_client.call(
        SetParameters, f'{NAMESPACE}/mobius/set_parameters',
        SetParameters.Request(parameters=[message]),
    )  # fmt: skip
    result = reply.results[0]
    after = read()
    if result.successful:
        assert after and _same(after[0], value), (name, value, after)
        # Put it back, so that later examples start from a working node.
        back = Parameter(name, value=before[0]).to_parameter_msg()
        restored = ros_client.call(
            SetParameters, f'{NAMESPACE}/mobius/set_parameters',
            SetParameters.Request(parameters=[back]),
        )  # fmt: skip
        assert restored.results[0].successful, restored.results[0].reason
    else:
        assert result.reason, (name, value)
        assert _same_list(after, before), (name, value, before, after)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


def _same_list(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
