"""The node's service handlers and vocabulary plumbing (a mixin of `MobiusNode`).

Kept apart from the node's lifecycle and frame path so each file reads top-down. The mixin uses
the node's state: `_segmenter`, `_factory`, `_values`, `_pubs`, `_vocab_lock`, `_infer_lock`,
`_latest`, `_enabled`, `_last_frame_id`, `_syncing`, `_launched`, `_state_path`, and rclpy's
`Node` methods.
"""

from __future__ import annotations

import functools
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

from rclpy.parameter import Parameter
from sensor_msgs.msg import CompressedImage

from mobius_ros.common.errors import SegmenterError
from mobius_ros.ros import messages, params, state
from mobius_ros.ros.conversions import message_to_rgb
from mobius_ros.runtime.result import Task


def _guarded(handler: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """A service handler that answers, never raises: rclpy would let an exception out of a
    service callback end the executor, and with it the node."""

    @functools.wraps(handler)
    def guarded(self: Any, request: Any, response: Any) -> Any:
        try:
            return handler(self, request, response)
        except Exception as error:
            self.get_logger().error(
                f'{handler.__name__[4:]} failed:\n{traceback.format_exc()}',
                throttle_duration_sec=10.0,
            )
            if hasattr(response, 'success'):
                response.success = False
            if hasattr(response, 'message'):
                response.message = f'internal error: {error!r}'
            return response

    return guarded


class ServiceHandlers:
    """set_vocabulary, get_vocabulary, segment and enable; label_info on every swap."""

    # Persisted state (mobius_ros/ros/state.py says what and when) -------------------------------

    def _restore_state(self) -> None:
        """Apply the saved runtime state where the launch values allow it; never raises."""
        name, logger = self.get_fully_qualified_name(), self.get_logger()
        try:
            path = state.state_path(
                str(self._values['state_dir']), str(self._values['cache_dir']), name
            )
            saved, problem = state.load(path, name)
            self._state_path = path
            if saved is None:
                if problem:
                    logger.warning(f'saved state ignored: {problem}')
                return
            restore, dropped = saved.restorable(self._launched)
            for line in dropped:
                logger.info(f'saved state not restored for {line}')
            reasons = params.validate_all({**self._values, **restore})
            if reasons:
                logger.warning(f'saved state ignored: {path}: ' + '; '.join(reasons))
                return
            if not restore:
                return
            typed = {k: _typed(k, v) for k, v in restore.items()}
            results = self.set_parameters([Parameter(k, value=v) for k, v in typed.items()])
            refused = [r.reason for r in results if not r.successful]
            if refused:
                logger.warning(f'saved state ignored: {path}: ' + '; '.join(refused))
                return
        except Exception as error:  # e.g. a state folder that cannot be read: start without it
            logger.warning(f'saved state ignored: {error!r}')
            return
        self._values.update({k: tuple(v) if isinstance(v, list) else v for k, v in typed.items()})
        shown = ', '.join(f'{k} {v}' for k, v in sorted(typed.items()))
        logger.info(f'restored from {path}: {shown}')

    def _save_state(self) -> None:
        """Save the runtime state (after an accepted change of one of `state.KEYS`)."""
        if self._state_path is None:
            return
        runtime = {key: self._values[key] for key in state.KEYS}
        saved = state.NodeState(self.get_fully_qualified_name(), self._launched, runtime)
        try:
            state.save(self._state_path, saved)
        except OSError as error:  # a full or read-only disk: keep running, unpersisted
            self.get_logger().warning(
                f'state not saved to {self._state_path}: {error}', throttle_duration_sec=60.0
            )

    # Vocabulary --------------------------------------------------------------------------------

    def _install_first_vocabulary(self) -> None:
        """Install the vocabulary on configure; a restored one that the model refuses (e.g. a
        smaller max_vocabulary given at launch) gives way to the launch vocabulary."""
        try:
            self._install_vocabulary()
        except SegmenterError as error:
            keys = ('task', 'vocabulary')
            if all(self._values[k] == self._launched[k] for k in keys):
                raise
            message = f'restored vocabulary refused ({error}): using the launch vocabulary'
            self.get_logger().warning(message)
            self._syncing = True  # the parameters follow; the install is done here
            launched = [Parameter(k, value=_typed(k, self._launched[k])) for k in keys]
            try:
                self.set_parameters(launched)
            finally:
                self._syncing = False
            self._install_vocabulary()

    def _install_vocabulary(self) -> Any:
        if self._values['task'] == Task.AGNOSTIC.value:
            return self._segmenter.set_agnostic()
        return self._segmenter.set_vocabulary(list(self._values['vocabulary']))

    def _publish_label_info(self) -> None:
        publisher = self._pubs.get('label_info')
        if publisher is None or self._segmenter is None:
            return
        header = self._factory.make(
            'std_msgs/msg/Header', stamp=self.get_clock().now().to_msg(),
            frame_id=self._last_frame_id,
        )  # fmt: skip
        phrases = self._segmenter.vocabulary.phrases
        threshold = float(self._values['score_threshold'])
        publisher.publish(messages.label_info(self._factory, header, phrases, threshold))

    @_guarded
    def _on_set_vocabulary(self, request: Any, response: Any) -> Any:
        if self._segmenter is None:
            response.success, response.message = False, 'the node is not configured (no model)'
            return response
        try:
            with self._vocab_lock:
                if request.agnostic:
                    update = self._segmenter.set_agnostic()
                else:
                    update = self._segmenter.set_vocabulary(
                        list(request.phrases), append=request.append
                    )
                self._sync_parameters(update.vocabulary)
        except SegmenterError as error:
            response.success, response.message = False, str(error)
            self.get_logger().warning(f'set_vocabulary refused: {error}')
            return response
        self._publish_label_info()
        vocabulary = update.vocabulary
        response.success = True
        response.message = (
            f'{len(vocabulary.phrases)} phrases, {update.encoded} encoded,'
            f' {update.cache_hits} from cache in {update.encode_ms:.1f} ms'
        )
        self._fill_vocabulary(response, vocabulary)
        response.encode_ms = float(update.encode_ms)
        response.cache_hits = int(update.cache_hits)
        response.encoded = int(update.encoded)
        return response

    def _sync_parameters(self, vocabulary: Any) -> None:
        # Keep `ros2 param get` truthful after a service call, without re-encoding it again.
        self._syncing = True
        try:
            updates = [Parameter('task', value=vocabulary.task.value)]
            if vocabulary.task != Task.AGNOSTIC:
                updates.append(Parameter('vocabulary', value=list(vocabulary.phrases)))
            self.set_parameters(updates)
        finally:
            self._syncing = False

    @_guarded
    def _on_get_vocabulary(self, request: Any, response: Any) -> Any:
        if self._segmenter is not None:
            self._fill_vocabulary(response, self._segmenter.vocabulary)
        return response

    @staticmethod
    def _fill_vocabulary(response: Any, vocabulary: Any) -> None:
        response.phrases = list(vocabulary.phrases)
        response.class_ids = list(range(len(vocabulary.phrases)))
        response.vocabulary_version = int(vocabulary.version)
        response.task = vocabulary.task.value

    # One-shot segmentation and enable ---------------------------------------------------------

    @_guarded
    def _on_segment(self, request: Any, response: Any) -> Any:
        response.success = False
        segmenter = self._segmenter
        if segmenter is None:
            response.message = 'the node is not configured (no model)'
            return response
        asks = [bool(request.phrases), request.agnostic, bool(request.expression)]
        if sum(asks) > 1:
            response.message = 'give at most one of phrases, agnostic and expression'
            return response
        if math.isnan(request.score_threshold):  # neither a threshold nor "the node's own"
            response.message = (
                "score_threshold is NaN: give one in [0, 1], or a negative value for the node's"
                ' current setting'
            )
            return response
        if len(request.image.data):
            msg: Any = request.image
        elif len(request.compressed_image.data):
            msg = request.compressed_image
        elif self._latest is not None:
            msg = self._latest
        else:
            response.message = 'no image in the request and no frame received yet'
            return response
        started = time.perf_counter()
        try:
            rgb = message_to_rgb(msg, compressed=isinstance(msg, CompressedImage))
            threshold = request.score_threshold if request.score_threshold >= 0 else None
            with self._infer_lock:
                prediction = segmenter.segment(
                    rgb,
                    phrases=list(request.phrases) or None,
                    expression=request.expression or None,
                    agnostic=request.agnostic,
                    score_threshold=threshold,
                )
        except SegmenterError as error:  # ImageError and VocabularyError included
            response.message = str(error)
            self.get_logger().warning(f'segment refused: {error}')
            return response
        response.result = messages.instance_segmentation(
            self._factory, msg.header, prediction,
            with_masks=bool(self._values['publish_instance_masks']),
            latency_ms=(time.perf_counter() - started) * 1e3,
        )  # fmt: skip
        response.success = True
        response.message = f'{len(prediction)} instances ({prediction.task.value})'
        return response

    @_guarded
    def _on_enable(self, request: Any, response: Any) -> Any:
        self._enabled = bool(request.data)
        response.success = True
        response.message = 'processing enabled' if self._enabled else 'processing paused'
        return response


def _typed(name: str, value: Any) -> Any:
    """`value` as the parameter's declared type (JSON writes 40.0 back as 40 when hand-edited)."""
    default = params.SPECS[name].default
    if isinstance(default, float):
        return float(value)
    return list(value) if isinstance(default, tuple) else value
