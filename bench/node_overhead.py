"""The node's overhead: one camera frame through the node's path against the bare graphs.

The node's path per frame is: sensor_msgs/Image -> RGB array (`message_to_rgb`), letterbox
and normalisation, the split graphs with the keep rule between decoder layers, post-processing
(scores, top-k, masks pasted back to the camera frame), and the output messages
(vision_msgs/Detection2DArray, the label image, mobius_ros_msgs/InstanceSegmentation). This
benchmark times exactly those calls of the project (the messages built with a rosbags typestore
factory, the same builders the node calls with its rclpy factory; DDS transport is not
included) interleaved with the bare split graphs (encoder, decoder layers with the same keep
rule, mask head) on the same letterboxed tensor, so the ratio is what everything around the
graphs costs.

Models: the bundled demo checkpoint (trained, so the instance counts are real) on a synthetic
scene at its 160x224 canvas, and MOBIUS-mobile-lite (random weights) at 384x512 on a 480x640
frame with the score threshold at 0 and 20 detections, so post-processing and messages carry
20 instances.

    python -m bench.node_overhead          # -> results/node_overhead.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    TimingConfig,
    environment,
    fix_threads,
    paired_ratio,
    time_interleaved,
    write_results,
)

CACHE = Path(tempfile.gettempdir()) / 'mobius-bench-node'


def _segmenter(checkpoint: str, size: tuple[int, int], **settings: Any) -> Any:
    from mobius_ros.runtime.segmenter import Segmenter, SegmenterConfig

    config = SegmenterConfig(
        checkpoint=checkpoint,
        backend='onnxruntime',
        engine_dir=str(CACHE / 'engines'),
        input_size=size,
        cache_dir=None,
        **settings,
    )
    return Segmenter(config)


def _frame_message(typestore: Any, rgb: np.ndarray) -> Any:
    from mobius_ros.ros import messages
    from mobius_ros.ros.conversions import rgb_to_image_fields

    factory = messages.RosbagsFactory(typestore)
    stamp = factory.make('builtin_interfaces/msg/Time', sec=1, nanosec=0)
    header = factory.make('std_msgs/msg/Header', stamp=stamp, frame_id='camera')
    return messages.image(factory, header, rgb_to_image_fields(rgb))


def cases_for(segmenter: Any, rgb: np.ndarray) -> tuple[dict, dict]:
    """{'node', 'bare_split'} callables and what one node frame produced."""
    from mobius_ros.export import io_spec
    from mobius_ros.ros import messages
    from mobius_ros.ros.bag import make_typestore
    from mobius_ros.ros.conversions import label_to_image_fields, message_to_rgb

    typestore = make_typestore()
    factory = messages.RosbagsFactory(typestore)
    msg = _frame_message(typestore, rgb)
    predictor = segmenter.predictor
    prediction = segmenter.segment(rgb)
    text = segmenter.text_inputs()
    tensor, _, _ = predictor.preprocess(rgb)
    feeds = {
        io_spec.IMAGE.name: tensor,
        io_spec.TEXT_TOKENS.name: text.text_tokens,
        io_spec.TEXT_MASK.name: text.text_mask,
        io_spec.CLASS_EMBED.name: text.class_embed,
    }

    def node() -> Any:
        frame = message_to_rgb(msg, compressed=False)
        prediction = segmenter.segment(frame)
        detections = messages.detection_array(factory, msg.header, prediction)
        label = messages.image(
            factory, msg.header, label_to_image_fields(prediction.label_image())
        )
        messages.instance_segmentation(
            factory, msg.header, prediction, detections=detections, label_image=label
        )
        return prediction

    def bare_split() -> Any:
        state = predictor.runners.encoder.infer(feeds)
        return predictor.decode(state, pruning=predictor.settings.pruning)

    info = {
        'instances': len(prediction.scores),
        'queries_kept': list(prediction.queries_kept),
        'frame_hw': list(rgb.shape[:2]),
        'canvas_hw': list(predictor.input_size),
    }
    return {'node': node, 'bare_split': bare_split}, info


def measure(name: str, segmenter: Any, rgb: np.ndarray, timing: TimingConfig) -> dict:
    cases, info = cases_for(segmenter, rgb)
    timings = time_interleaved(cases, timing)
    entry = {'model': name, **info}
    for key, value in timings.items():
        entry[f'{key}_ms'] = round(value.median_ms, 2)
    entry['node_over_bare_split'] = round(paired_ratio(timings['node'], timings['bare_split']), 3)
    print(f'[node_overhead] {entry}')
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args(argv)
    timing = TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    fix_threads(args.threads)
    from mobius_ros.train.data.synthetic import SynthConfig, generate_scene

    entries = []
    scene = generate_scene(np.random.default_rng(0), split='test', config=SynthConfig((480, 640)))
    with _segmenter(None, (160, 224)) as demo:
        demo.set_agnostic()
        entries.append(measure('demo checkpoint (agnostic)', demo, scene.image, timing))
    entries.append(_mobile_lite(timing))
    payload = {
        'benchmark': 'node_overhead',
        'description': 'median over interleaved rounds of (node path / bare graphs) per frame; '
        'node path = Image message -> RGB -> letterbox -> split graphs with pruning -> '
        'post-processing -> Detection2DArray + label image + InstanceSegmentation messages',
        'environment': environment(timing),
        'results': entries,
    }
    print(f'wrote {write_results("node_overhead", payload)}')
    return 0


def _mobile_lite(timing: TimingConfig) -> dict:
    """MOBIUS-mobile-lite on random weights, saved as a checkpoint and opened as the node
    opens one (exported with its MiniLM text tower into the engine cache on first use)."""
    from bench.ours import build_model_for_bench
    from mobius_ros.model.checkpoint import save_checkpoint

    size = (384, 512)
    checkpoint = CACHE / 'mobius-mobile-lite-random.safetensors'
    if not checkpoint.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        save_checkpoint(build_model_for_bench('MOBIUS-mobile-lite', size), checkpoint)
    rgb = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    with _segmenter(str(checkpoint), size, score_threshold=0.0, max_detections=20) as segmenter:
        segmenter.set_vocabulary(['person', 'cup', 'chair', 'bottle', 'laptop'])
        return measure('MOBIUS-mobile-lite (random weights)', segmenter, rgb, timing)


if __name__ == '__main__':
    raise SystemExit(main())
