"""The node in its own process on a real ROS 2 graph (Fast DDS over loopback), a client here.

The model is a random-init MOBIUS-tiny: what it finds is arbitrary, so the tests check the
plumbing (headers, sizes, tasks, vocabularies, states, errors), never what is detected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.ros

NAMESPACE = '/mobius_test'  # as test/ros/conftest.py starts the node
Client = NodeProcess = StartNode = Any  # fixtures' types, defined in conftest.py

HEIGHT, WIDTH = 72, 100  # deliberately not the network's canvas nor a multiple of 32


def _picture(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[10:40, 20:60] = (220, 30, 30)
    return rgb


def _image(rgb: np.ndarray, *, stamp: int = 7, encoding: str = 'rgb8', data: Any = None) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=rgb.shape[1] * 3)
    msg.data = rgb.tobytes() if data is None else data
    msg.header.stamp.sec = stamp
    msg.header.frame_id = 'camera_optical'
    return msg


def _topic(name: str) -> str:
    return f'{NAMESPACE}/{name}'


@pytest.fixture(scope='module')
def node(start_node: StartNode, checkpoint: Path) -> NodeProcess:
    process = start_node(
        checkpoint=str(checkpoint),
        backend='torch',
        input_height=64,
        input_width=96,
        vocabulary=['red box', 'sky'],
        score_threshold=0.0,
        max_detections=5,
        publish_instance_masks=True,
    )
    assert process.wait_for_log('active: listening', timeout=90), process.log()
    return process


def _publish_until(client: Client, msg: Any, received: list[Any], stamp: int) -> Any:
    """Publish `msg` until an output with its stamp arrives; returns that output."""
    from sensor_msgs.msg import Image

    publisher = client.publisher(Image, _topic('image'))

    def arrived() -> bool:
        publisher.publish(msg)
        return any(m.header.stamp.sec == stamp for m in received)

    assert client.wait(arrived, timeout=30), 'no output for the published frame'
    return next(m for m in received if m.header.stamp.sec == stamp)


def test_outputs_carry_the_input_header_and_original_size(
    node: NodeProcess, ros_client: Client
) -> None:
    from mobius_ros_msgs.msg import InstanceSegmentation
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    detections = ros_client.subscribe(Detection2DArray, _topic('detections'))
    masks = ros_client.subscribe(Image, _topic('instance_mask'))
    combined = ros_client.subscribe(InstanceSegmentation, _topic('segmentation'))
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    labels = ros_client.subscribe(LabelInfo, _topic('label_info'), latched)

    _publish_until(ros_client, _image(_picture(), stamp=11), combined, 11)
    assert ros_client.wait(lambda: any(m.header.stamp.sec == 11 for m in masks))
    assert ros_client.wait(lambda: any(m.header.stamp.sec == 11 for m in detections))
    seg = next(m for m in combined if m.header.stamp.sec == 11)
    mask = next(m for m in masks if m.header.stamp.sec == 11)
    det = next(m for m in detections if m.header.stamp.sec == 11)
    for header in (seg.header, mask.header, det.header, seg.label_image.header):
        assert (header.stamp.sec, header.frame_id) == (11, 'camera_optical')
    assert (mask.height, mask.width, mask.encoding) == (HEIGHT, WIDTH, 'mono16')
    assert (seg.label_image.height, seg.label_image.width) == (HEIGHT, WIDTH)
    assert len(seg.detections.detections) <= 5 and list(seg.phrases) == ['red box', 'sky']
    assert seg.task == 'vocabulary' and len(seg.queries_kept) >= 1
    label_image = np.frombuffer(bytes(mask.data), np.uint16).reshape(HEIGHT, WIDTH)
    assert label_image.max() <= len(det.detections)
    for n, d in enumerate(det.detections):
        assert d.id == str(n) and d.results[0].hypothesis.class_id in ('red box', 'sky')
        assert 0 <= d.bbox.center.position.x <= WIDTH and 0 <= d.bbox.center.position.y <= HEIGHT
    for crop in seg.masks:  # overlap-safe crops lie inside the original image
        assert crop.roi.x_offset + crop.roi.width <= WIDTH
        assert crop.roi.y_offset + crop.roi.height <= HEIGHT
    assert ros_client.wait(lambda: len(labels) > 0)
    assert [c.class_name for c in labels[-1].class_map] == ['red box', 'sky']


@pytest.mark.parametrize('encoding', ['bgr8', 'mono8'])
def test_other_encodings_are_segmented(
    node: NodeProcess, ros_client: Client, encoding: str
) -> None:
    from sensor_msgs.msg import Image

    masks = ros_client.subscribe(Image, _topic('instance_mask'))
    rgb = _picture(1)
    if encoding == 'mono8':
        msg = _image(rgb, stamp=21, encoding='mono8', data=rgb[..., 0].tobytes())
        msg.step = WIDTH
    else:
        msg = _image(rgb[..., ::-1].copy(), stamp=22, encoding='bgr8')
    out = _publish_until(ros_client, msg, masks, msg.header.stamp.sec)
    assert (out.height, out.width) == (HEIGHT, WIDTH)


def test_debug_image_is_drawn_for_subscribers(node: NodeProcess, ros_client: Client) -> None:
    from sensor_msgs.msg import Image

    debug = ros_client.subscribe(Image, _topic('debug_image'))
    out = _publish_until(ros_client, _image(_picture(), stamp=25), debug, 25)
    assert (out.height, out.width, out.encoding) == (HEIGHT, WIDTH, 'rgb8')
    assert out.header.frame_id == 'camera_optical'


def test_bad_frames_are_skipped_and_the_next_good_one_processed(
    node: NodeProcess, ros_client: Client
) -> None:
    from sensor_msgs.msg import Image

    publisher = ros_client.publisher(Image, _topic('image'))
    rgb = _picture()
    bad = [
        _image(rgb, stamp=31, encoding='32FC1'),  # unknown to us
        _image(rgb, stamp=32, data=rgb.tobytes()[:-100]),  # truncated
        _image(rgb, stamp=33, data=rgb.tobytes() + b'\0' * 7),  # step * height mismatch
    ]
    bad[2].step = WIDTH * 3 + 1
    for msg in bad:
        publisher.publish(msg)
        ros_client.spin(0.3)
    masks = ros_client.subscribe(Image, _topic('instance_mask'))
    _publish_until(ros_client, _image(rgb, stamp=34), masks, 34)
    assert node.alive()
    assert node.wait_for_log('skipped a frame', timeout=10), node.log()
    assert not any(m.header.stamp.sec in (31, 32, 33) for m in masks)


def test_vocabulary_services_swap_atomically(node: NodeProcess, ros_client: Client) -> None:
    from mobius_ros_msgs.srv import GetVocabulary, SetVocabulary
    from rclpy.qos import DurabilityPolicy, QoSProfile
    from vision_msgs.msg import LabelInfo

    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    labels = ros_client.subscribe(LabelInfo, _topic('label_info'), latched)
    before = ros_client.call(GetVocabulary, _topic('get_vocabulary'), GetVocabulary.Request())
    reply = ros_client.call(
        SetVocabulary, _topic('set_vocabulary'), SetVocabulary.Request(phrases=['mug', 'person'])
    )
    assert reply.success, reply.message
    assert list(reply.phrases) == ['mug', 'person'] and list(reply.class_ids) == [0, 1]
    assert reply.vocabulary_version > before.vocabulary_version and reply.encoded == 2
    reply = ros_client.call(
        SetVocabulary,
        _topic('set_vocabulary'),
        SetVocabulary.Request(phrases=['mug', 'chair'], append=True),
    )
    assert reply.success and list(reply.phrases) == ['mug', 'person', 'chair']
    assert reply.cache_hits >= 1  # 'mug' was encoded a moment ago
    assert ros_client.wait(
        lambda: (
            bool(labels) and [c.class_name for c in labels[-1].class_map] == list(reply.phrases)
        )
    )
    now = ros_client.call(GetVocabulary, _topic('get_vocabulary'), GetVocabulary.Request())
    assert (list(now.phrases), now.vocabulary_version) == (
        list(reply.phrases),
        reply.vocabulary_version,
    )

    agnostic = ros_client.call(
        SetVocabulary, _topic('set_vocabulary'), SetVocabulary.Request(agnostic=True)
    )
    assert (
        agnostic.success and list(agnostic.phrases) == ['object'] and agnostic.task == 'agnostic'
    )

    for phrases, reason in [
        ([], 'empty'),
        ([f'thing {i}' for i in range(300)], ''),
        (['x' * 500], ''),
    ]:
        refused = ros_client.call(
            SetVocabulary, _topic('set_vocabulary'), SetVocabulary.Request(phrases=phrases)
        )
        assert not refused.success and refused.message and reason in refused.message
    still = ros_client.call(GetVocabulary, _topic('get_vocabulary'), GetVocabulary.Request())
    assert (
        list(still.phrases) == ['object']
        and still.vocabulary_version == agnostic.vocabulary_version
    )
    ros_client.call(
        SetVocabulary, _topic('set_vocabulary'), SetVocabulary.Request(phrases=['red box', 'sky'])
    )


def test_segment_service_for_all_three_tasks(node: NodeProcess, ros_client: Client) -> None:
    from mobius_ros_msgs.srv import Segment
    from sensor_msgs.msg import CompressedImage

    from mobius_ros.ros.conversions import rgb_to_compressed

    image = _image(_picture(), stamp=41)
    vocabulary = ros_client.call(
        Segment, _topic('segment'), Segment.Request(image=image, phrases=['red box'])
    )
    assert vocabulary.success, vocabulary.message
    result = vocabulary.result
    assert result.task == 'vocabulary' and list(result.phrases) == ['red box']
    assert (result.header.stamp.sec, result.label_image.width) == (41, WIDTH)

    agnostic = ros_client.call(
        Segment, _topic('segment'), Segment.Request(image=image, agnostic=True)
    )
    assert agnostic.success and agnostic.result.task == 'agnostic'
    assert list(agnostic.result.phrases) == ['object']

    jpeg = CompressedImage(format='jpeg', data=rgb_to_compressed(_picture(), 'jpeg'))
    jpeg.header.stamp.sec = 42
    referring = ros_client.call(
        Segment,
        _topic('segment'),
        Segment.Request(
            compressed_image=jpeg, expression='the red box on the left', score_threshold=0.0
        ),
    )
    assert referring.success, referring.message
    assert (
        referring.result.task == 'referring' and len(referring.result.detections.detections) <= 1
    )
    assert referring.result.header.stamp.sec == 42

    latest = ros_client.call(Segment, _topic('segment'), Segment.Request())  # the last frame
    assert latest.success and latest.result.label_image.height == HEIGHT

    corrupt = CompressedImage(format='jpeg', data=bytes(jpeg.data)[:50] + b'garbage' * 10)
    for request, reason in [
        (Segment.Request(compressed_image=corrupt), 'decode'),
        (Segment.Request(image=image, expression='x' * 5000), ''),
        (Segment.Request(image=image, phrases=['a'], expression='b'), 'at most one'),
        (Segment.Request(image=_image(_picture(), encoding='weird8')), 'encoding'),
    ]:
        refused = ros_client.call(Segment, _topic('segment'), request)
        assert not refused.success and reason in refused.message, refused.message
    assert node.alive()


def test_parameters_change_at_runtime_and_bad_values_are_rejected(
    node: NodeProcess, ros_client: Client
) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import GetParameters, SetParameters

    def value(kind: int, **field: Any) -> ParameterValue:
        return ParameterValue(type=kind, **field)

    double = ParameterType.PARAMETER_DOUBLE
    requests = [
        Parameter(name='score_threshold', value=value(double, double_value=0.5)),
        Parameter(name='score_threshold', value=value(double, double_value=1.5)),
        Parameter(
            name='backend', value=value(ParameterType.PARAMETER_STRING, string_value='torch')
        ),
        Parameter(name='pruning.lower', value=value(double, double_value=0.9)),
        Parameter(
            name='pruning.trajectory',
            value=value(ParameterType.PARAMETER_STRING, string_value='linear'),
        ),
    ]
    reply = ros_client.call(
        SetParameters, _topic('mobius/set_parameters'), SetParameters.Request(parameters=requests)
    )
    ok = [r.successful for r in reply.results]
    assert ok == [True, False, False, False, False], [r.reason for r in reply.results]
    assert all(r.reason for r in reply.results[1:])
    got = ros_client.call(
        GetParameters,
        _topic('mobius/get_parameters'),
        GetParameters.Request(names=['score_threshold']),
    )
    assert got.values[0].double_value == 0.5


def test_enable_and_lifecycle(node: NodeProcess, ros_client: Client) -> None:
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from sensor_msgs.msg import Image
    from std_srvs.srv import SetBool

    masks = ros_client.subscribe(Image, _topic('instance_mask'))
    publisher = ros_client.publisher(Image, _topic('image'))

    def state() -> int:
        return ros_client.call(
            GetState, _topic('mobius/get_state'), GetState.Request()
        ).current_state.id

    def change(transition: int) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition))
        return ros_client.call(ChangeState, _topic('mobius/change_state'), request).success

    def quiet(stamp: int) -> bool:
        for _ in range(10):
            publisher.publish(_image(_picture(), stamp=stamp))
            ros_client.spin(0.1)
        return not any(m.header.stamp.sec == stamp for m in masks)

    assert state() == State.PRIMARY_STATE_ACTIVE
    assert ros_client.call(SetBool, _topic('enable'), SetBool.Request(data=False)).success
    assert quiet(51)
    assert ros_client.call(SetBool, _topic('enable'), SetBool.Request(data=True)).success
    _publish_until(ros_client, _image(_picture(), stamp=52), masks, 52)

    assert change(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
    assert quiet(53)
    assert change(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
    assert change(Transition.TRANSITION_CONFIGURE) and change(Transition.TRANSITION_ACTIVATE)
    _publish_until(ros_client, _image(_picture(), stamp=54), masks, 54)
    # Transitions not valid from the current state (`ros2 lifecycle set` of the wrong one, an
    # unknown id or label) are refused, and the node stays active: rclpy's own handler raises
    # there, which would end the node.
    assert not change(Transition.TRANSITION_CONFIGURE)
    assert not change(Transition.TRANSITION_CLEANUP)
    assert not change(99)
    request = ChangeState.Request(transition=Transition(label='no such transition'))
    assert not ros_client.call(ChangeState, _topic('mobius/change_state'), request).success
    assert node.alive() and state() == State.PRIMARY_STATE_ACTIVE
    _publish_until(ros_client, _image(_picture(), stamp=55), masks, 55)


def test_referring_answer_agrees_with_mobius_segment(
    node: NodeProcess, ros_client: Client, checkpoint: Path, tmp_path: Path
) -> None:
    """The node's `segment` and `mobius segment` answer the same expression on the same image
    with the same instance: same phrase, score, box and mask (one runtime, one set of settings)."""
    import json

    import cv2
    from mobius_ros_msgs.srv import Segment

    from mobius_ros.cli import main
    from mobius_ros.demo.report import prediction_from_message
    from mobius_ros.ops.masks import rle_decode

    expression = 'the red box left of the sky'
    rgb = _picture(seed=5)
    path = tmp_path / 'picture.png'
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # lossless: the same pixels
    reply = ros_client.call(
        Segment, _topic('segment'), Segment.Request(image=_image(rgb), expression=expression)
    )
    assert reply.success, reply.message
    ours = prediction_from_message(reply.result)
    code = main([
        'segment', str(path), '--expression', expression, '--checkpoint', str(checkpoint),
        '--backend', 'torch', '--input-size', '64', '96', '--out', str(tmp_path / 'out'),
        '--cache-dir', str(tmp_path / 'text'),
    ])  # fmt: skip
    assert code == 0
    (cli,) = json.loads((tmp_path / 'out' / 'results.json').read_text())[0]['instances']
    assert len(ours) == 1 and ours.labels[0] == cli['label'] == expression
    assert abs(float(ours.scores[0]) - cli['score']) < 1e-4
    x, y, w, h = cli['bbox']
    np.testing.assert_allclose(ours.boxes[0], [x, y, x + w, y + h], atol=0.05)
    assert np.array_equal(ours.masks[0], rle_decode(cli['segmentation']).astype(bool))


def test_diagnostics_report_rate_latency_and_drops(node: NodeProcess, ros_client: Client) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    arrays = ros_client.subscribe(DiagnosticArray, '/diagnostics')
    mine = f'{NAMESPACE}/mobius: segmentation'
    assert ros_client.wait(lambda: any(s.name == mine for a in arrays for s in a.status))
    status = next(s for a in reversed(arrays) for s in a.status if s.name == mine)
    values = {kv.key: kv.value for kv in status.values}
    assert {
        'rate_hz',
        'latency_p50_ms',
        'latency_p95_ms',
        'dropped_frames',
        'queries_kept',
        'budget_met',
        'latency_floor_ms',
        'backend',
    } <= values.keys()
    assert values['backend'] == 'torch' and int(values['frames']) > 0
    # The floor is what preprocessing, the encoder and postprocessing took: under the latency.
    assert 0.0 < float(values['latency_floor_ms']) <= float(values['latency_p95_ms'])


def test_compressed_input_without_our_messages(
    start_node: StartNode, checkpoint: Path, ros_client: Client
) -> None:
    from sensor_msgs.msg import CompressedImage, Image

    from mobius_ros.ros.conversions import rgb_to_compressed

    process = start_node(
        namespace='/mobius_compressed',
        checkpoint=str(checkpoint),
        backend='torch',
        input_height=64,
        input_width=96,
        compressed=True,
        without_msgs=True,
    )
    assert process.wait_for_log('active: listening', timeout=90), process.log()
    assert 'mobius_ros_msgs is not built' in process.log()
    publisher = ros_client.publisher(CompressedImage, process.topic('image/compressed'))
    masks = ros_client.subscribe(Image, process.topic('instance_mask'))
    corrupt = CompressedImage(format='jpeg', data=b'\xff\xd8\xff' + b'\x00' * 64)
    corrupt.header.stamp.sec = 61

    def refused() -> bool:
        publisher.publish(corrupt)
        return 'could not decode' in process.log()

    assert ros_client.wait(refused, timeout=30), process.log()
    good = CompressedImage(format='jpeg', data=rgb_to_compressed(_picture(), 'jpeg'))
    good.header.stamp.sec = 62
    good.header.frame_id = 'camera_optical'

    def arrived() -> bool:
        publisher.publish(good)
        return any(m.header.stamp.sec == 62 for m in masks)

    assert ros_client.wait(arrived, timeout=30), process.log()
    out = next(m for m in masks if m.header.stamp.sec == 62)
    assert (out.height, out.width, out.header.frame_id) == (HEIGHT, WIDTH, 'camera_optical')
    assert process.alive() and 'could not decode' in process.log()
    process.stop()


@pytest.mark.parametrize('kind', ['missing', 'corrupt'])
def test_a_bad_checkpoint_fails_configure_cleanly(
    start_node: StartNode, tmp_path: Path, ros_client: Client, kind: str
) -> None:
    from lifecycle_msgs.msg import State
    from lifecycle_msgs.srv import GetState

    path = tmp_path / 'model.safetensors'
    if kind == 'corrupt':
        path.write_bytes(b'not a safetensors file' * 10)
    process = start_node(namespace=f'/mobius_{kind}', checkpoint=str(path), backend='torch')
    assert process.wait_for_log('cannot configure', timeout=90), process.log()
    reply = ros_client.call(GetState, process.topic('mobius/get_state'), GetState.Request())
    assert reply.current_state.id == State.PRIMARY_STATE_UNCONFIGURED
    assert process.alive() and str(path) in process.log()
    process.stop()
