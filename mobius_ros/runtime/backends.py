"""Opening a model for a backend: checkpoint or export folder -> runners and text encoder.

Used by the `Segmenter` facade. 'torch' runs the checkpoint's model through `TorchRunner`s over
the export wrappers (the very modules the ONNX graphs are traced from); 'onnxruntime' and
'tensorrt' run an export folder, exported from the checkpoint into the engine cache on first use
(needs torch once, in a child process: PyTorch takes about 0.9 GB of resident memory that a
long-running ONNX Runtime or TensorRT process, such as the node, must not keep); an existing
export folder loads without torch.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mobius_ros.common import atomic
from mobius_ros.common.errors import ModelLoadError
from mobius_ros.export import io_spec
from mobius_ros.runtime.exported import FORMAT, ExportedModel, RunnerFactory, onnxruntime_factory
from mobius_ros.runtime.predictor import GraphRunners

if TYPE_CHECKING:
    from mobius_ros.export.engine_cache import EnginePlan
    from mobius_ros.model.mobius import Mobius
    from mobius_ros.runtime.segmenter import SegmenterConfig

_LOG = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[1] / 'assets' / 'demo'


def open_backend(source: Path, config: SegmenterConfig) -> tuple[GraphRunners, object, int]:
    """Runners, text encoder (`identity`, `encode`) and initial query count for `config`."""
    if config.backend == 'torch':
        return _open_torch(source, config)
    return _open_export(source, config)


def resolve_checkpoint(checkpoint: str | None) -> Path:
    """The file or export folder that `checkpoint` names (None: the bundled demo model).

    Raises:
        ModelLoadError: nothing usable there; the message says what was looked for.
    """
    path = DEMO_DIR if checkpoint is None else Path(checkpoint).expanduser()
    what = 'the bundled demo model' if checkpoint is None else 'checkpoint'
    if path.is_dir():
        if (path / io_spec.MODEL_JSON).is_file():
            return path
        found = sorted(path.glob('*.safetensors'))
        if len(found) != 1:
            hint = ' (train it with `mobius train --recipe demo`)' if checkpoint is None else ''
            raise ModelLoadError(
                f'{what}: {path} holds {len(found)} .safetensors files and no'
                f' {io_spec.MODEL_JSON}; give one checkpoint file or an export folder{hint}'
            )
        path = found[0]
    if path.is_file() and path.suffix == '.safetensors':
        if not path.with_suffix('.json').is_file():
            raise ModelLoadError(f'checkpoint {path} has no config {path.with_suffix(".json")}')
        return path
    if path.is_file() and path.name == io_spec.MODEL_JSON:
        return path.parent
    raise ModelLoadError(f'{what} not found: {path} (a .safetensors file or an export folder)')


def export_cache_key(checkpoint: Path, input_size: tuple[int, int]) -> str:
    """Key of the export of `checkpoint` at `input_size`, computed without torch.

    Hashes the weights file and its config, so a retrained checkpoint gets a new folder.
    """
    digest = hashlib.sha256(f'{FORMAT}:{input_size[0]}x{input_size[1]}'.encode())
    for path in (checkpoint, checkpoint.with_suffix('.json')):
        with path.open('rb') as handle:
            for chunk in iter(lambda h=handle: h.read(1 << 20), b''):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _open_torch(source: Path, config: SegmenterConfig) -> tuple[GraphRunners, object, int]:
    """PyTorch backend: the checkpoint's model behind TorchRunners over the export wrappers."""
    if source.is_dir():
        raise ModelLoadError(
            f'backend torch needs a .safetensors checkpoint, got the export folder {source}'
        )
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise ModelLoadError(
            "backend 'torch' needs PyTorch (install the 'torch' extra) or use 'onnxruntime'"
        ) from error
    from mobius_ros.model.checkpoint import load_checkpoint

    try:
        model = load_checkpoint(source, device=config.device)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f'cannot load checkpoint {source}: {error}') from error
    runners = torch_graph_runners(model, input_size=config.input_size, device=config.device)
    return runners, _TorchText(model), int(model.decoder.num_queries)


def torch_graph_runners(
    model: Mobius, *, input_size: tuple[int, int], device: str = 'cpu'
) -> GraphRunners:
    """The model's stages as TorchRunners over the export wrappers, one per exported graph.

    The same modules the ONNX graphs are traced from, so the torch backend and the exports
    run one host loop.
    """
    from mobius_ros.export import wrappers
    from mobius_ros.runtime.torch_runner import TorchRunner

    shapes = wrappers.memory_shapes(model, input_size)

    def runner(module: Callable[..., object], spec: io_spec.GraphSpec) -> TorchRunner:
        return TorchRunner(
            module, inputs=spec.inputs, outputs=spec.outputs, device=device, name=spec.name
        )

    layers = range(model.num_layers)
    return GraphRunners(
        encoder=runner(wrappers.EncoderGraph(model), io_spec.ENCODER_SPEC),
        decoder_layers=[
            runner(
                wrappers.DecoderLayerGraph(model, i, shapes, referring=False),
                io_spec.decoder_layer_spec(i),
            )
            for i in layers
        ],
        mask_head=runner(wrappers.MaskHeadGraph(model), io_spec.MASK_HEAD_SPEC),
        referring_layers=[
            runner(
                wrappers.DecoderLayerGraph(model, i, shapes, referring=True),
                io_spec.decoder_layer_spec(i, referring=True),
            )
            for i in layers
        ],
    )


class _TorchText:
    """The model's own text encoder as the vocabulary cache's `encode_fn`."""

    def __init__(self, model: object) -> None:
        self._model = model
        self.identity = str(model.text_encoder.identity)  # type: ignore[attr-defined]

    def encode(self, phrases: Sequence[str]) -> object:
        import torch

        with torch.inference_mode():
            return self._model.encode_text(list(phrases))  # type: ignore[attr-defined]


def _open_export(source: Path, config: SegmenterConfig) -> tuple[GraphRunners, object, int]:
    """ONNX Runtime / TensorRT: an export folder, exported from a checkpoint on first use."""
    if source.is_dir():
        # The user's own export is not a cache: damage there is an error naming the file.
        exported = ExportedModel.open(source)
        _check_canvas(exported, config)
    else:
        exported = _cached_export(source, config)
    factory = (
        onnxruntime_factory()
        if config.backend == 'onnxruntime'
        else _tensorrt_factory(exported, config)
    )
    # Phrases usually come from the embedding cache: the ONNX Runtime text graph (90 MB for
    # MiniLM) is loaded only when one does not.
    lazy = config.backend == 'onnxruntime'
    encoder = exported.text_encoder(factory, lazy=lazy)
    return exported.runners(factory), encoder, exported.num_queries


def _check_canvas(exported: ExportedModel, config: SegmenterConfig) -> None:
    if exported.input_size != tuple(config.input_size):
        raise ModelLoadError(
            f'{exported.directory} was exported for a {exported.input_size} canvas, but'
            f' input_size is {tuple(config.input_size)}; re-export or change input_size'
        )


def fallback_export_root() -> Path:
    """Where exports go when `engine_dir` cannot be written (read-only, full)."""
    return Path(tempfile.gettempdir()) / 'mobius_ros' / 'engines'


def _cached_export(source: Path, config: SegmenterConfig) -> ExportedModel:
    """The export of checkpoint `source` in `<engine_dir>/<export_key>/`, verified; exported
    again (one warning) when missing or damaged, into a temporary folder (one warning) when
    `engine_dir` cannot be written."""
    key = export_cache_key(source, config.input_size)
    directory = Path(config.engine_dir).expanduser() / key
    for root in (directory.parent, fallback_export_root()):
        atomic.sweep_leftovers(root)  # staged folders of exports killed mid-write
    exported = _load_cached(directory, config)
    if exported is not None:
        return exported
    if config.build_policy == 'never':
        raise ModelLoadError(
            f'no usable export of {source} in {directory} and build_policy is never; run'
            f' `mobius export --checkpoint {source} --out {directory}`'
        )
    problem = atomic.unwritable(directory.parent)
    if problem is None:
        try:
            return _export_verified(source, directory, config)
        except _CacheWriteError as error:
            problem = str(error)
    fallback = fallback_export_root() / key
    _LOG.warning(
        'cannot write the export cache %s (%s); exporting into %s for this run',
        directory.parent,
        problem,
        fallback.parent,
    )
    exported = _load_cached(fallback, config)
    if exported is not None:
        return exported
    return _export_verified(source, fallback, config)


def _load_cached(directory: Path, config: SegmenterConfig) -> ExportedModel | None:
    """The verified export in `directory`; None if there is none or it was damaged (then it
    is said once and moved out of the way, so that it is exported again)."""
    if not directory.exists():
        return None
    try:
        exported = ExportedModel.open(directory)
        _check_canvas(exported, config)
        return exported
    except ModelLoadError as error:
        problem = str(error)
    if config.build_policy == 'never':
        raise ModelLoadError(
            f'the cached export {directory} is damaged ({problem}) and build_policy is never;'
            ' delete it, or set build_policy "if_missing" to export it again'
        )
    _LOG.warning('cached export %s is damaged (%s); exporting it again', directory, problem)
    _discard(directory)
    return None


def _discard(directory: Path) -> None:
    # Renamed first, so no other reader picks it up while it is being deleted.
    trash = directory.with_name(f'.{directory.name}.damaged-{time.time_ns()}')
    try:
        directory.rename(trash)
    except OSError:
        return  # an unwritable cache: the export goes to the fallback folder instead
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _export_verified(source: Path, directory: Path, config: SegmenterConfig) -> ExportedModel:
    _export_checkpoint(source, directory, config.input_size)
    exported = ExportedModel.open(directory)
    _check_canvas(exported, config)
    return exported


class _CacheWriteError(ModelLoadError):
    """The export failed because its folder could not be written (read-only, full, quota)."""


# errno values of a cache folder that cannot take the export (EPERM, EACCES, ENOTDIR, EFBIG,
# ENOSPC, EROFS, EDQUOT): the export is retried in a temporary folder.
_WRITE_ERRNOS = tuple(
    f'[Errno {getattr(errno, name)}]'
    for name in ('EPERM', 'EACCES', 'ENOTDIR', 'EFBIG', 'ENOSPC', 'EROFS', 'EDQUOT')
    if hasattr(errno, name)
)


def _export_checkpoint(source: Path, directory: Path, input_size: tuple[int, int]) -> None:
    """`mobius export` of `source` into `directory`, run as a child process so that torch is
    never imported into this one."""
    if importlib.util.find_spec('torch') is None:
        raise ModelLoadError(
            f'exporting {source} to ONNX needs PyTorch (not installed here); export it on a'
            ' machine with torch (`mobius export`) and pass the export folder as the checkpoint'
        )
    _LOG.info('exporting %s to %s (first use of this checkpoint)', source, directory)
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports this very code
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (package_root, env.get('PYTHONPATH')) if p)
    command = [
        sys.executable, '-m', 'mobius_ros.cli', 'export', '--checkpoint', str(source),
        '--out', str(directory), '--input-size', str(input_size[0]), str(input_size[1]),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()][-6:]
        kind = (
            _CacheWriteError
            if any(code in done.stderr for code in _WRITE_ERRNOS)
            else ModelLoadError
        )
        raise kind(
            f'cannot export checkpoint {source} to ONNX (`mobius export` exited with'
            f' {done.returncode}):\n' + '\n'.join(lines)
        )


def tensorrt_plan(exported: ExportedModel, config: SegmenterConfig) -> EnginePlan:
    """The engine plan of the runtime: `<engine_dir>/<export_key>/<precision>/`, the same
    plan `mobius build-engine` makes with its defaults (engine root, precision, max_vocabulary),
    so engines built ahead of time load without a rebuild."""
    from mobius_ros.export.engine_cache import engine_plan

    return engine_plan(
        exported.directory,
        exported.meta,
        engine_root=config.engine_dir,
        precision=config.engine_precision,
        max_vocabulary=config.max_vocabulary,
    )


def _tensorrt_factory(exported: ExportedModel, config: SegmenterConfig) -> RunnerFactory:
    """Engines of `tensorrt_plan`, validated or built per graph by build policy."""
    from mobius_ros.export.tensorrt_build import ensure_engine
    from mobius_ros.runtime.tensorrt_runner import TensorRTRunner

    device = int(config.device.split(':')[1]) if config.device.startswith('cuda:') else 0
    plan = tensorrt_plan(exported, config)
    said: set[str] = set()

    def warn_once(message: str) -> None:
        # every graph of an unwritable engine cache would say the same line
        if message not in said:
            said.add(message)
            _LOG.warning(message)

    def make(name: str, path: Path) -> TensorRTRunner:
        engine = ensure_engine(
            path,
            plan,
            policy=config.build_policy,
            log=_LOG.info,
            warn=warn_once,
            device=device,
            fallback_root=fallback_export_root(),
            # ExportedModel.open has just checked the recorded hash against the file (an
            # export without one is hashed by the engine check instead).
            onnx_sha256=exported.meta['graphs'][name].get('sha256'),
        )
        return TensorRTRunner(engine, device=device, name=name)

    return make
