"""Multiply-accumulate counting in the convention of the MOBIUS paper (fvcore / detectron2 style).

The paper reports "FLOPs" that are multiply-accumulates (MACs) of what inference computes, counted
on a traced graph from which dead outputs are removed. `MacCounter` reproduces that without
tracing: a `TorchDispatchMode` records every aten op with its MACs, the component it ran in (by
the innermost registered module on the call stack) and the ops that produced its inputs. Asking
for a report with the tensors that inference keeps walks that graph backwards, so work whose
results never reach those tensors (the text branch of the bi-attention fusion, heads of
intermediate layers, deep-supervision proposals) is reported as dead and left out of the total.

Counting rules (fvcore defaults as detectron2 uses them):
- matmuls and convolutions: one MAC per multiply-add; fused attention kernels count their two
  matmuls ([B, H, Lq, Lk] x (Dqk + Dv));
- `grid_sample` (bilinear): 4 MACs per sampled point per channel, i.e. 4 per output element
  (neither `torch.utils.flop_counter` nor fvcore's tracer sees it inside deformable attention);
- bilinear upsampling 4 and nearest 1 per output element; LayerNorm / GroupNorm 5 per element
  (4 without affine); adaptive average pooling 1 per input element;
- batch norm (eval) 2 per element, as fvcore does: with it ResNet-50 at 800x800 gives the paper's
  52.4 G (52.13 G without); elementwise ops, softmax and activations are free;
- `F.scaled_dot_product_attention` counts its two matmuls, once, whatever kernel runs it. fvcore's
  tracer never saw that op; `fused_attention=False` reproduces that blind spot (the paper's Tab. 11
  numbers for the hybrid MobileNetV4 encoders only fit without it, see docs/flops.md).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten

# Name given to ops that ran outside every registered component.
UNATTRIBUTED = 'other'

Formula = Callable[[tuple, dict, Any], int]


def _shape(t: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


def _numel(t: torch.Tensor) -> int:
    return math.prod(t.shape)


def _mm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = (args[1], args[2]) if len(args) > 2 else (args[0], args[1])
    m, k = _shape(a)
    return m * k * _shape(b)[1]


def _bmm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    a, b = (args[1], args[2]) if len(args) > 2 else (args[0], args[1])
    batch, m, k = _shape(a)
    return batch * m * k * _shape(b)[2]


def _mv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    matrix = args[1] if len(args) > 2 else args[0]
    return _numel(matrix)


def conv_macs(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    transposed: bool = False,
) -> int:
    """MACs of an N-d convolution: one per output (input when transposed) element per tap.

    input [N, Cin, *S], weight [Cout, Cin/g, *k] ([Cin, Cout/g, *k] when transposed).
    """
    taps = math.prod(weight_shape[2:])
    if transposed:
        return math.prod(input_shape) * weight_shape[1] * taps
    return math.prod(output_shape[:1]) * math.prod(output_shape[1:]) * weight_shape[1] * taps


def _conv_macs(args: tuple, kwargs: dict, out: Any) -> int:
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get('transposed', False))
    return conv_macs(_shape(args[0]), _shape(args[1]), _shape(out), transposed=transposed)


def attention_macs(query_shape: Sequence[int], key_shape: Sequence[int], value_dim: int) -> int:
    """MACs of softmax(q kᵀ) v for q [..., Lq, Dqk], k [..., Lk, Dqk], v [..., Lk, Dv]."""
    *lead, lq, dqk = query_shape
    lk = key_shape[-2]
    return math.prod(lead) * lq * lk * (dqk + value_dim)


def _sdpa_macs(args: tuple, kwargs: dict, out: Any) -> int:
    query, key, value = args[:3]
    return attention_macs(_shape(query), _shape(key), _shape(value)[-1])


def _native_mha_macs(args: tuple, kwargs: dict, out: Any) -> int:
    # nn.MultiheadAttention's inference fast path: projections, attention, output projection.
    batch, lq, dim = _shape(args[0])
    lk = _shape(args[1])[1]
    return batch * ((2 * lq + 2 * lk) * dim * dim + 2 * lq * lk * dim)


def grid_sample_macs(
    input_shape: Sequence[int], grid_shape: Sequence[int], *, mode: int = 0
) -> int:
    """MACs of `grid_sample`: 4 per sampled point per channel (bilinear), 1 for nearest.

    input [N, C, H, W], grid [N, Ho, Wo, 2] -> output [N, C, Ho, Wo].
    """
    per_point = 1 if mode == 1 else 4
    return per_point * input_shape[0] * input_shape[1] * math.prod(grid_shape[1:-1])


def _grid_sample_macs(args: tuple, kwargs: dict, out: Any) -> int:
    mode = int(args[2]) if len(args) > 2 else int(kwargs.get('interpolation_mode', 0))
    return grid_sample_macs(_shape(args[0]), _shape(args[1]), mode=mode)


def _per_output(factor: int) -> Formula:
    def formula(args: tuple, kwargs: dict, out: Any) -> int:
        first = out[0] if isinstance(out, (tuple, list)) else out
        return factor * _numel(first)

    return formula


def _per_input(factor: int) -> Formula:
    def formula(args: tuple, kwargs: dict, out: Any) -> int:
        return factor * _numel(args[0])

    return formula


def _norm_macs(weight_index: int) -> Formula:
    def formula(args: tuple, kwargs: dict, out: Any) -> int:
        affine = len(args) > weight_index and args[weight_index] is not None
        return (5 if affine else 4) * _numel(args[0])

    return formula


def _batch_norm_macs(args: tuple, kwargs: dict, out: Any) -> int:
    affine = len(args) > 1 and args[1] is not None
    return (2 if affine else 1) * _numel(args[0])


def _packets(*names: str) -> list[torch._ops.OpOverloadPacket]:
    """The aten op packets among `names` that this torch build has."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def _formulas(*, batch_norm: bool) -> dict[torch._ops.OpOverloadPacket, Formula]:
    table: dict[torch._ops.OpOverloadPacket, Formula] = {}
    groups: list[tuple[list, Formula]] = [
        (_packets('mm', 'addmm'), _mm_macs),
        (_packets('bmm', 'baddbmm'), _bmm_macs),
        (_packets('mv', 'addmv'), _mv_macs),
        (
            _packets(
                'convolution',
                '_convolution',
                'convolution_overrideable',
                'cudnn_convolution',
                '_slow_conv2d_forward',
                'mkldnn_convolution',
                'thnn_conv2d',
            ),
            _conv_macs,
        ),
        (
            _packets(
                '_scaled_dot_product_flash_attention_for_cpu',
                '_scaled_dot_product_flash_attention',
                '_scaled_dot_product_efficient_attention',
                '_scaled_dot_product_cudnn_attention',
                '_scaled_dot_product_fused_attention_overrideable',
            ),
            _sdpa_macs,
        ),
        (_packets('_native_multi_head_attention'), _native_mha_macs),
        (_packets('grid_sampler_2d', 'cudnn_grid_sampler'), _grid_sample_macs),
        (_packets('upsample_bilinear2d', '_upsample_bilinear2d_aa'), _per_output(4)),
        (_packets('upsample_nearest2d', '_upsample_nearest_exact2d'), _per_output(1)),
        (_packets('native_layer_norm'), _norm_macs(2)),
        (_packets('native_group_norm'), _norm_macs(1)),
        (_packets('_adaptive_avg_pool2d'), _per_input(1)),
    ]
    if batch_norm:
        groups.append(
            (
                _packets(
                    '_native_batch_norm_legit_no_training',
                    '_native_batch_norm_legit',
                    'native_batch_norm',
                ),
                _batch_norm_macs,
            )
        )
    for packets, formula in groups:
        table.update(dict.fromkeys(packets, formula))
    return table


@dataclass(frozen=True)
class _Node:
    macs: int
    component: str
    op: str
    inputs: tuple[int, ...]


@dataclass(frozen=True)
class MacReport:
    """Live and dead MACs per component and per op (live = reaches the requested outputs)."""

    by_component: dict[str, int]
    dead_by_component: dict[str, int]
    by_op: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_component.values())

    def get(self, component: str) -> int:
        return self.by_component.get(component, 0)


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested tuples, lists, dicts and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from tensors_in(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from tensors_in(value)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            yield from tensors_in(value)


def _owners(components: Mapping[str, nn.Module | Iterable[nn.Module]]) -> dict[int, str]:
    """Module id -> component; smaller (more specific) trees override the ones containing them."""
    trees = []
    for name, roots in components.items():
        roots = [roots] if isinstance(roots, nn.Module) else list(roots)
        trees.append((name, {id(m) for root in roots for m in root.modules()}))
    owner: dict[int, str] = {}
    for name, ids in sorted(trees, key=lambda tree: -len(tree[1])):
        owner.update(dict.fromkeys(ids, name))
    return owner


class MacCounter(TorchDispatchMode):
    """Record MACs of every aten op run inside the context, per component, with a dataflow graph.

    `components` maps a name to module trees; a module (and every submodule) belongs to the most
    specific component holding it, so `fusion` inside the pixel decoder counts as fusion, and
    registering the whole model as one component catches code outside submodules. An op belongs
    to the innermost called module that has a component, else to `UNATTRIBUTED`.
    """

    def __init__(
        self,
        components: Mapping[str, nn.Module | Iterable[nn.Module]] | None = None,
        *,
        batch_norm: bool = True,
        fused_attention: bool = True,
    ) -> None:
        super().__init__()
        self._formulas = _formulas(batch_norm=batch_norm)
        self._fused_attention = fused_attention
        self._kernel_depth = 0
        self._function_mode = _AttentionCalls(self)
        self._owner = _owners(components or {})
        self._stack: list[str] = []
        self._nodes: list[_Node] = []
        self._producer: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._hooks: list = []
        self.component_override: str | None = None

    def __enter__(self) -> MacCounter:
        hooks = nn.modules.module
        self._hooks = [
            hooks.register_module_forward_pre_hook(self._enter_module),
            hooks.register_module_forward_hook(self._exit_module, always_call=True),
        ]
        self._function_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        super().__exit__(*exc)
        self._function_mode.__exit__(*exc)

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        name = self._owner.get(id(module))
        if name is not None:
            self._stack.append(name)

    def _exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in self._owner and self._stack:
            self._stack.pop()

    @contextmanager
    def component(self, name: str) -> Iterator[None]:
        """Attribute the ops run inside this block to `name` (for code outside any module)."""
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self._formulas.get(func.overloadpacket)
        counted = formula is not None and not self._kernel_depth
        macs = int(formula(args, kwargs, out)) if counted else 0
        self._record(
            str(func.overloadpacket), macs, (args, kwargs), out, self._mutated(func, args, kwargs)
        )
        return out

    def _record(
        self, op: str, macs: int, inputs: Any, out: Any, mutated: Sequence[torch.Tensor] = ()
    ) -> None:
        flat_in, _ = tree_flatten(inputs)
        tensors_in_args = [t for t in flat_in if isinstance(t, torch.Tensor)]
        deps = {self._producer[t] for t in tensors_in_args if t in self._producer}
        deps |= {self._producer[t._base] for t in mutated if t._base in self._producer}
        component = self._stack[-1] if self._stack else UNATTRIBUTED
        index = len(self._nodes)
        self._nodes.append(_Node(macs, component, op, tuple(sorted(deps))))
        flat_out, _ = tree_flatten(out)
        for t in [*flat_out, *mutated]:
            if isinstance(t, torch.Tensor):
                self._producer[t] = index
                if t._base is not None and t in mutated:
                    # A write through a view changes its base too; later reads of the base
                    # must depend on this op.
                    self._producer[t._base] = index

    @staticmethod
    def _mutated(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        written = []
        for i, argument in enumerate(func._schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(argument.name)
            if isinstance(value, torch.Tensor):
                written.append(value)
        return written

    def report(self, outputs: Any = None) -> MacReport:
        """MACs that reach the tensors in `outputs` (all recorded MACs when `outputs` is None)."""
        live = [True] * len(self._nodes)
        if outputs is not None:
            live = [False] * len(self._nodes)
            todo = [self._producer[t] for t in tensors_in(outputs) if t in self._producer]
            while todo:
                index = todo.pop()
                if not live[index]:
                    live[index] = True
                    todo.extend(self._nodes[index].inputs)
        by_component: dict[str, int] = defaultdict(int)
        dead: dict[str, int] = defaultdict(int)
        by_op: dict[str, int] = defaultdict(int)
        for node, alive in zip(self._nodes, live):
            if not node.macs:
                continue
            if alive:
                by_component[node.component] += node.macs
                by_op[node.op] += node.macs
            else:
                dead[node.component] += node.macs
        return MacReport(dict(by_component), dict(dead), dict(by_op))


class _AttentionCalls(TorchFunctionMode):
    """Count `F.scaled_dot_product_attention` as one op, whichever kernel the device picks.

    On the meta device it decomposes into bmm, on CPU it is one fused aten op: counting at the
    function level gives the same number on both and lets the fvcore convention leave it out.
    """

    def __init__(self, counter: MacCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        counter = self.counter
        counter._kernel_depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            counter._kernel_depth -= 1
        query, key, value = args[:3]
        macs = attention_macs(_shape(query), _shape(key), _shape(value)[-1])
        counter._record(
            'scaled_dot_product_attention',
            macs if counter._fused_attention else 0,
            (args, kwargs),
            out,
        )
        return out


def count_macs(
    fn: Callable[[], Any],
    components: Mapping[str, nn.Module | Iterable[nn.Module]] | None = None,
    *,
    outputs: Callable[[Any], Any] | None = None,
    batch_norm: bool = True,
    fused_attention: bool = True,
) -> MacReport:
    """Run `fn()` under a `MacCounter` (no grad) and report the MACs reaching `outputs(result)`.

    `outputs` picks the tensors inference keeps from the result; by default all of it.
    """
    counter = MacCounter(components, batch_norm=batch_norm, fused_attention=fused_attention)
    with torch.no_grad(), counter:
        result = fn()
    return counter.report(result if outputs is None else outputs(result))


def giga(macs: int) -> float:
    """MACs in G (10^9), the unit of the paper's tables."""
    return macs / 1e9


# Rows of the paper's component tables (Tab. 10 / Tab. 12), in print order.
VISION_ENCODER = 'vision encoder'
PIXEL_DECODER = 'pixel decoder'
FUSION = 'fusion'
DECODER = 'transformer decoder'
TEXT_PROJECTION = 'text projection'
COMPONENTS = (VISION_ENCODER, PIXEL_DECODER, FUSION, DECODER)


@dataclass(frozen=True)
class ModelMacs:
    """Per-frame MACs of a model by component (text encoder excluded), and the text cost."""

    components: dict[str, int]
    dead: dict[str, int]
    queries_per_layer: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.components.values())

    def giga(self) -> dict[str, float]:
        """Components and total in G (10^9 MACs)."""
        return {**{k: giga(v) for k, v in self.components.items()}, 'total': giga(self.total)}


def model_components(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The paper's component split of a `Mobius`.

    The whole model is registered as the decoder, so two-stage selection, heads and the pruning
    loop (code outside the other components) count there, as Tab. 10 does.
    """
    pixel_decoder = model.pixel_decoder
    fusion = getattr(pixel_decoder, 'fusion', None)
    return {
        DECODER: [model],
        VISION_ENCODER: [model.backbone],
        PIXEL_DECODER: [pixel_decoder],
        FUSION: [fusion] if fusion is not None else [],
        TEXT_PROJECTION: [model.text_proj],
        'text encoder': [model.text_encoder],
    }


def _split(report: MacReport, queries: Sequence[int]) -> ModelMacs:
    components = {name: report.get(name) for name in COMPONENTS}
    components[DECODER] += report.get(UNATTRIBUTED)
    for name, macs in report.by_component.items():
        if name not in components and name != UNATTRIBUTED:
            components[name] = macs
    return ModelMacs(components, dict(report.dead_by_component), tuple(queries))


def count_model_stages(
    model: nn.Module,
    *,
    size: tuple[int, int],
    text_tokens: int,
    classes: int,
    layers: int | None = None,
    fused_attention: bool = True,
) -> ModelMacs:
    """MACs of one unpruned frame through the deployed stages (encode, L decoder layers, masks).

    Runs on whatever device the model is on; on `meta` it is shape-only and takes a second.
    Vocabulary mode with `text_tokens` packed valid tokens T of `classes` phrases K; what
    inference keeps is the final layer's logits, boxes, confidence and masks.
    """
    device = next(model.parameters()).device
    width = model.text_encoder.width
    images = torch.zeros(1, 3, *size, device=device)
    tokens = torch.zeros(1, text_tokens, width, device=device)
    mask = torch.ones(1, text_tokens, dtype=torch.bool, device=device)
    class_embed = torch.zeros(1, classes, width, device=device)
    depth = min(layers or model.num_layers, model.num_layers)

    def run() -> tuple[Tensor, ...]:
        state = model.encode(images, tokens, mask, class_embed)
        queries, boxes = state.queries, state.reference_boxes
        for layer in range(depth):
            queries, boxes, logits, confidence = model.decoder_layer(
                layer, queries, boxes, state.memory, state.class_embed_proj, state.memory_shapes
            )
        return logits, boxes, confidence, model.mask_head(queries, state.mask_features)

    report = count_macs(run, model_components(model), fused_attention=fused_attention)
    queries = model.decoder.num_queries if hasattr(model.decoder, 'num_queries') else 0
    return _split(report, [queries] * depth)


def count_model_forward(
    model: nn.Module, images: Tensor, text: Any, **forward_kwargs: Any
) -> ModelMacs:
    """MACs of a real `model(images, text, **forward_kwargs)` call (e.g. with pruning).

    Counts only work reaching the final layer's outputs, so pruned queries stop costing from
    the layer that drops them. The text encoder is not run here: pass TextFeatures.
    """
    holder: dict[str, Any] = {}

    def run() -> Any:
        holder['out'] = model(images, text, **forward_kwargs)
        return holder['out']

    report = count_macs(run, model_components(model), outputs=lambda out: out.layers[-1])
    kept = tuple(layer.logits.shape[1] for layer in holder['out'].layers)
    return _split(report, kept)


def clip_text_tower_macs(phrases: int, *, context: int = 77) -> int:
    """MACs of CLIP ViT-B/32's text tower over `phrases` full `context`-token sequences.

    GLEE (and the paper's 239 G for the 80 COCO names) run every phrase through all 77
    positions; our encoder cuts trailing padding, which `model.encode_text` counts directly.
    """
    from open_clip.transformer import TextTransformer

    with torch.device('meta'):
        tower = TextTransformer(context_length=context, width=512, heads=8, layers=12)
    ids = torch.zeros(phrases, context, dtype=torch.long, device='meta')
    return count_macs(lambda: tower(ids)).total


__all__ = [
    'COMPONENTS',
    'DECODER',
    'FUSION',
    'PIXEL_DECODER',
    'TEXT_PROJECTION',
    'UNATTRIBUTED',
    'VISION_ENCODER',
    'MacCounter',
    'MacReport',
    'ModelMacs',
    'attention_macs',
    'clip_text_tower_macs',
    'conv_macs',
    'count_macs',
    'count_model_forward',
    'count_model_stages',
    'giga',
    'grid_sample_macs',
    'model_components',
    'tensors_in',
]
