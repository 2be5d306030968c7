"""Referring expressions for synthetic scenes, each checked to pick out exactly one instance.

An expression is a predicate over the scene's instances; it is kept only if exactly the target
satisfies it. Three kinds: attributes ("the small red circle"), extremes ("the leftmost star"),
and relations to a uniquely described anchor ("the blue triangle left of the red circle").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mobius_ros.train.data.synthetic import Instance, SynthConfig

# (size, colour, shape); None = not mentioned
Description = tuple[str | None, str | None, str]
_DESCRIPTION_FORMS = ((False, False), (False, True), (True, False), (True, True))
_RELATIONS = ('left of', 'right of', 'above', 'below')
_MARGIN = 0.05  # of the image width: spatial words need a visible difference


def _matches(inst: Instance, d: Description) -> bool:
    size, colour, shape = d
    return (
        inst.shape == shape
        and (size is None or inst.size == size)
        and (colour is None or inst.colour == colour)
    )


def _descriptions(inst: Instance) -> list[Description]:
    return [
        (inst.size if with_size else None, inst.colour if with_colour else None, inst.shape)
        for with_size, with_colour in _DESCRIPTION_FORMS
    ]


def _relation_holds(
    inst: Instance, anchor: Instance, relation: str, margin: float, *, dominant: bool = True
) -> bool:
    """Whether `inst` is `relation` the anchor: beyond `margin` along the relation's axis and,
    with `dominant`, more along that axis than across it (the clear case)."""
    (x, y), (ax, ay) = inst.centre, anchor.centre
    dx, dy = ax - x, ay - y  # > 0: the anchor is right of / below the instance
    if relation in ('left of', 'right of'):
        signed = dx if relation == 'left of' else -dx
        return signed > margin and (not dominant or abs(dx) > abs(dy))
    signed = dy if relation == 'above' else -dy
    return signed > margin and (not dominant or abs(dy) > abs(dx))


def _extreme_key(word: str) -> Callable[[Instance], float]:
    keys: dict[str, Callable[[Instance], float]] = {
        'leftmost': lambda i: i.centre[0],
        'rightmost': lambda i: -i.centre[0],
        'topmost': lambda i: i.centre[1],
        'bottommost': lambda i: -i.centre[1],
        'smallest': lambda i: float(i.area),
        'largest': lambda i: -float(i.area),
    }
    return keys[word]


def _candidates(
    instances: Sequence[Instance], t: int, margin: float
) -> dict[str, list[tuple[Description, str, Description | None]]]:
    """Per kind, (target description, relation or extreme word, anchor description)."""
    target = instances[t]
    unique = [d for d in _descriptions(target) if sum(_matches(i, d) for i in instances) == 1]
    out: dict[str, list[tuple[Description, str, Description | None]]] = {
        'attribute': [(d, '', None) for d in unique]
    }
    out['extreme'] = []
    for d in _descriptions(target)[:2]:
        group = [i for i in instances if _matches(i, d)]
        if len(group) < 2:
            continue
        for word in ('leftmost', 'rightmost', 'topmost', 'bottommost', 'smallest', 'largest'):
            key = _extreme_key(word)
            others = sorted(key(i) for i in group if i is not target)
            gap = margin if word not in ('smallest', 'largest') else 0.5 * abs(key(target))
            if key(target) < others[0] - gap:
                out['extreme'].append((d, word, None))
    out['relation'] = []
    for a, anchor in enumerate(instances):
        if a == t:
            continue
        anchor_ds = [
            d for d in _descriptions(anchor) if sum(_matches(i, d) for i in instances) == 1
        ]
        if not anchor_ds:
            continue
        for relation in _RELATIONS:
            if not _relation_holds(target, anchor, relation, margin):
                continue
            for d in _descriptions(target):
                group = [i for j, i in enumerate(instances) if j != a and _matches(i, d)]
                # Unique in the loose reading too: a star right of and well below the anchor
                # is also "right of" it to a reader, so it must not be a second candidate.
                loose = sum(_relation_holds(i, anchor, relation, margin, dominant=False)
                            for i in group)  # fmt: skip
                if loose == 1:
                    out['relation'].append((d, relation, anchor_ds[0]))
                    break
    return {kind: c for kind, c in out.items() if c}


def describe(d: Description, colour_words: dict[str, str]) -> str:
    """Text of a description, e.g. ('small', 'red', 'circle') -> 'small red circle'."""
    size, colour, shape = d
    words = [size, colour_words.get(colour, colour) if colour else None, shape]
    return ' '.join(w for w in words if w)


def referring_expressions(
    rng: np.random.Generator,
    instances: Sequence[Instance],
    *,
    split: str,
    config: SynthConfig,
) -> list[dict]:
    """One unambiguous expression per instance that has one.

    Returns dicts {'target': instance index, 'sentence': str, 'kind': 'attribute' | 'extreme' |
    'relation', 'held_out': list of 'synonym' / 'combination' (empty outside the test split)}.
    """
    from mobius_ros.train.data.synthetic import HELD_OUT_SYNONYMS

    margin = _MARGIN * config.image_hw[1]
    expressions = []
    for t, target in enumerate(instances):
        candidates = _candidates(instances, t, margin)
        if not candidates:
            continue
        kinds = sorted(candidates)
        kind = kinds[int(rng.integers(len(kinds)))]
        d, word, anchor_d = candidates[kind][int(rng.integers(len(candidates[kind])))]
        colour_words: dict[str, str] = {}
        if split == 'test' and rng.random() < config.synonym_probability:
            colour_words = dict(HELD_OUT_SYNONYMS)
        if kind == 'attribute':
            sentence = f'the {describe(d, colour_words)}'
        elif kind == 'extreme':
            sentence = f'the {word} {describe(d, colour_words)}'
        else:
            assert anchor_d is not None
            sentence = (
                f'the {describe(d, colour_words)} {word} the {describe(anchor_d, colour_words)}'
            )
        mentioned = {c for c in (d[1], anchor_d[1] if anchor_d else None) if c}
        held_out = []
        if any(c in colour_words for c in mentioned):
            held_out.append('synonym')
        if target.held_out:
            held_out.append('combination')
        expressions.append({'target': t, 'sentence': sentence, 'kind': kind, 'held_out': held_out})
    return expressions
