"""MOBIUS exported to split ONNX graphs and run through the project's predictor.

This is the path the robot runs on a CPU (and, with TensorRT runners, on a Jetson): encoder
graph, one graph per decoder layer with the keep rule between them on the host, mask head on
the survivors. Exports are cached under a folder named by `export_key` (config + weights +
canvas), so a second benchmark run reuses them and a changed model never picks up stale graphs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.ops.coco_classes import COCO_CLASSES

EXPORT_CACHE = Path(tempfile.gettempdir()) / 'mobius-bench-exports'


@dataclass
class ExportedVariant:
    """An exported variant with ONNX Runtime runners and its cached 80-class text inputs.

    Attributes:
        variant: the build_model name.
        directory: the export folder.
        runners: GraphRunners (encoder, decoder layers, mask head).
        full: runner of the unpruned single full graph.
        text: TextInputs of the 80 COCO names (computed once, as the vocabulary cache does).
        input_size: (H, W) canvas.
        num_queries: Q0, the queries entering the first decoder layer.
        num_layers: decoder layers L.
    """

    variant: str
    directory: Path
    runners: Any
    full: Any
    text: Any
    input_size: tuple[int, int]
    num_queries: int
    num_layers: int

    def feeds(self) -> dict[str, np.ndarray]:
        """Encoder / full-graph inputs for a random normalised canvas."""
        from mobius_ros.export import io_spec

        image = np.random.default_rng(0).standard_normal((1, 3, *self.input_size))
        return {
            io_spec.IMAGE.name: image.astype(np.float32),
            io_spec.TEXT_TOKENS.name: self.text.text_tokens,
            io_spec.TEXT_MASK.name: self.text.text_mask,
            io_spec.CLASS_EMBED.name: self.text.class_embed,
        }

    def close(self) -> None:
        self.runners.close()
        self.full.close()


def runner_factory(*, threads: int, spinning: bool) -> Callable[[str, Path], Any]:
    """ONNX Runtime runners with `threads` intra-op threads; spinning off unless asked for.

    ONNX Runtime's intra-op pools busy-wait after each call by default. With one pool per
    split graph (8 sessions for 6 layers) the idle pools spin while the next graph computes,
    and on a loaded 2-core CPU that made the split path ~10x slower than the same graphs with
    spinning off; `OnnxRuntimeRunner` turns it off unless asked, `--ort-spinning` measures it.
    """
    from mobius_ros.runtime.runner import OnnxRuntimeRunner

    def make(name: str, path: Path) -> Any:
        return OnnxRuntimeRunner(path, intra_op_threads=threads, spinning=spinning, name=name)

    return make


def export_variant(
    variant: str,
    size: tuple[int, int],
    *,
    threads: int,
    spinning: bool = False,
    stand_in_text: bool = False,
    cache: Path = EXPORT_CACHE,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> ExportedVariant:
    """Build `variant` on random weights, export it (or reuse the export), open ORT runners."""
    import torch

    from bench.ours import build_model_for_bench
    from mobius_ros.export.onnx import ExportOptions, export_key, export_model
    from mobius_ros.runtime.exported import ExportedModel
    from mobius_ros.runtime.predictor import TextInputs
    from mobius_ros.runtime.vocabulary import TextBatch

    model = build_model_for_bench(
        variant, size, stand_in_text=stand_in_text, seed=seed, overrides=overrides
    )
    options = ExportOptions(input_size=tuple(size), referring=False, full=True, text_encoder=False)
    directory = cache / f'{variant}-{size[0]}x{size[1]}-{export_key(model, options)}'
    if not (directory / 'model.json').exists():
        export_model(model, directory, options)
    with torch.no_grad():
        features = model.encode_text(COCO_CLASSES)
    text = TextInputs.from_batch(
        TextBatch(
            tokens=features.tokens.numpy().astype(np.float32),
            mask=features.mask.numpy().astype(bool),
            pooled=features.pooled.numpy().astype(np.float32),
        )
    )
    exported = ExportedModel.open(directory)
    factory = runner_factory(threads=threads, spinning=spinning)
    runners = exported.runners(factory)
    full = factory('full', exported.graph_path('full'))
    return ExportedVariant(
        variant=variant,
        directory=directory,
        runners=runners,
        full=full,
        text=text,
        input_size=exported.input_size,
        num_queries=exported.num_queries,
        num_layers=exported.num_layers,
    )


def split_runner(exported: ExportedVariant, pruning: Any) -> Callable[[], tuple[int, ...]]:
    """Encoder + decoder host loop with `pruning` + mask head; returns the kept counts.

    Pre- and post-processing are left out so that split and full graph compare like with like.
    """
    from mobius_ros.runtime.predictor import Predictor

    predictor = Predictor(exported.runners, input_size=exported.input_size)
    feeds = exported.feeds()

    def run() -> tuple[int, ...]:
        state = exported.runners.encoder.infer(feeds)
        result, _ = predictor.decode(state, pruning=pruning)
        return result.queries_kept

    return run


def full_runner(exported: ExportedVariant) -> Callable[[], object]:
    """The single unpruned full graph."""
    feeds = exported.feeds()

    def run() -> object:
        return exported.full.infer(feeds)

    return run
