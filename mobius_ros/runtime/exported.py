"""An exported model folder (`mobius export`) opened without torch: graphs, text, metadata.

`model.json` (written by `export/onnx.py`) says which graphs exist, their tensors, the fixed
canvas, the text encoder's identity and the tokenizer file. This module turns that folder into
runners for the predictor and a text encoder for the vocabulary cache, over any backend that can
open a graph file (ONNX Runtime here; TensorRT engines built from these files).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobius_ros.common.errors import ModelLoadError
from mobius_ros.common.tokenizer import HF_CLIP_BPE, load_tokenizer
from mobius_ros.export import io_spec
from mobius_ros.export.engine_cache import file_sha256
from mobius_ros.runtime.predictor import GraphRunners
from mobius_ros.runtime.runner import Runner
from mobius_ros.runtime.vocabulary import TextBatch

FORMAT = io_spec.EXPORT_FORMAT

# (graph name, path of its .onnx file) -> a runner for it
RunnerFactory = Callable[[str, Path], Runner]


@dataclass(frozen=True)
class ExportedModel:
    """A validated export folder.

    Attributes:
        directory: the folder.
        meta: the parsed model.json.
    """

    directory: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, directory: str | Path, *, verify_hashes: bool = True) -> ExportedModel:
        """Read and check model.json and every file it names (graphs, tokenizer).

        Each file's size (and, with `verify_hashes`, sha256) is compared with the one model.json
        recorded, so a file cut short by a power cut, flipped by a bad disk or copied in from
        another export is named here rather than failing inside ONNX Runtime's parser. Exports
        older than recorded sizes are checked by sha256 alone.

        Args:
            verify_hashes: also compare each file's sha256 (about 0.1 s per 100 MB).

        Raises:
            ModelLoadError: missing or unreadable model.json, wrong format, missing or altered
                files; the message names the file and what is wrong with it.
        """
        directory = Path(directory).expanduser()
        path = directory / io_spec.MODEL_JSON
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(
                f'no {io_spec.MODEL_JSON} in {directory}: not an export'
            ) from None
        except (OSError, ValueError) as error:
            raise ModelLoadError(f'cannot read {path}: {error}') from error
        if not isinstance(meta, dict):
            raise ModelLoadError(f'cannot read {path}: not a JSON object')
        if meta.get('format') != FORMAT:
            raise ModelLoadError(f'{path}: format {meta.get("format")!r}, expected {FORMAT!r}')
        graphs = meta.get('graphs')
        if not isinstance(graphs, dict) or not graphs:
            raise ModelLoadError(f'{path} lists no graphs')
        for name, graph in graphs.items():
            if not isinstance(graph, dict) or not isinstance(graph.get('file'), str):
                raise ModelLoadError(f'{path}: graph {name!r} names no file')
            _check_file(directory / graph['file'], graph, f'graph {name!r}', path, verify_hashes)
        tokenizer = meta.get('tokenizer')
        if isinstance(tokenizer, dict) and isinstance(tokenizer.get('file'), str):
            file = directory / tokenizer['file']
            _check_file(file, tokenizer, 'tokenizer', path, verify_hashes)
        return cls(directory, meta)

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.meta['input_size']
        return int(h), int(w)

    @property
    def num_layers(self) -> int:
        return int(self.meta['num_layers'])

    @property
    def num_queries(self) -> int:
        return int(self.meta['dims']['Q0'])

    @property
    def export_key(self) -> str:
        return str(self.meta['export_key'])

    @property
    def has_referring(self) -> bool:
        return io_spec.decoder_layer_spec(0, referring=True).name in self.meta['graphs']

    def graph_path(self, name: str) -> Path:
        if name not in self.meta['graphs']:
            raise ModelLoadError(f'graph {name!r} was not exported to {self.directory}')
        return self.directory / self.meta['graphs'][name]['file']

    def runners(self, factory: RunnerFactory) -> GraphRunners:
        """Runners for the encoder, decoder layers (both modes) and mask head."""

        def make(name: str) -> Runner:
            return factory(name, self.graph_path(name))

        layers = [make(io_spec.decoder_layer_name(i)) for i in range(self.num_layers)]
        referring = (
            [
                make(io_spec.decoder_layer_spec(i, referring=True).name)
                for i in range(self.num_layers)
            ]
            if self.has_referring
            else []
        )
        return GraphRunners(
            encoder=make(io_spec.ENCODER),
            decoder_layers=layers,
            mask_head=make(io_spec.MASK_HEAD),
            referring_layers=referring,
        )

    def text_encoder(self, factory: RunnerFactory, *, lazy: bool = False) -> GraphTextEncoder:
        """The exported text encoder with its tokenizer (torch-free); with `lazy`, its graph is
        loaded on the first phrase that the embedding cache does not hold (for ONNX Runtime;
        a TensorRT factory may build an engine, which must not happen inside a service call)."""
        tokenizer = self.meta.get('tokenizer')
        if not tokenizer:
            raise ModelLoadError(f'{self.directory} was exported without the text encoder')
        path = self.graph_path(io_spec.TEXT_ENCODER)
        if not path.is_file():
            raise ModelLoadError(f'ONNX graph not found: {path}')

        def make() -> Runner:
            return factory(io_spec.TEXT_ENCODER, path)

        return GraphTextEncoder(
            make if lazy else make(),
            load_tokenizer(tokenizer, self.directory),
            identity=str(self.meta['text_encoder']['identity']),
            width=int(self.meta['text_encoder']['width']),
            # GLEE's early fusion reads a referring expression's padding positions too.
            keep_padding=tokenizer.get('kind') == HF_CLIP_BPE,
        )


class GraphTextEncoder:
    """Phrases -> token features through the text-encoder graph (the cache's `encode_fn`).

    Args:
        runner: runner of text_encoder.onnx, or a function that makes it: then it is made on
            the first `encode`, so a process whose phrases all come from the embedding cache
            never holds the graph (MiniLM's is 90 MB) in memory.
        tokenizer: phrases -> token ids [P, L].
        identity: the text encoder's identity (the same string as the PyTorch encoder's, so
            the on-disk cache is shared between backends).
        width: D.
        keep_padding: keep all L positions (GLEE's text path), else cut to the longest phrase.
    """

    def __init__(
        self,
        runner: Runner | Callable[[], Runner],
        tokenizer: Callable[[Sequence[str]], np.ndarray],
        *,
        identity: str,
        width: int,
        keep_padding: bool = False,
    ) -> None:
        lazy = not hasattr(runner, 'infer')
        self._runner: Runner | None = None if lazy else runner  # type: ignore[assignment]
        self._make: Callable[[], Runner] | None = runner if lazy else None  # type: ignore[assignment]
        self._lock = threading.Lock()
        self.keep_padding = keep_padding
        self.tokenizer = tokenizer
        self.identity = identity
        self.width = width

    def encode(self, phrases: Sequence[str]) -> TextBatch:
        """[K] phrases -> tokens [K, L', D], mask [K, L'], pooled [K, D] (L' = longest)."""
        ids = self.tokenizer(list(phrases))
        out = self.runner.infer({'token_ids': ids})
        mask = out['mask'].astype(bool)
        # Trailing padding carries no information: cut it so cached entries stay small.
        length = mask.shape[1] if self.keep_padding else max(int(mask.sum(axis=1).max()), 1)
        return TextBatch(
            tokens=np.ascontiguousarray(out['tokens'][:, :length], np.float32),
            mask=np.ascontiguousarray(mask[:, :length]),
            pooled=np.ascontiguousarray(out['pooled'], np.float32),
        )

    __call__ = encode

    @property
    def runner(self) -> Runner:
        """The graph's runner, made now if it was deferred."""
        with self._lock:  # two first phrases on two service threads must not load it twice
            if self._runner is None:
                assert self._make is not None
                self._runner = self._make()
            return self._runner

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()


def _check_file(
    file: Path, record: dict[str, Any], what: str, model_json: Path, verify_hashes: bool
) -> None:
    """`file` exists with the size (and sha256) `record` holds, else a ModelLoadError."""
    if not file.is_file():
        raise ModelLoadError(f'{what} is missing: {file}')
    size = record.get('size')
    if isinstance(size, int) and file.stat().st_size != size:
        raise ModelLoadError(
            f'{what} file {file} has {file.stat().st_size} bytes, {model_json.name} recorded'
            f' {size} (cut short or replaced)'
        )
    sha256 = record.get('sha256')
    if verify_hashes and isinstance(sha256, str) and file_sha256(file) != sha256:
        raise ModelLoadError(
            f'{what} file {file} does not match the sha256 recorded in {model_json} (corrupt'
            ' or from another export)'
        )


def onnxruntime_factory(*, intra_op_threads: int | None = None) -> RunnerFactory:
    """A RunnerFactory of ONNX Runtime CPU runners."""
    from mobius_ros.runtime.runner import OnnxRuntimeRunner

    def make(name: str, path: Path) -> Runner:
        return OnnxRuntimeRunner(path, intra_op_threads=intra_op_threads, name=name)

    return make
