"""The `mobius` lifecycle node: a thin rclpy adapter over `Segmenter` (DESIGN 8).

configure loads the model and installs the vocabulary, activate subscribes and starts the worker,
deactivate stops them, cleanup releases the model. The image callback only parks the newest
message in a one-item slot (older unprocessed ones are dropped and counted); a worker thread
converts, segments and publishes, so a slow model never blocks the executor. Every failure of an
input (bad image, bad vocabulary, bad request) is logged or answered and the node goes on.
Camera faults (a stopped, resized, looping or restarted camera) are watched in `health.py`; the
vocabulary and budget set at run time are saved and restored across restarts (`state.py`).

Run: `python -m mobius_ros.ros.node --ros-args --params-file config/mobius.yaml -r image:=/cam`.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool

from mobius_ros.common.errors import ImageError, SegmenterError
from mobius_ros.ros import messages, params
from mobius_ros.ros.conversions import (
    label_to_image_fields,
    message_to_rgb,
    overlay,
    rgb_to_image_fields,
)
from mobius_ros.ros.health import CameraHealth
from mobius_ros.ros.services import ServiceHandlers
from mobius_ros.ros.state import KEYS as STATE_KEYS
from mobius_ros.ros.stats import FrameStats, LatestSlot, LogBudget, StreamWatch
from mobius_ros.runtime.result import Prediction

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE


FIXED_STAGES = ('preprocess', 'encoder', 'postprocess')


def _optional(module: str) -> Any | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


class MobiusNode(ServiceHandlers, CameraHealth, LifecycleNode):
    """Open-vocabulary instance segmentation of a camera topic."""

    def __init__(self, node_name: str = 'mobius', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._guard_change_state()
        self._values = params.declare(self)
        self._launched = {key: self._values[key] for key in STATE_KEYS}
        self._state_path = None
        if self._values['persist_state']:
            self._restore_state()  # before the callbacks: restoring is not a change to save
        self._invalid = params.validate_all(self._values)
        for reason in self._invalid:
            self.get_logger().error(f'invalid parameter: {reason}')
        self.add_on_set_parameters_callback(self._check_parameters)
        # Humble has no post-set callbacks; there a valid change is applied while validating.
        self._apply_in_check = not hasattr(self, 'add_post_set_parameters_callback')
        if not self._apply_in_check:
            self.add_post_set_parameters_callback(self._apply_parameters)
        self._factory = messages.RclpyFactory()
        self._segmenter: Any = None
        self._infer_lock = threading.Lock()  # one inference at a time: worker vs segment service
        self._vocab_lock = threading.Lock()
        self._syncing = False  # set while a service writes the vocabulary parameters back
        self._slot = LatestSlot()
        self._stats = FrameStats()
        self._stream = StreamWatch()
        self._stale = 0  # the staleness level last reported (0 ok, 1 warn, 2 error)
        self._format_lines = LogBudget(lines=10, period=60.0)
        self._polled_publishers: int | None = None
        self._enabled = True
        self._latest: Any = None
        self._worker: threading.Thread | None = None
        self._subscription: Any = None
        self._pubs: dict[str, Any] = {}
        self._last_frame_id = ''
        self._msgs = _optional('mobius_ros_msgs.srv')
        self._vision = _optional('vision_msgs.msg')
        if self._msgs is None:
            self.get_logger().warning(
                'mobius_ros_msgs is not built: the set_vocabulary, get_vocabulary and segment'
                ' services and the segmentation topic are unavailable; standard messages only'
            )
        if self._vision is None:
            self.get_logger().warning(
                'vision_msgs is not available: detections and label_info are not published'
            )
        services = ReentrantCallbackGroup()
        if self._msgs is not None:
            srv = self._msgs
            self.create_service(srv.SetVocabulary, 'set_vocabulary', self._on_set_vocabulary,
                                callback_group=services)  # fmt: skip
            self.create_service(srv.GetVocabulary, 'get_vocabulary', self._on_get_vocabulary,
                                callback_group=services)  # fmt: skip
            self.create_service(srv.Segment, 'segment', self._on_segment, callback_group=services)
        self.create_service(SetBool, 'enable', self._on_enable, callback_group=services)
        from diagnostic_msgs.msg import DiagnosticArray

        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # On the steady clock: under sim time a bag that ends stops /clock too, and a watchdog
        # that waits for /clock would never report the camera that stopped with it.
        self.create_timer(float(self._values['diagnostics_period']), self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup(),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))  # fmt: skip

    # Lifecycle ---------------------------------------------------------------------------------

    def _guard_change_state(self) -> None:
        """Answer a transition that is not valid from the current state (`ros2 lifecycle set
        /mobius configure` while active, an unknown id) with success false, as the lifecycle
        design says: rclpy's handler raises RCLError there, and an exception out of a service
        callback ends the executor, and with it the node."""
        service = getattr(self, '_service_change_state', None)
        if service is None:  # a node built without the lifecycle services
            return
        handler = service.callback

        def change_state(request: Any, response: Any) -> Any:
            try:
                return handler(request, response)
            except Exception as error:
                _, current = self._state_machine.current_state
                transition = request.transition
                self.get_logger().warning(
                    f'lifecycle transition id {transition.id} label {transition.label[:80]!r}'
                    f' refused in state {current!r}: {str(error).split(", at ")[0]}',
                    throttle_duration_sec=1.0,
                )
                response.success = False
                return response

        service.callback = change_state

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._invalid:
            self.get_logger().error('not configuring: ' + '; '.join(self._invalid))
            return FAILURE
        from mobius_ros.runtime.segmenter import Segmenter

        try:
            self._segmenter = Segmenter(params.segmenter_config(self._values))
            self._install_first_vocabulary()
        except SegmenterError as error:
            self.get_logger().error(f'cannot configure: {error}')
            self._release()
            return FAILURE
        except Exception:  # an unexpected fault while loading must leave the node alive
            self.get_logger().error(f'cannot configure:\n{traceback.format_exc()}')
            self._release()
            return FAILURE
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        topics: dict[str, tuple[Any, str, Any]] = {
            'instance_mask': (Image, 'instance_mask', 10),
            'debug_image': (Image, 'debug_image', 1),
        }
        if self._vision is not None:
            topics['detections'] = (self._vision.Detection2DArray, 'detections', 10)
            topics['label_info'] = (self._vision.LabelInfo, 'label_info', latched)
        if self._msgs is not None:
            from mobius_ros_msgs.msg import InstanceSegmentation

            topics['segmentation'] = (InstanceSegmentation, 'segmentation', 10)
        for key, (kind, topic, qos) in topics.items():
            self._pubs[key] = self.create_lifecycle_publisher(kind, topic, qos)
        self.get_logger().info(
            f'configured: backend {self._values["backend"]}, vocabulary'
            f' {list(self._segmenter.vocabulary.phrases)}'
        )
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        compressed = bool(self._values['compressed'])
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self._values['reliable']
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=int(self._values['qos_depth']),
            reliability=reliability,
            durability=DurabilityPolicy.VOLATILE,
        )
        events = self._subscription_events()
        self._subscription = self.create_subscription(
            CompressedImage if compressed else Image,
            'image/compressed' if compressed else 'image',
            self._on_image, qos, event_callbacks=events,
        )  # fmt: skip
        self._slot.open()
        self._stream.start(time.monotonic())
        self._stale = 0
        self._worker = threading.Thread(target=self._work, name='mobius-worker', daemon=True)
        self._worker.start()
        result = super().on_activate(state)
        self._publish_label_info()
        self.get_logger().info(f'active: listening on {self._subscription.topic_name}')
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return SUCCESS

    def release(self) -> None:
        """Stop input and free the model (process exit without a lifecycle transition)."""
        self._stop_input()
        self._release()

    def _stop_input(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        self._stream.stop()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def _release(self) -> None:
        for publisher in self._pubs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._pubs = {}
        if self._segmenter is not None:
            with self._infer_lock:
                self._segmenter.close()
            self._segmenter = None

    # Frames ------------------------------------------------------------------------------------

    def _on_image(self, msg: Any) -> None:
        self._latest = msg
        if self._enabled and self._slot.put((msg, time.perf_counter())):
            self._stats.count('dropped')
        self._watch_frame(msg)

    def _work(self) -> None:
        while True:
            item = self._slot.take(timeout=0.5)
            if item is None:
                if self._subscription is None:
                    return
                continue
            try:
                self._process(*item)
            except Exception:  # the worker must outlive any single frame
                self._stats.count('errors')
                self.get_logger().error(f'frame failed:\n{traceback.format_exc()}')

    def _process(self, msg: Any, received: float) -> None:
        try:
            compressed = isinstance(msg, CompressedImage)
            rgb = message_to_rgb(msg, compressed=compressed)
            self._format_changed(rgb, msg.format if compressed else msg.encoding)
            segmenter = self._segmenter
            if segmenter is None:
                return
            with self._infer_lock:
                prediction = segmenter.segment(rgb)
        except ImageError as error:  # malformed or degenerate (1x1): the camera's, not ours
            self._stats.count('bad_frames')
            self.get_logger().warning(f'skipped a frame: {error}', throttle_duration_sec=2.0)
            return
        except SegmenterError as error:
            self._stats.count('errors')
            self.get_logger().error(f'segmentation failed: {error}', throttle_duration_sec=2.0)
            return
        self._last_frame_id = msg.header.frame_id
        self._publish(msg.header, rgb, prediction, received)

    def _publish(
        self, header: Any, rgb: np.ndarray, prediction: Prediction, received: float
    ) -> None:
        factory, pubs, values = self._factory, self._pubs, self._values
        detections = label = None
        if 'detections' in pubs and (values['publish_detections'] or 'segmentation' in pubs):
            detections = messages.detection_array(factory, header, prediction)
        if values['publish_instance_mask'] or 'segmentation' in pubs:
            fields = label_to_image_fields(prediction.label_image())
            label = messages.image(factory, header, fields)
        latency_ms = (time.perf_counter() - received) * 1e3
        if detections is not None and values['publish_detections']:
            pubs['detections'].publish(detections)
        if label is not None and values['publish_instance_mask']:
            pubs['instance_mask'].publish(label)
        if 'segmentation' in pubs and values['publish_segmentation']:
            combined = messages.instance_segmentation(
                factory, header, prediction, detections=detections, label_image=label,
                with_masks=bool(values['publish_instance_masks']), latency_ms=latency_ms,
            )  # fmt: skip
            pubs['segmentation'].publish(combined)
        debug = pubs.get('debug_image')
        if debug is not None and debug.get_subscription_count() > 0:
            picture = overlay(
                rgb, prediction.masks, prediction.boxes, prediction.labels, prediction.scores
            )
            debug.publish(messages.image(factory, header, rgb_to_image_fields(picture)))
        kept = prediction.queries_kept[-1] if prediction.queries_kept else 0
        met = prediction.budget.get('budget_met')
        # What no pruning or early exit removes: the floor under any latency budget.
        fixed = sum(prediction.timings_ms.get(k, 0.0) for k in FIXED_STAGES)
        self._stats.frame(latency_ms, queries_kept=int(kept), budget_met=None if met is None
                          else bool(met), fixed_ms=fixed)  # fmt: skip

    # Parameters --------------------------------------------------------------------------------

    def _check_parameters(self, parameters: list[Any]) -> SetParametersResult:
        try:
            changes = {p.name: _plain(p.value) for p in parameters}
            reasons = params.validate_all({**self._values, **changes})
        except Exception as error:  # a value no rule foresaw is refused, never a crash
            return SetParametersResult(successful=False, reason=f'invalid value: {error!r}')
        budget, floor = changes.get('latency_budget_ms'), self._stats.floor_ms()
        if not reasons and budget and floor is not None and budget < floor:
            reasons.append(
                f'latency_budget_ms {budget:g} is below the feasible floor: preprocessing, the'
                f' encoder and postprocessing alone took at least {floor:.1f} ms on recent'
                ' frames, and pruning only shortens the decoder'
            )
        if not reasons and self._apply_in_check:
            self._apply_parameters(parameters)
        return SetParametersResult(successful=not reasons, reason='; '.join(reasons))

    def _apply_parameters(self, parameters: list[Any]) -> None:
        changes = {p.name: _plain(p.value) for p in parameters}
        self._values = {**self._values, **changes}
        try:
            if self._apply_to_segmenter(changes) and changes.keys() & STATE_KEYS:
                self._save_state()
        except Exception:  # accepted values that the model cannot take must not kill the node
            self.get_logger().error(f'parameters not applied:\n{traceback.format_exc()}')

    def _apply_to_segmenter(self, changes: dict[str, Any]) -> bool:
        """Apply accepted changes to the model (if loaded); False when the vocabulary failed."""
        segmenter = self._segmenter
        if segmenter is None:
            return True  # configure installs them
        if changes.keys() & params.SEGMENTER_SETTINGS:
            segmenter.configure(
                score_threshold=float(self._values['score_threshold']),
                max_detections=int(self._values['max_detections']),
                latency_budget_ms=float(self._values['latency_budget_ms']),  # 0 = off
                pruning=params.pruning_config(self._values),
            )
        if changes.keys() & {'vocabulary', 'task'} and not self._syncing:
            try:
                with self._vocab_lock:
                    self._install_vocabulary()
            except SegmenterError as error:
                self.get_logger().error(f'vocabulary not changed: {error}')
                return False
            self._publish_label_info()
        return True


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _spin(executor: MultiThreadedExecutor) -> None:
    """`executor.spin()`, surviving an entity destroyed while another thread builds the wait set.

    Deactivating destroys the camera subscription (and its event handlers) from a service
    callback; if the executor's thread is adding those handlers to its next wait set at that
    moment, rclpy raises InvalidHandle out of spin and the node would die. The next wait set no
    longer holds them, so spinning on is right.
    """
    while rclpy.ok():
        try:
            executor.spin_once()
        except _rclpy.InvalidHandle:
            continue


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `mobius_node` / `python -m mobius_ros.ros.node` (takes --ros-args)."""
    rclpy.init(args=list(sys.argv if argv is None else argv))
    node = MobiusNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    if node.get_parameter('autostart').value and node.trigger_configure() == SUCCESS:
        node.trigger_activate()
    try:
        _spin(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        # SIGINT shuts the context down from the signal handler; if that lands between the
        # executor's context check and its wait-set creation, rclpy raises RCLError ("context is
        # not valid") instead of ExternalShutdownException. The same stop, unless the context
        # is still up: then the error is real.
        if rclpy.ok():
            raise
    finally:
        node.release()
        node.destroy_node()
        try:
            rclpy.try_shutdown()
        except _rclpy.RCLError:  # the signal handler shut it down between check and shutdown
            if rclpy.ok():
                raise
    return 0


if __name__ == '__main__':
    sys.exit(main())
