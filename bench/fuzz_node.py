"""Fuzz a running `mobius` node with every input kind and count what it survives.

Drives seeded random cases of each kind against the node over its real ROS 2 graph:

- `images`: raw `sensor_msgs/Image` on the camera topic with every field bent (encodings known
  and unknown, zero / huge / inconsistent sizes and steps, short and long data, big-endian);
  about a third are odd but decodable (2x2, 1x500, mono16, bgra8, ...) and must give an output;
- `set_vocabulary`, `get_vocabulary`, `segment`, `enable`: requests with random phrases (blank,
  overlong, control characters, unicode, duplicates, too many), flags, images (raw and
  compressed, valid and broken), thresholds (NaN, inf, negative, > 1);
- `parameters`: `set_parameters` with every declared name and unknown ones, every parameter type
  and edge values (NaN, inf, out of range, wrong type, empty lists); what was accepted is
  checked by `get_parameters` and set back, so the node is never left misconfigured.

After every `--probe-every` cases a good camera frame is published and its output awaited (the
processing switch and the parameters are restored first): a good frame without an output within
`--probe-timeout` is lost. Counted per kind: cases, crashes (the node process died; it is
restarted and the run goes on), unanswered requests (no reply within `--timeout`), refused
requests (answered with success false and a reason), accepted ones, good frames probed and lost,
decodable fuzz frames without an output, and the node's RSS before and after. Writes
`bench/results/fuzz_node.json`:

    python -m bench.fuzz_node                          # 10,000 cases of each kind
    python -m bench.fuzz_node --cases 200 --output fuzz_node_small

The CI test (test/ros/test_fuzz_node.py) runs the same driver with a small count.
"""

from __future__ import annotations

import argparse
import math
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

KINDS = (
    'images', 'set_vocabulary', 'get_vocabulary', 'segment', 'enable', 'parameters', 'lifecycle',
)  # fmt: skip
NAMESPACE = '/mobius_fuzz'
GOOD_SIZE = (48, 80)  # height, width of the probe frames

RAW_ENCODINGS = (
    'rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16', '8UC1', '8UC3', '8UC4', '16UC1',
    '32FC1', 'bayer_rggb8', 'yuv422', 'nv21', 'jpeg', 'RGB8', 'rgb8 ', '', 'rgb16', '64FC1',
    'ü', 'rgb8\x00', 'x' * 300,
)  # fmt: skip
# Encodings the node decodes, with bytes per pixel (what the odd-but-valid cases use).
DECODABLE = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2}


# Cases -----------------------------------------------------------------------------------------


@dataclass
class ImageCase:
    """Fields of one sensor_msgs/Image; `decodable` when the node must give an output."""

    height: int
    width: int
    encoding: str
    step: int
    data: bytes
    is_bigendian: int = 0
    decodable: bool = False

    def message(self, stamp: int) -> Any:
        from sensor_msgs.msg import Image

        msg = Image(
            height=self.height, width=self.width, encoding=self.encoding, step=self.step,
            is_bigendian=self.is_bigendian, data=self.data,
        )  # fmt: skip
        msg.header.stamp.sec = stamp
        msg.header.frame_id = 'fuzz'
        return msg


def _odd_size(rng: np.random.Generator) -> tuple[int, int]:
    choice = rng.integers(6)
    if choice == 0:
        return 2, 2
    if choice == 1:
        return int(rng.integers(2, 4)), int(rng.integers(200, 600))  # a line (1 px is refused)
    if choice == 2:
        return int(rng.integers(200, 600)), 2  # a column
    if choice == 3:
        return int(rng.integers(300, 720)), int(rng.integers(300, 1280))  # camera-sized
    return int(rng.integers(3, 120)), int(rng.integers(3, 160))


def image_case(rng: np.random.Generator) -> ImageCase:
    """One random camera message: a third odd but decodable, the rest broken in one field or
    several."""
    if rng.random() < 1 / 3:
        encoding = str(rng.choice(list(DECODABLE)))
        height, width = _odd_size(rng)
        step = width * DECODABLE[encoding] + int(rng.choice([0, 0, 0, 1, 7]))  # row padding
        data = rng.integers(0, 256, height * step, dtype=np.uint8).tobytes()
        return ImageCase(height, width, encoding, step, data, decodable=True)
    encoding = str(rng.choice(RAW_ENCODINGS))
    sizes = [0, 1, 2, 3, 17, 64, 481, 4096, 65535, 2**31 - 1, 2**32 - 1]
    height = int(rng.choice(sizes)) if rng.random() < 0.5 else int(rng.integers(0, 200))
    width = int(rng.choice(sizes)) if rng.random() < 0.5 else int(rng.integers(0, 200))
    channels = DECODABLE.get(encoding, int(rng.integers(1, 5)))
    natural = min(width * channels, 2**32 - 1)
    step = int(rng.choice([natural, 0, natural - 1, natural + 1, 2**32 - 1, rng.integers(0, 999)]))
    step = min(max(step, 0), 2**32 - 1)  # a uint32 field
    length = int(
        rng.choice([0, 1, 3, 77, 1000, min(height * step, 200_000), min(height * natural, 10)])
    )
    data = rng.integers(0, 256, max(length, 0), dtype=np.uint8).tobytes()
    return ImageCase(height, width, encoding, step, data, is_bigendian=int(rng.integers(2)))


_ALPHABET = string.ascii_letters + string.digits + ' \t\n_-.,;:!?/\\\'"()[]{}'
_WEIRD = (
    '', ' ', '\t\n', '\x00', '\x07bell', 'object', 'red mug', 'ü ñ 漢字 🤖', 'a' * 201, 'circle',
    'the star right of the triangle', '\u202e\u200b', '\ud7ff', 'null',
)  # fmt: skip


def phrase(rng: np.random.Generator) -> str:
    if rng.random() < 0.4:
        return str(rng.choice(_WEIRD))
    length = int(rng.choice([1, 3, 8, 20, 60, 199, 200, 500]))
    return ''.join(rng.choice(list(_ALPHABET), size=length))


def phrases(rng: np.random.Generator) -> list[str]:
    count = int(rng.choice([0, 1, 1, 2, 3, 5, 20, 257, 300]))
    if count > 30:  # many phrases: mostly short distinct ones (too many is the fault)
        return [f'thing {i}' for i in range(count)]
    return [phrase(rng) for _ in range(count)]


def set_vocabulary_request(rng: np.random.Generator) -> Any:
    from mobius_ros_msgs.srv import SetVocabulary

    return SetVocabulary.Request(
        phrases=phrases(rng), append=bool(rng.random() < 0.3), agnostic=bool(rng.random() < 0.15)
    )


def compressed_data(rng: np.random.Generator) -> tuple[str, bytes]:
    """A CompressedImage format and payload: valid PNG / JPEG, cut short, garbage or empty."""
    import cv2

    picture = rng.integers(0, 256, (int(rng.integers(1, 90)), int(rng.integers(1, 90)), 3))
    ok, encoded = cv2.imencode(str(rng.choice(['.png', '.jpg'])), picture.astype(np.uint8))
    payload = encoded.tobytes() if ok else b''
    choice = rng.integers(4)
    if choice == 1:
        payload = payload[: int(rng.integers(0, max(len(payload), 1)))]
    elif choice == 2:
        payload = rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
    fmt = str(rng.choice(['png', 'jpeg', 'rgb8; jpeg compressed bgr8', '', 'tiff', '💥']))
    return fmt, payload


def segment_request(rng: np.random.Generator, stamp: int) -> Any:
    from mobius_ros_msgs.srv import Segment

    request = Segment.Request()
    which = rng.integers(3)
    if which == 0:
        request.image = image_case(rng).message(stamp)
    elif which == 1:
        request.compressed_image.format, data = compressed_data(rng)
        request.compressed_image.data = data
        request.compressed_image.header.stamp.sec = stamp
    # which == 2: empty image fields, the node's latest frame
    ask = rng.integers(5)
    if ask == 0:
        request.phrases = phrases(rng)
    elif ask == 1:
        request.agnostic = True
    elif ask == 2:
        request.expression = phrase(rng)
    elif ask == 3:  # more than one at once: refused
        request.phrases, request.expression = phrases(rng), phrase(rng)
        request.agnostic = bool(rng.random() < 0.5)
    request.score_threshold = float(
        rng.choice([-1.0, 0.0, 0.3, 1.0, 1.5, -7.0, math.nan, math.inf, -math.inf, 1e38])
    )
    return request


def enable_request(rng: np.random.Generator) -> Any:
    from std_srvs.srv import SetBool

    return SetBool.Request(data=bool(rng.random() < 0.5))


def get_vocabulary_request(rng: np.random.Generator) -> Any:
    from mobius_ros_msgs.srv import GetVocabulary

    return GetVocabulary.Request()


_UNKNOWN_NAMES = ('', 'nope', 'pruning', 'pruning.', 'vocabulary.0', 'use_sim_timez', 'ü', '..')


def parameter_value(rng: np.random.Generator) -> Any:
    """A ParameterValue of a random type with an edge-case value."""
    from rcl_interfaces.msg import ParameterType, ParameterValue

    kind = int(rng.integers(10))
    value = ParameterValue(type=kind)
    if kind == ParameterType.PARAMETER_BOOL:
        value.bool_value = bool(rng.random() < 0.5)
    elif kind == ParameterType.PARAMETER_INTEGER:
        edges = [0, 1, -1, 31, 32, 64, 100, 1001, 2**63 - 1, -(2**63)]
        value.integer_value = int(rng.choice(edges))
    elif kind == ParameterType.PARAMETER_DOUBLE:
        value.double_value = float(
            rng.choice([0.0, 0.05, 0.2, 0.5, 1.0, -0.1, 1.1, 1e9, math.nan, math.inf, -math.inf])
        )
    elif kind == ParameterType.PARAMETER_STRING:
        value.string_value = str(
            rng.choice(['', 'sigmoid', 'none', 'agnostic', 'vocabulary', 'exponential', 'x' * 999,
                        'onnxruntime', 'ü', '\x00'])
        )  # fmt: skip
    elif kind == ParameterType.PARAMETER_BYTE_ARRAY:
        value.byte_array_value = [bytes([b]) for b in rng.integers(0, 256, int(rng.integers(4)))]
    elif kind == ParameterType.PARAMETER_BOOL_ARRAY:
        value.bool_array_value = [bool(b) for b in rng.integers(0, 2, int(rng.integers(4)))]
    elif kind == ParameterType.PARAMETER_INTEGER_ARRAY:
        value.integer_array_value = [int(b) for b in rng.integers(-5, 5, int(rng.integers(4)))]
    elif kind == ParameterType.PARAMETER_DOUBLE_ARRAY:
        value.double_array_value = [float(b) for b in rng.normal(size=int(rng.integers(4)))]
    elif kind == ParameterType.PARAMETER_STRING_ARRAY:
        value.string_array_value = phrases(rng)[:40]
    return value


def parameter_request(rng: np.random.Generator) -> Any:
    from rcl_interfaces.msg import Parameter
    from rcl_interfaces.srv import SetParameters

    from mobius_ros.ros.params import SPECS

    names = [*SPECS, *_UNKNOWN_NAMES]
    count = int(rng.choice([1, 1, 1, 2, 3]))
    return SetParameters.Request(
        parameters=[
            Parameter(name=str(rng.choice(names)), value=parameter_value(rng))
            for _ in range(count)
        ]
    )


# lifecycle_msgs ids: transitions a client may ask for, and the primary state each leads to.
# The shutdown transitions (5, 6, 7 and the label "shutdown") are left out: they finalize the
# node by design, which ends a run rather than tests one.
GOAL_STATE = {1: 2, 2: 1, 3: 3, 4: 2}  # configure, cleanup, activate, deactivate
FROM_STATE = {1: 1, 2: 2, 3: 2, 4: 3}  # the one primary state each is valid from
LABELS = {'configure': 1, 'cleanup': 2, 'activate': 3, 'deactivate': 4}
_SHUTDOWN_IDS = frozenset({5, 6, 7})


def lifecycle_request(rng: np.random.Generator) -> Any:
    """A ChangeState request: a primary transition (valid or not for the current state), any
    other id (the internal result transitions 10..62, out of range ones), or a label."""
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request()
    draw = rng.random()
    if draw < 0.6:
        request.transition.id = int(rng.integers(1, 5))
    elif draw < 0.8:
        request.transition.id = int(
            rng.choice([i for i in range(256) if i not in _SHUTDOWN_IDS])
        )
    else:
        request.transition.label = str(
            rng.choice([*LABELS, 'Configure', 'activate ', 'unconfigured', 'x' * 300, 'ü'])
        )
        request.transition.id = int(rng.choice([0, 1, 3, 200]))
    return request


def expected_transition(request: Any, state: int) -> tuple[bool, int]:
    """(success, state after) of `request` from primary `state`, as lifecycle_msgs defines it:
    a label names the transition (an unknown label fails), else the id; a transition not
    valid from `state` fails and leaves it."""
    label = request.transition.label
    tid = LABELS.get(label, -1) if label else request.transition.id
    if FROM_STATE.get(tid) != state:
        return False, state
    return True, GOAL_STATE[tid]


# Driver ----------------------------------------------------------------------------------------


@dataclass
class KindCounts:
    """What one input kind did to the node."""

    cases: int = 0
    crashes: int = 0
    unanswered: int = 0
    refused: int = 0
    accepted: int = 0
    wrong_answers: int = 0
    good_frames_probed: int = 0
    good_frames_lost: int = 0
    decodable_frames: int = 0
    decodable_frames_without_output: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)  # the first few faults, for a reader

    def note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text[:300])


class NodeGoneError(RuntimeError):
    """The node process exited."""


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


class Fuzzer:
    """Cases of each kind against the node in `namespace`, with restarts after crashes.

    Args:
        start: starts the node and returns its `NodeProcess` once active (called again after a
            crash).
        namespace: the node's namespace.
        timeout: seconds a service may take to answer.
        probe_every: cases between good-frame probes.
        probe_timeout: seconds a good frame may take to give its output.
    """

    def __init__(
        self,
        start: Callable[[], Any],
        namespace: str,
        *,
        timeout: float = 30.0,
        probe_every: int = 25,
        probe_timeout: float = 30.0,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        from mobius_ros.demo.client import DemoClient

        self.progress = progress
        self._start = start
        self.node = start()
        self.namespace = namespace
        self.client = DemoClient(namespace)
        self.timeout = timeout
        self.probe_every = probe_every
        self.probe_timeout = probe_timeout
        self.rng = np.random.default_rng(seed)
        self._stamp = 1000
        self._seen_stamps: set[int] = set()
        self._original: dict[str, Any] = {}
        # Stamps of every instance_mask, for an O(1) "did this frame give an output".
        self._mask_subscription = self.client.node.create_subscription(
            _message('sensor_msgs/msg/Image'), f'{namespace}/instance_mask',
            lambda msg: self._seen_stamps.add(int(msg.header.stamp.sec)), 50,
        )  # fmt: skip
        self._camera = self.client.node.create_publisher(
            _message('sensor_msgs/msg/Image'), f'{namespace}/image', 10
        )
        self._connect()

    # Plumbing --------------------------------------------------------------------------------

    def _connect(self) -> None:
        ok = self.client.wait(lambda: self._camera.get_subscription_count() > 0, 60.0)
        if not ok:
            raise RuntimeError(f'the node never subscribed to its camera:\n{self.node.excerpt()}')
        from rcl_interfaces.srv import GetParameters

        from mobius_ros.ros.params import SPECS

        reply = self._call(GetParameters, 'mobius/get_parameters',
                           GetParameters.Request(names=list(SPECS)))  # fmt: skip
        if reply is None:
            raise RuntimeError('the node does not answer get_parameters')
        self._original = dict(zip(SPECS, reply.values))

    def _next_stamp(self) -> int:
        self._stamp += 1
        return self._stamp

    def _call(self, kind: type, relative: str, request: Any) -> Any | None:
        """The reply, or None when none came within the timeout; NodeGoneError if the node died."""
        name = f'{self.namespace}/{relative}'
        clients = self.client._clients
        client = clients.get(name)
        if client is None:
            client = clients[name] = self.client.node.create_client(kind, name)
        if not client.wait_for_service(timeout_sec=self.timeout):
            self._check_alive()
            return None
        future = client.call_async(request)
        if not self.client.wait(future.done, self.timeout):
            self._check_alive()
            client.remove_pending_request(future)
            return None
        return future.result()

    def _check_alive(self) -> None:
        if not self.node.alive():
            raise NodeGoneError(self.node.excerpt())

    def _publish(self, case: ImageCase) -> int:
        stamp = self._next_stamp()
        self._camera.publish(case.message(stamp))
        return stamp

    def _wait_output(self, stamp: int, timeout: float) -> bool:
        return self.client.wait(lambda: stamp in self._seen_stamps, timeout)

    def _restore(self) -> None:
        """Processing on and every parameter at its starting value, before a probe."""
        from rcl_interfaces.msg import Parameter
        from rcl_interfaces.srv import SetParameters
        from std_srvs.srv import SetBool

        self._activate()
        self._call(SetBool, 'enable', SetBool.Request(data=True))
        writable = [
            Parameter(name=name, value=value)
            for name, value in self._original.items()
            if not _spec(name).read_only
        ]
        self._call(SetParameters, 'mobius/set_parameters',
                   SetParameters.Request(parameters=writable))  # fmt: skip

    def _state(self) -> int | None:
        from lifecycle_msgs.srv import GetState

        reply = self._call(GetState, 'mobius/get_state', GetState.Request())
        return None if reply is None else int(reply.current_state.id)

    def _activate(self) -> None:
        """Back to active from unconfigured or inactive (a lifecycle case may leave either)."""
        from lifecycle_msgs.srv import ChangeState

        for _ in range(2):
            state = self._state()
            if state not in (1, 2):
                return
            request = ChangeState.Request()
            request.transition.id = 1 if state == 1 else 3
            self._call(ChangeState, 'mobius/change_state', request)

    def probe(self, counts: KindCounts) -> None:
        """A good frame must give its output."""
        self._restore()
        height, width = GOOD_SIZE
        rgb = self.rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        good = ImageCase(height, width, 'rgb8', width * 3, rgb.tobytes(), decodable=True)
        counts.good_frames_probed += 1
        deadline = time.monotonic() + self.probe_timeout
        while time.monotonic() < deadline:  # best effort: a frame may be dropped, resend it
            stamp = self._publish(good)
            if self._wait_output(stamp, min(5.0, self.probe_timeout)):
                return
            self._check_alive()
        counts.good_frames_lost += 1
        counts.note(f'good frame without output in {self.probe_timeout:.0f} s')

    # Kinds -----------------------------------------------------------------------------------

    def case(self, kind: str, counts: KindCounts) -> None:
        getattr(self, f'_case_{kind}')(counts)

    def _case_images(self, counts: KindCounts) -> None:
        case = image_case(self.rng)
        stamp = self._publish(case)
        if case.decodable:
            counts.decodable_frames += 1
            # The latest-frame slot may drop a frame under load; republish once before counting.
            if not self._wait_output(stamp, self.probe_timeout / 2):
                stamp = self._publish(case)
                if not self._wait_output(stamp, self.probe_timeout / 2):
                    counts.decodable_frames_without_output += 1
                    counts.note(f'no output for {case.encoding} {case.height}x{case.width}')
        else:
            self.client.spin(0.002)
        counts.accepted += 1  # a published message has no answer; faults show in probes

    def _answered(self, counts: KindCounts, reply: Any, what: str) -> bool:
        if reply is None:
            counts.unanswered += 1
            counts.note(f'{what}: no answer in {self.timeout:.0f} s')
            return False
        return True

    def _case_set_vocabulary(self, counts: KindCounts) -> None:
        from mobius_ros_msgs.srv import SetVocabulary

        request = set_vocabulary_request(self.rng)
        reply = self._call(SetVocabulary, 'set_vocabulary', request)
        if not self._answered(counts, reply, 'set_vocabulary'):
            return
        if reply.success:
            counts.accepted += 1
            if request.agnostic:
                right = reply.task == 'agnostic'
            else:
                wanted = [' '.join(p.split()) for p in request.phrases]
                right = set(wanted) <= set(reply.phrases) and (
                    request.append or list(dict.fromkeys(wanted)) == list(reply.phrases)
                )
            if not right or list(reply.class_ids) != list(range(len(reply.phrases))):
                counts.wrong_answers += 1
                counts.note(f'set_vocabulary {request.phrases!r} -> {list(reply.phrases)!r}')
        else:
            counts.refused += 1
            if not reply.message:
                counts.wrong_answers += 1
                counts.note('set_vocabulary refused without a reason')

    def _case_get_vocabulary(self, counts: KindCounts) -> None:
        from mobius_ros_msgs.srv import GetVocabulary

        reply = self._call(GetVocabulary, 'get_vocabulary', get_vocabulary_request(self.rng))
        if not self._answered(counts, reply, 'get_vocabulary'):
            return
        counts.accepted += 1
        if not reply.phrases or len(reply.class_ids) != len(reply.phrases):
            counts.wrong_answers += 1
            counts.note(f'get_vocabulary -> {list(reply.phrases)!r}')
        # Interleave vocabulary changes so that reads meet many versions.
        if self.rng.random() < 0.2:
            from mobius_ros_msgs.srv import SetVocabulary

            self._call(SetVocabulary, 'set_vocabulary', set_vocabulary_request(self.rng))

    def _case_segment(self, counts: KindCounts) -> None:
        from mobius_ros_msgs.srv import Segment

        request = segment_request(self.rng, self._next_stamp())
        reply = self._call(Segment, 'segment', request)
        if not self._answered(counts, reply, 'segment'):
            return
        if reply.success:
            counts.accepted += 1
        else:
            counts.refused += 1
            if not reply.message:
                counts.wrong_answers += 1
                counts.note('segment refused without a reason')

    def _case_enable(self, counts: KindCounts) -> None:
        from std_srvs.srv import SetBool

        request = enable_request(self.rng)
        reply = self._call(SetBool, 'enable', request)
        if not self._answered(counts, reply, 'enable'):
            return
        counts.accepted += 1
        if not reply.success:
            counts.wrong_answers += 1
        # A frame while paused must not be processed, nor break the next one.
        if self.rng.random() < 0.1:
            height, width = GOOD_SIZE
            data = bytes(height * width * 3)
            self._publish(ImageCase(height, width, 'rgb8', width * 3, data, decodable=True))

    def _case_parameters(self, counts: KindCounts) -> None:
        from rcl_interfaces.srv import GetParameters, SetParameters

        request = parameter_request(self.rng)
        atomically = len(request.parameters) > 1 and self.rng.random() < 0.5
        if atomically:
            from rcl_interfaces.srv import SetParametersAtomically

            reply = self._call(
                SetParametersAtomically, 'mobius/set_parameters_atomically',
                SetParametersAtomically.Request(parameters=request.parameters),
            )  # fmt: skip
            results = [] if reply is None else [reply.result] * len(request.parameters)
        else:
            reply = self._call(SetParameters, 'mobius/set_parameters', request)
            results = [] if reply is None else list(reply.results)
        if not self._answered(counts, reply, 'set_parameters'):
            return
        if len(results) != len(request.parameters):
            counts.wrong_answers += 1
            counts.note(f'{len(request.parameters)} parameters, {len(results)} results')
            return
        accepted = {p.name: p.value for p, r in zip(request.parameters, results) if r.successful}
        counts.accepted += int(bool(accepted))
        counts.refused += int(not accepted)
        for parameter, result in zip(request.parameters, results):
            if not result.successful and not result.reason:
                counts.wrong_answers += 1
                counts.note(f'{parameter.name} refused without a reason')
        if accepted:
            names = list(accepted)
            got = self._call(GetParameters, 'mobius/get_parameters',
                             GetParameters.Request(names=names))  # fmt: skip
            if got is None:
                counts.unanswered += 1
                return
            for name, value in zip(names, got.values):
                if _plain(value) != _plain(accepted[name]):
                    counts.wrong_answers += 1
                    counts.note(f'{name}: accepted {_plain(accepted[name])!r}, reads'
                                f' {_plain(value)!r}')  # fmt: skip

    def _case_lifecycle(self, counts: KindCounts) -> None:
        from lifecycle_msgs.srv import ChangeState

        before = self._state()
        if not self._answered(counts, before, 'get_state'):
            return
        request = lifecycle_request(self.rng)
        reply = self._call(ChangeState, 'mobius/change_state', request)
        if not self._answered(counts, reply, 'change_state'):
            return
        after = self._state()
        if not self._answered(counts, after, 'get_state'):
            return
        success, state = expected_transition(request, before)
        counts.accepted += int(reply.success)
        counts.refused += int(not reply.success)
        if (bool(reply.success), after) != (success, state):
            counts.wrong_answers += 1
            counts.note(
                f'change_state id {request.transition.id} label {request.transition.label!r}'
                f' from {before}: success {reply.success}, state {after};'
                f' expected {success}, {state}'
            )

    # Run -------------------------------------------------------------------------------------

    def run(self, kind: str, cases: int) -> KindCounts:
        counts = KindCounts()
        started = time.monotonic()
        counts.rss_before_mb = round(rss_mb(self.node.process.pid), 1)
        done = 0
        while done < cases:
            try:
                self.case(kind, counts)
                done += 1
                counts.cases = done
                if done % self.probe_every == 0 or done == cases:
                    self.probe(counts)
                if self.progress and done % 1000 == 0:
                    rate = done / (time.monotonic() - started)
                    print(f'{kind}: {done}/{cases} cases ({rate:.1f}/s)', flush=True)
            except NodeGoneError as gone:
                counts.crashes += 1
                counts.note(f'the node died: {gone}')
                done += 1
                counts.cases = done
                self.node = self._start()
                self._connect()
        self._restore()
        counts.rss_after_mb = round(rss_mb(self.node.process.pid), 1)
        counts.seconds = round(time.monotonic() - started, 1)
        return counts

    def close(self) -> None:
        self.client.close()


def _message(type_name: str) -> type:
    from mobius_ros.demo.client import message_class

    return message_class(type_name)


def _spec(name: str) -> Any:
    from mobius_ros.ros.params import SPECS

    return SPECS[name]


def _plain(value: Any) -> Any:
    """A ParameterValue as (type, Python value), NaN-safe."""
    from rclpy.parameter import parameter_value_to_python

    python = parameter_value_to_python(value)
    if isinstance(python, float) and math.isnan(python):
        python = 'nan'
    if isinstance(python, list | tuple | np.ndarray):
        python = [bytes(v) if isinstance(v, bytes) else v for v in python]
    return int(value.type), python


def fuzz(
    start: Callable[[], Any],
    namespace: str,
    *,
    cases: int,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    **options: Any,
) -> dict[str, KindCounts]:
    """Run `cases` cases of each kind; counts per kind."""
    fuzzer = Fuzzer(start, namespace, seed=seed, **options)
    try:
        return {kind: fuzzer.run(kind, cases) for kind in kinds}
    finally:
        fuzzer.close()


def totals(results: dict[str, KindCounts]) -> dict[str, int]:
    keys = ('cases', 'crashes', 'unanswered', 'wrong_answers', 'good_frames_lost',
            'decodable_frames_without_output')  # fmt: skip
    return {key: sum(getattr(c, key) for c in results.values()) for key in keys}


def _starter(env: dict[str, str], parameters: dict[str, Any], logs: Path) -> Iterator[Any]:
    from mobius_ros.demo.launcher import start_node

    while True:
        node = start_node(
            environment=env, parameters=parameters, namespace=NAMESPACE,
            log_path=logs / f'node_{time.time_ns()}.log',
        )  # fmt: skip
        reason = node.wait_ready(timeout=600.0)
        if reason is not None:
            raise RuntimeError(f'{reason}:\n{node.excerpt()}')
        yield node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', type=int, default=10_000, help='cases of each kind')
    parser.add_argument('--kinds', nargs='+', choices=KINDS, default=list(KINDS))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--probe-every', type=int, default=25)
    parser.add_argument('--checkpoint', default='', help='default: the bundled demo model')
    parser.add_argument('--backend', default='onnxruntime')
    parser.add_argument('--input-size', type=int, nargs=2, default=(160, 224))
    parser.add_argument('--output', default='fuzz_node', help='results/<output>.json')
    args = parser.parse_args(argv)

    from bench.common import TimingConfig, environment, node_environment, write_results
    from mobius_ros.demo.camera import DEMO_VOCABULARY

    env = node_environment()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        parameters: dict[str, Any] = {
            'checkpoint': args.checkpoint,
            'backend': args.backend,
            'input_height': args.input_size[0],
            'input_width': args.input_size[1],
            'vocabulary': list(DEMO_VOCABULARY),
            'engine_dir': f'{scratch}/engines',
            'cache_dir': f'{scratch}/text',
        }
        nodes = _starter(env, parameters, Path(scratch) / 'logs')
        fuzzer = Fuzzer(lambda: next(nodes), NAMESPACE, seed=args.seed,
                        probe_every=args.probe_every, progress=True)  # fmt: skip
        results: dict[str, KindCounts] = {}
        try:
            for kind in args.kinds:
                results[kind] = fuzzer.run(kind, args.cases)
                print(f'{kind}: {asdict(results[kind])}', flush=True)
        finally:
            fuzzer.close()
            fuzzer.node.stop()
    payload = {
        'what': (
            f'{args.cases} cases of each input kind against the mobius node'
            f' ({args.backend}, {args.checkpoint or "demo model"},'
            f' canvas {args.input_size[0]}x{args.input_size[1]}), good-frame probe every'
            f' {args.probe_every} cases'
        ),
        'totals': totals(results),
        'kinds': {kind: asdict(counts) for kind, counts in results.items()},
        'seconds': round(time.monotonic() - started, 1),
        'environment': environment(TimingConfig(warmup=0, repeats=1)),
    }
    path = write_results(args.output, payload)
    print(f'{path}: {payload["totals"]}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
