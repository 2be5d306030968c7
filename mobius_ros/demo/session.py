"""The demo script: node up, vocabulary, camera, referring query, 'object' mode, node down.

`run_demo` returns the summary that `mobius demo` writes to `summary.json`; any failure raises
`DemoError` with a message fit for the terminal (and the node's log tail when the node is to
blame). The steps, in order:

1. build (or find) the interface packages and start the node on a private localhost graph;
2. `set_vocabulary` with the demo shapes, then the camera plays the first half of the frames;
   a quarter of the way in, a latency budget is set through the parameter service (one under
   the node's feasible floor first, which it refuses), and stays for the rest of the run;
3. `segment` with a referring expression of a synthetic scene (and a one-shot colour
   vocabulary), scored against the scene's ground-truth mask;
4. `set_vocabulary(agnostic=True)` ("object" mode), the camera plays the second half;
5. `get_vocabulary`, the node's last diagnostics, lifecycle deactivate + shutdown, SIGINT;
   the summary accounts for the budget and for every frame the node did not answer, and
   `latency.png` plots latency against the budget.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.demo import report
from mobius_ros.demo.budget import budget_account, dropped_account, fresh_diagnostics, set_budget
from mobius_ros.demo.camera import (
    DEMO_VOCABULARY,
    DemoFrame,
    colour_phrases,
    demo_frames,
    referring_query,
)
from mobius_ros.demo.launcher import NodeProcess, private_graph, start_node
from mobius_ros.demo.steps import Session, ask, play, refer_all, vocabulary_reply

NAMESPACE = '/mobius_demo'
DEFAULT_INPUT_SIZE = (160, 224)  # the demo model's training scale (recipe 'demo': 160 px)
# Outputs that come once per segmentation message.
COMPANIONS = ('detections', 'instance_mask', 'debug_image')


class DemoError(RuntimeError):
    """The demo could not run to the end; the message says why and what to look at."""


@dataclass(frozen=True)
class DemoOptions:
    """What `mobius demo` was asked for (CLI flags, parsed once)."""

    out: Path
    frames: int = 24
    checkpoint: str | None = None
    backend: str = 'onnxruntime'
    budget_ms: float | None = None
    input_size: tuple[int, int] | None = None
    rate_hz: float = 2.0
    score_threshold: float = 0.3
    engine_dir: str = '~/.cache/mobius_ros/engines'
    cache_dir: str = '~/.cache/mobius_ros/text'
    domain_id: int | None = None
    seed: int = 0
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f'--frames must be at least 2 (one per mode), got {self.frames}')
        if not 0.1 <= self.rate_hz <= 30.0:
            raise ValueError(f'--rate must be in 0.1..30 Hz, got {self.rate_hz}')
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ValueError(f'--budget-ms must be > 0, got {self.budget_ms}')


def resolve_input_size(options: DemoOptions) -> tuple[int, int]:
    """The letterbox canvas: as asked, else the export folder's own, else the demo scale."""
    if options.input_size is not None:
        return options.input_size
    from mobius_ros.common.errors import ModelLoadError
    from mobius_ros.runtime.backends import resolve_checkpoint

    try:
        source = resolve_checkpoint(options.checkpoint)
    except ModelLoadError as error:
        raise DemoError(str(error)) from error
    meta = source / 'model.json'
    if source.is_dir() and meta.is_file():
        h, w = json.loads(meta.read_text())['input_size']
        return int(h), int(w)
    return DEFAULT_INPUT_SIZE


def _interfaces() -> dict[str, str]:
    """Make vision_msgs and mobius_ros_msgs importable here; the node's environment."""
    try:
        import mobius_ros_msgs.msg  # noqa: F401
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        pass
    else:
        return dict(os.environ)  # a sourced ROS workspace already has them
    from mobius_ros.ros.interfaces import InterfaceBuildError, build_interfaces

    try:
        install = build_interfaces()
    except InterfaceBuildError as error:
        raise DemoError(str(error)) from error
    install.activate()
    return install.environment()


def run_demo(options: DemoOptions, *, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to `<out>/summary.json`).

    Raises:
        DemoError: the node did not start, a service failed, or the node did not stop cleanly.
    """
    started = time.monotonic()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    graph = private_graph(options.domain_id)
    os.environ.update(graph)  # before rclpy initialises in this process
    input_size = resolve_input_size(options)
    echo(f'mobius demo: output in {out.resolve()}')
    echo('interfaces: building vision_msgs and mobius_ros_msgs if needed (cached) ...')
    environment = {**_interfaces(), **graph}
    frames = demo_frames(options.frames, seed=options.seed)
    query_frame, expression = referring_query(frames, seed=options.seed)
    parameters: dict[str, Any] = {
        'checkpoint': options.checkpoint or '',
        'backend': options.backend,
        'input_height': input_size[0],
        'input_width': input_size[1],
        'vocabulary': list(DEMO_VOCABULARY),
        'score_threshold': options.score_threshold,
        'max_detections': 20,
        'latency_budget_ms': 0.0,  # set partway through, through the parameter service
        'publish_instance_masks': True,
        'engine_dir': options.engine_dir,
        'cache_dir': options.cache_dir,
    }
    model = options.checkpoint or 'the bundled demo model (mobius_ros/assets/demo)'
    echo(
        f'node: {model} on {options.backend}, canvas {input_size[0]}x{input_size[1]},'
        f' ROS_DOMAIN_ID={graph["ROS_DOMAIN_ID"]} (localhost only); starting ...'
    )
    node = start_node(
        environment=environment,
        parameters=parameters,
        namespace=NAMESPACE,
        log_path=out / 'node.log',
    )
    try:
        summary = _with_node(options, node, frames, query_frame, expression, echo)
    except BaseException:
        node.stop()
        raise
    summary.update(
        model={
            'checkpoint': options.checkpoint,
            'backend': options.backend,
            'input_size': list(input_size),
        },
        ros={'domain_id': int(graph['ROS_DOMAIN_ID']), 'namespace': NAMESPACE},
        seconds=round(time.monotonic() - started, 1),
    )
    (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    return summary


def _with_node(
    options: DemoOptions,
    node: NodeProcess,
    frames: list[DemoFrame],
    query_frame: DemoFrame,
    expression: dict,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    reason = node.wait_ready(options.start_timeout_s)
    if reason is not None:
        model = options.checkpoint or 'the bundled demo model'
        raise DemoError(f'{reason} ({model}); node log {node.log_path}:\n{node.excerpt()}')
    echo(f'node: active (log {node.log_path})')
    from mobius_ros.demo.client import DemoClient, ServiceError
    from mobius_ros.demo.recorder import SessionRecorder

    session = Session(Path(options.out), echo)
    recorder = SessionRecorder(Path(options.out) / 'session_mcap')
    client = DemoClient(NAMESPACE, recorder, on_message=session.on_message)
    try:
        if not client.wait_connected(timeout=30.0):
            raise DemoError(
                f'the node and the demo client did not discover each other in 30 s'
                f' (ROS_DOMAIN_ID {os.environ["ROS_DOMAIN_ID"]})'
            )
        summary = _script(options, client, session, frames, query_frame, expression, node)
    except ServiceError as error:
        raise DemoError(f'{error}; node log {node.log_path}:\n{node.excerpt()}') from error
    finally:
        client.close()
        bag = recorder.close(keep=True)
    summary['recording'] = {'path': str(bag), 'messages': dict(recorder.counts)}
    return summary


def _script(
    options: DemoOptions,
    client: Any,
    session: Session,
    frames: list[DemoFrame],
    query_frame: DemoFrame,
    expression: dict,
    node: NodeProcess,
) -> dict[str, Any]:
    from lifecycle_msgs.msg import Transition

    echo = session.echo
    reply = client.call(
        'mobius_ros_msgs/srv/SetVocabulary',
        'set_vocabulary',
        client.request('mobius_ros_msgs/srv/SetVocabulary', phrases=list(DEMO_VOCABULARY)),
    )
    vocabulary = vocabulary_reply(reply)
    echo(f'set_vocabulary: {reply.message} (version {reply.vocabulary_version})')
    half = len(frames) // 2
    first = max(1, half // 2)  # unbudgeted frames: what the budget is chosen from
    indexed = list(enumerate(frames))
    echo(report.HEADER)
    play(client, session, indexed[:first], options.rate_hz)
    budget = set_budget(client, session, options.budget_ms, from_frame=first)
    play(client, session, indexed[first:half], options.rate_hz)

    referring = ask(client, session, query_frame, 'refer', expression=expression['sentence'])
    referring['expression_kind'] = expression['kind']
    prediction = referring.pop('prediction', None)
    if prediction is not None and query_frame.scene is not None:
        target = query_frame.scene.instances[expression['target']].mask
        best = prediction.masks[0] if len(prediction) else np.zeros_like(target)
        referring['iou_with_target'] = round(report.mask_iou(best, target), 4)
        echo(
            f'       referring "{expression["sentence"]}": IoU with the true instance'
            f' {referring["iou_with_target"]:.2f}'
        )
    referring['every_expression'] = refer_all(client, session, frames)
    one_shot = ask(
        client, session, query_frame, 'oneshot', phrases=colour_phrases(query_frame.scene)
    )
    one_shot.pop('prediction', None)

    reply = client.call(
        'mobius_ros_msgs/srv/SetVocabulary',
        'set_vocabulary',
        client.request('mobius_ros_msgs/srv/SetVocabulary', agnostic=True),
    )
    agnostic = vocabulary_reply(reply)
    echo(f'set_vocabulary(agnostic): {reply.message} (version {reply.vocabulary_version})')
    play(client, session, indexed[half:], options.rate_hz)

    # Reliable outputs that Fast DDS had to repair (its heartbeat period is seconds, and the
    # big segmentation and debug images fill the shared-memory port first) arrive late: wait
    # for every frame's detections, label image and debug image before counting.
    def outputs_complete() -> bool:
        n = client.received.count('segmentation')
        return all(client.received.count(k) >= n for k in COMPANIONS)

    client.wait(outputs_complete, timeout=10.0)
    final = client.call(
        'mobius_ros_msgs/srv/GetVocabulary',
        'get_vocabulary',
        client.request('mobius_ros_msgs/srv/GetVocabulary'),
    )
    diagnostics = fresh_diagnostics(client)

    echo('node: lifecycle deactivate + shutdown')
    lifecycle = {
        'deactivate': client.change_state(Transition.TRANSITION_DEACTIVATE),
        'shutdown': client.change_state(Transition.TRANSITION_INACTIVE_SHUTDOWN),
    }
    code = node.stop()
    if code != 0:
        raise DemoError(
            f'the node exited with code {code}; log {node.log_path}:\n{node.excerpt()}'
        )
    records = sorted(session.records, key=lambda r: r['frame'])
    latencies = [r['latency_ms'] for r in records]
    dropped = dropped_account(session.sent, records, diagnostics)
    budget = budget_account(records, budget)
    plotted = report.plot_latency(records, Path(options.out) / 'latency.png')
    echo(_budget_line(budget))
    echo(f'dropped: {dropped["count"]} of {len(session.sent)} frames; {dropped["explanation"]}')
    return {
        'ok': True,
        'frames': {
            'published': len(session.sent),
            'processed': len(records),
            'dropped': dropped['count'],
            'dropped_why': dropped,
            'by_task': {
                t: sum(r['task'] == t for r in records) for t in ('vocabulary', 'agnostic')
            },
        },
        'latency_ms': report.latency_stats(latencies),
        'inference_ms': report.latency_stats([r['inference_ms'] for r in records]),
        'budget': budget,
        'plot': 'latency.png' if plotted else None,
        'vocabulary': vocabulary,
        'referring': referring,
        'one_shot': one_shot,
        'agnostic': agnostic,
        'final_vocabulary': {
            'phrases': list(final.phrases),
            'task': final.task,
            'vocabulary_version': int(final.vocabulary_version),
        },
        'received': {key: len(v) for key, v in client.received.messages.items()},
        'diagnostics': diagnostics,
        'lifecycle': lifecycle,
        'node_exit_code': code,
        'per_frame': records,
    }


def _budget_line(budget: dict[str, Any]) -> str:
    if not budget['accepted']:
        return f'budget: {budget["budget_ms"]:.1f} ms refused ({budget["reason"]})'
    kept = budget['mean_queries_kept_last_layer']
    return (
        f'budget: {budget["budget_ms"]:.1f} ms from frame {budget["from_frame"]}, met on'
        f' {budget["met"]}/{budget["frames"]} frames (model time p95'
        f' {budget["inference_p95_ms"]} ms); queries kept after the last layer'
        f' {kept["unbudgeted"]} without it, {kept["budgeted"]} with it'
    )
