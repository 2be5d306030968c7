"""Referring expressions of a rendered scene, and `resolve`, which reads one back.

Three kinds, each unambiguous in its scene (`resolve` finds exactly its target):
attribute ("the small blue diamond"), extreme ("the largest square", "the leftmost star") and
relation ("the star right of the triangle"). Extremes need a clear winner (area 1.5x the
runner-up, or a centre 8 % of the image side ahead); a relation's target must lie clearly on that
side of the anchor (offset 5 % of the side and more along that axis than across), and no other
candidate may lie on that side at all, so the loose reading names the same one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIZE_WORDS = ('small', 'large')
EXTREMES = ('largest', 'smallest', 'leftmost', 'rightmost', 'topmost', 'bottommost')
RELATIONS = ('left of', 'right of', 'above', 'below')
AREA_MARGIN = 1.5
POSITION_MARGIN = 0.08
RELATION_MARGIN = 0.05


def _value(inst, word: str) -> float:
    """Larger is more extreme for `word`."""
    x, y = inst.centre
    return {
        'largest': inst.area,
        'smallest': -inst.area,
        'leftmost': -x,
        'rightmost': x,
        'topmost': -y,
        'bottommost': y,
    }[word]


def _clear_winner(values: list[float], word: str, size: int) -> int | None:
    order = np.argsort(values)[::-1]
    if len(values) < 2:
        return None
    best, second = values[order[0]], values[order[1]]
    if word in ('largest', 'smallest'):
        a, b = abs(best), abs(second)
        ok = a >= AREA_MARGIN * b if word == 'largest' else b >= AREA_MARGIN * a
    else:
        ok = best - second >= POSITION_MARGIN * size
    return int(order[0]) if ok else None


def _offset(target, anchor, relation: str) -> tuple[float, float]:
    """(along, across): how far `target` lies on `relation`'s side of `anchor`, in pixels."""
    (tx, ty), (ax, ay) = target.centre, anchor.centre
    dx, dy = tx - ax, ty - ay
    along = {'left of': -dx, 'right of': dx, 'above': -dy, 'below': dy}[relation]
    across = abs(dy) if relation in ('left of', 'right of') else abs(dx)
    return along, across


def _describes(inst, words: Sequence[str]) -> bool:
    return all(w in (inst.shape, inst.colour, inst.size) for w in words)


def resolve(sentence: str, instances: Sequence, size: int) -> list[int]:
    """Indices of the instances `sentence` can mean (one for an unambiguous expression)."""
    words = sentence.lower().removeprefix('the ').split()
    text = ' '.join(words)
    for relation in RELATIONS:
        key = f' {relation} the '
        if key in f' {text} ':
            head, anchor_words = f' {text} '.split(key)
            anchors = [a for a in instances if _describes(a, anchor_words.split())]
            if len(anchors) != 1:
                return []
            cands = [
                i
                for i, c in enumerate(instances)
                if c is not anchors[0] and _describes(c, head.split())
            ]
            return [i for i in cands if _offset(instances[i], anchors[0], relation)[0] > 0]
    if words and words[0] in EXTREMES:
        cands = [i for i, c in enumerate(instances) if _describes(c, words[1:])]
        values = [_value(instances[i], words[0]) for i in cands]
        win = _clear_winner(values, words[0], size)
        return cands if win is None else [cands[win]]
    return [i for i, c in enumerate(instances) if _describes(c, words)]


def make_expressions(instances: Sequence, rng: np.random.Generator, size: int) -> list[dict]:
    """Up to one expression of each kind per instance, as {'sentence', 'target', 'kind'}."""
    out = []
    for t, inst in enumerate(instances):
        # attribute: the fewest words that name it alone, sometimes one more than needed
        for words in (
            [inst.shape],
            [inst.colour, inst.shape],
            [inst.size, inst.shape],
            [inst.size, inst.colour, inst.shape],
        ):
            if sum(_describes(c, words) for c in instances) == 1:
                if len(words) < 3 and rng.random() < 0.3:
                    words = [inst.size, inst.colour, inst.shape]
                out.append(
                    {'sentence': 'the ' + ' '.join(words), 'target': t, 'kind': 'attribute'}
                )
                break
        # extreme among its own shape
        same = [i for i, c in enumerate(instances) if c.shape == inst.shape]
        for word in rng.permutation(EXTREMES):
            values = [_value(instances[i], str(word)) for i in same]
            win = _clear_winner(values, str(word), size)
            if win is not None and same[win] == t:
                out.append(
                    {'sentence': f'the {word} {inst.shape}', 'target': t, 'kind': 'extreme'}
                )
                break
        # relation to an anchor whose shape is unique in the scene
        anchors = [
            a
            for a in instances
            if a is not inst and sum(c.shape == a.shape for c in instances) == 1
        ]
        made = False
        for a in rng.permutation(len(anchors)) if anchors else []:
            anchor = anchors[int(a)]
            for relation in rng.permutation(RELATIONS):
                along, across = _offset(inst, anchor, str(relation))
                if along < RELATION_MARGIN * size or along <= across:
                    continue
                for head in ([inst.shape], [inst.colour, inst.shape]):
                    sentence = f'the {" ".join(head)} {relation} the {anchor.shape}'
                    if resolve(sentence, instances, size) == [t]:
                        out.append({'sentence': sentence, 'target': t, 'kind': 'relation'})
                        made = True
                        break
                if made:
                    break
            if made:
                break
    return out
