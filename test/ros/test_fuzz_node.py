"""The fuzz driver of `bench/fuzz_node.py`, at a small count, against a real node.

Every input kind (camera images, each service, parameters) is driven with seeded random cases;
the node must neither die nor leave a request unanswered, answer every refusal with a reason,
and still give an output for every good frame and every odd but decodable one. The full run
(10,000 cases of each kind) is `python -m bench.fuzz_node`; the README has its figures.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NAMESPACE = '/mobius_fuzz_ci'
CASES = 60


def test_every_input_kind_leaves_the_node_alive_answering_and_publishing(
    start_node: Any, tiny_node: dict[str, Any]
) -> None:
    from bench.fuzz_node import KINDS, fuzz, totals

    def start() -> Any:
        node = start_node(
            namespace=NAMESPACE,
            **tiny_node,
        )
        assert node.wait_ready(timeout=120) is None, node.excerpt()
        return node

    results = fuzz(start, NAMESPACE, cases=CASES, seed=7, probe_every=20, timeout=30.0)
    report = {kind: asdict(counts) for kind, counts in results.items()}
    summary = totals(results)
    assert set(results) == set(KINDS)
    assert summary['cases'] == CASES * len(KINDS), report
    for key in ('crashes', 'unanswered', 'wrong_answers', 'good_frames_lost'):
        assert summary[key] == 0, (key, report)
    assert summary['decodable_frames_without_output'] == 0, report['images']['examples']
    images = results['images']
    assert images.decodable_frames > 0 and images.good_frames_probed >= CASES // 20, report
    # The cases reached both sides of each service: some refused, some accepted.
    for kind in ('set_vocabulary', 'segment', 'parameters', 'lifecycle'):
        assert results[kind].refused > 0 and results[kind].accepted > 0, (kind, report)
