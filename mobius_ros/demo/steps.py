"""The steps of a demo session: playing frames, asking the node, turning answers into files.

`Session` keeps what one run saw (frames by stamp with the latency budget in force when each was
sent, one record per processed frame) and writes an overlay for each; `play` is the camera, `ask`
one `segment` service call, `set_budget` the latency budget set through the parameter service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mobius_ros.demo import report
from mobius_ros.demo.camera import DemoFrame


class Session:
    """State of one run: frames by stamp, per-frame records, overlays written."""

    def __init__(self, out: Path, echo: Callable[[str], None]) -> None:
        # The budget the node has accepted; frames sent from now on are processed under it.
        self.budget_ms: float | None = None
        self.echo = echo
        self.overlays = out / 'overlays'
        self.overlays.mkdir(parents=True, exist_ok=True)
        for old in self.overlays.glob('*.png'):
            old.unlink()  # a rerun must not leave the previous session's pictures behind
        self.sent: dict[tuple[int, int], tuple[int, DemoFrame, float | None]] = {}
        self.records: list[dict[str, Any]] = []

    def on_message(self, key: str, msg: Any) -> None:
        if key != 'segmentation':
            return
        from mobius_ros.demo.client import stamp_key

        found = self.sent.get(stamp_key(msg.header))
        if found is None:
            return
        index, frame, budget = found
        prediction = report.prediction_from_message(msg)
        self.echo(
            report.table_line(
                index,
                frame.name,
                prediction,
                latency_ms=msg.latency_ms,
                inference_ms=msg.inference_ms,
                budget_ms=budget,
            )
        )
        name = f'{index:03d}_{frame.name}.png'
        self.write_overlay(name, frame.image, prediction)
        self.records.append(_record(index, frame, prediction, msg, budget, name))

    def write_overlay(self, name: str, image: np.ndarray, prediction: Any) -> None:
        from mobius_ros.runtime.overlay import draw_prediction

        picture = draw_prediction(image, prediction)
        cv2.imwrite(str(self.overlays / name), np.ascontiguousarray(picture[..., ::-1]))


def _record(
    index: int, frame: DemoFrame, prediction: Any, msg: Any, budget: float | None, overlay: str
) -> dict[str, Any]:
    return {
        'frame': index,
        'source': frame.name,
        'kind': frame.kind,
        'task': prediction.task.value,
        'objects': [
            {'phrase': label, 'score': round(float(score), 4)}
            for label, score in zip(prediction.labels, prediction.scores)
        ],
        'latency_ms': round(float(msg.latency_ms), 2),
        'inference_ms': round(float(msg.inference_ms), 2),
        'queries_kept': list(prediction.queries_kept),
        'budget_ms': budget,
        'budget_met': report.budget_met(float(msg.inference_ms), budget),
        'overlay': f'overlays/{overlay}',
    }


def play(
    client: Any, session: Session, frames: list[tuple[int, DemoFrame]], rate_hz: float
) -> int:
    """Publish `frames` at `rate_hz`, then wait for the last one's output; how many answered."""
    if not frames:
        return 0
    start = time.monotonic()
    for k, (index, frame) in enumerate(frames):
        client.wait(lambda k=k: time.monotonic() >= start + k / rate_hz, timeout=1 / rate_hz + 1)
        session.sent[client.publish_image(frame.image)] = (index, frame, session.budget_ms)
    last = max(index for index, _ in frames)
    answered = {r['frame'] for r in session.records}
    # The node keeps only the newest frame, so once the last one is answered nothing is pending.
    client.wait(lambda: last in {r['frame'] for r in session.records}, timeout=30.0)
    return len({r['frame'] for r in session.records} - answered)


def vocabulary_reply(reply: Any) -> dict[str, Any]:
    return {
        'success': bool(reply.success),
        'message': reply.message,
        'phrases': list(reply.phrases),
        'vocabulary_version': int(reply.vocabulary_version),
        'task': reply.task,
        'encode_ms': round(float(reply.encode_ms), 2),
        'cache_hits': int(reply.cache_hits),
        'encoded': int(reply.encoded),
    }


def ask(client: Any, session: Session, frame: DemoFrame, label: str, **query: Any) -> dict:
    """One `segment` call on `frame`'s image; prints its line, writes its overlay."""
    request = client.request('mobius_ros_msgs/srv/Segment', **query)
    request.image = client.image_message(frame.image)
    reply = client.call('mobius_ros_msgs/srv/Segment', 'segment', request, timeout=120.0)
    answer: dict[str, Any] = {
        'frame': frame.name,
        **query,
        'answered': True,
        'success': bool(reply.success),
        'message': reply.message,
    }
    if not reply.success:
        session.echo(f'{label:>7}  {frame.name:<11} refused: {reply.message}')
        return answer
    prediction = report.prediction_from_message(reply.result)
    session.echo(
        report.table_line(
            label,
            frame.name,
            prediction,
            latency_ms=reply.result.latency_ms,
            inference_ms=reply.result.inference_ms,
            budget_ms=session.budget_ms,
        )
    )
    name = f'{label}_{frame.name}.png'
    session.write_overlay(name, frame.image, prediction)
    answer.update(
        instances=len(prediction),
        objects=[
            {'phrase': p, 'score': round(float(s), 4)}
            for p, s in zip(prediction.labels, prediction.scores)
        ],
        latency_ms=round(float(reply.result.latency_ms), 2),
        queries_kept=list(prediction.queries_kept),
        overlay=f'overlays/{name}',
        prediction=prediction,
    )
    return answer


def refer_all(client: Any, session: Session, frames: list[DemoFrame]) -> dict[str, Any]:
    """Every referring expression of the played synthetic scenes through `segment`, each
    scored against its scene's true mask: how often the node finds the right instance (IoU >=
    0.5), overall and per kind of expression. One scripted query says little about a model
    that is right about three times in four; this says how often."""
    found: dict[str, list[bool]] = {}
    for frame in frames:
        if frame.scene is None:
            continue
        for expression in frame.scene.expressions:
            request = client.request(
                'mobius_ros_msgs/srv/Segment', expression=expression['sentence']
            )
            request.image = client.image_message(frame.image)
            reply = client.call('mobius_ros_msgs/srv/Segment', 'segment', request, timeout=120.0)
            target = frame.scene.instances[expression['target']].mask
            iou = 0.0
            if reply.success:
                prediction = report.prediction_from_message(reply.result)
                if len(prediction):
                    iou = report.mask_iou(prediction.masks[0], target)
            found.setdefault(expression['kind'], []).append(iou >= 0.5)
    hits = [h for kind in found.values() for h in kind]
    account = {
        'scenes': sum(f.scene is not None for f in frames),
        'expressions': len(hits),
        'found': sum(hits),
        'p_at_0_5': round(100.0 * sum(hits) / len(hits), 1) if hits else None,
        'by_kind': {
            kind: {'expressions': len(v), 'p_at_0_5': round(100.0 * sum(v) / len(v), 1)}
            for kind, v in sorted(found.items())
        },
    }
    kinds = ', '.join(f'{k} {v["p_at_0_5"]:.0f} %' for k, v in account['by_kind'].items())
    session.echo(
        f'       referring, every expression of the {account["scenes"]} played scenes:'
        f' {account["found"]}/{account["expressions"]} found (P@0.5'
        f' {account["p_at_0_5"]} %; {kinds})'
    )
    return account


def last_diagnostics(arrays: list[Any]) -> dict[str, str]:
    for array in reversed(arrays):
        for status in array.status:
            if 'segmentation' in status.name:
                return {'message': status.message, **{kv.key: kv.value for kv in status.values}}
    return {}
