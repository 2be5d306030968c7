"""Every exported tensor's name, dtype and axes, written once (DESIGN §5, STYLE 8).

The exporter, the runners, the TensorRT builder and the predictor all read these specs, so a
renamed tensor is renamed everywhere. Pure Python: the torch-free runtime imports it.

Axes are ints (static) or symbol names. Symbols, one meaning each across all graphs:

    H, W   the letterboxed input canvas (static per export; fixed for TensorRT)
    H4, W4 the mask-feature resolution, H/4 and W/4 (static)
    N      bottleneck memory tokens (static for a given canvas)
    C      hidden width, D text-encoder width (static)
    T      packed text tokens (dynamic: depends on the vocabulary)
    K      classes in the vocabulary (dynamic; 1 in referring mode)
    Q      queries entering a decoder layer / the mask head (dynamic: pruning shrinks it)
    Q0     the initial number of queries (static, the model's Q)
    P      phrases given to the text encoder (dynamic), L its context length (static)
"""

from __future__ import annotations

from dataclasses import dataclass

# One TensorSpec type for the whole runtime: the runners check feeds against these specs.
from mobius_ros.common.tensor_spec import TensorSpec

ENCODER = 'encoder'
MASK_HEAD = 'mask_head'
FULL = 'full'
TEXT_ENCODER = 'text_encoder'
MODEL_JSON = 'model.json'
EXPORT_FORMAT = 'mobius-onnx/1'  # model.json's 'format': the exporter writes it, runtimes check it

# Dynamic symbols; everything else is fixed when a graph is exported for a canvas.
DYNAMIC = frozenset({'T', 'K', 'Q', 'P'})


def decoder_layer_name(layer: int) -> str:
    """Graph name of decoder layer `layer` (0-based), e.g. 'decoder_layer_0'."""
    return f'decoder_layer_{layer}'


def dynamic_axes(spec: TensorSpec) -> dict[int, str]:
    """{axis: symbol} of the axes of `spec` that vary at run time (torch.onnx.export format)."""
    return {i: d for i, d in enumerate(spec.shape) if isinstance(d, str) and d in DYNAMIC}


def resolve_shape(spec: TensorSpec, dims: dict[str, int]) -> tuple[int, ...]:
    """Concrete shape of `spec` with every symbol replaced from `dims` (KeyError if missing)."""
    return tuple(d if isinstance(d, int) else int(dims[str(d)]) for d in spec.shape)


def tensor_to_dict(spec: TensorSpec) -> dict[str, object]:
    return {'name': spec.name, 'dtype': spec.dtype, 'shape': list(spec.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one exported graph, in ONNX order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def filename(self) -> str:
        return f'{self.name}.onnx'

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The `dynamic_axes` argument of `torch.onnx.export` for this graph."""
        axes = {t.name: dynamic_axes(t) for t in (*self.inputs, *self.outputs)}
        return {name: a for name, a in axes.items() if a}

    def to_dict(self) -> dict[str, object]:
        return {
            'name': self.name,
            'inputs': [tensor_to_dict(t) for t in self.inputs],
            'outputs': [tensor_to_dict(t) for t in self.outputs],
        }


def _t(name: str, dtype: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(shape))


# Shared tensors (the same name in every graph that uses them, so the host loop passes them on).
IMAGE = _t('image', 'float32', 1, 3, 'H', 'W')  # normalised RGB, letterboxed
TEXT_TOKENS = _t('text_tokens', 'float32', 1, 'T', 'D')  # packed valid tokens, before D->C
TEXT_MASK = _t('text_mask', 'bool', 1, 'T')  # True on valid tokens
CLASS_EMBED = _t('class_embed', 'float32', 1, 'K', 'D')  # pooled phrase embeddings
MEMORY = _t('memory', 'float32', 1, 'N', 'C')
MASK_FEATURES = _t('mask_features', 'float32', 1, 'C', 'H4', 'W4')
CLASS_EMBED_PROJ = _t('class_embed_proj', 'float32', 1, 'K', 'C')
# Referring mode: the expression's projected tokens join the decoder's query self-attention.
TEXT_MEMORY = _t('text_memory', 'float32', 1, 'T', 'C')

# Per-query tensors; the query axis is dynamic so the host loop can prune between layers.
QUERIES = _t('queries', 'float32', 1, 'Q', 'C')
REFERENCE_BOXES = _t('reference_boxes', 'float32', 1, 'Q', 4)  # cx, cy, w, h in [0, 1]
NEXT_QUERIES = _t('next_queries', 'float32', 1, 'Q', 'C')
NEXT_REFERENCE_BOXES = _t('next_reference_boxes', 'float32', 1, 'Q', 4)
LOGITS = _t('logits', 'float32', 1, 'Q', 'K')
CONFIDENCE = _t('confidence', 'float32', 1, 'Q')
BOXES = _t('boxes', 'float32', 1, 'Q', 4)
MASKS = _t('masks', 'float32', 1, 'Q', 'H4', 'W4')  # mask logits

ENCODER_SPEC = GraphSpec(
    ENCODER,
    inputs=(IMAGE, TEXT_TOKENS, TEXT_MASK, CLASS_EMBED),
    outputs=(
        MEMORY,
        MASK_FEATURES,
        _t('queries', 'float32', 1, 'Q0', 'C'),
        _t('reference_boxes', 'float32', 1, 'Q0', 4),
        CLASS_EMBED_PROJ,
        TEXT_MEMORY,
        _t('proposal_logits', 'float32', 1, 'Q0', 'K'),
        _t('proposal_boxes', 'float32', 1, 'Q0', 4),
    ),
)


def decoder_layer_spec(layer: int, *, referring: bool = False) -> GraphSpec:
    """Decoder layer `layer`: queries [1, Q, C] -> refined queries, boxes, logits, confidence.

    `boxes` is the refined box of each query (equal to `next_reference_boxes`; kept as its own
    name so that consumers do not depend on how the model refines).
    """
    inputs = [QUERIES, REFERENCE_BOXES, MEMORY, CLASS_EMBED_PROJ]
    if referring:
        inputs += [TEXT_MEMORY, TEXT_MASK]
    name = decoder_layer_name(layer)
    return GraphSpec(
        f'referring_{name}' if referring else name,
        inputs=tuple(inputs),
        outputs=(NEXT_QUERIES, NEXT_REFERENCE_BOXES, LOGITS, CONFIDENCE),
    )


MASK_HEAD_SPEC = GraphSpec(MASK_HEAD, inputs=(QUERIES, MASK_FEATURES), outputs=(MASKS,))

FULL_SPEC = GraphSpec(
    FULL,
    inputs=(IMAGE, TEXT_TOKENS, TEXT_MASK, CLASS_EMBED),
    outputs=(
        _t('logits', 'float32', 1, 'Q0', 'K'),
        _t('boxes', 'float32', 1, 'Q0', 4),
        _t('confidence', 'float32', 1, 'Q0'),
        _t('masks', 'float32', 1, 'Q0', 'H4', 'W4'),
    ),
)

TEXT_ENCODER_SPEC = GraphSpec(
    TEXT_ENCODER,
    inputs=(_t('token_ids', 'int64', 'P', 'L'),),
    outputs=(
        _t('tokens', 'float32', 'P', 'L', 'D'),
        _t('mask', 'bool', 'P', 'L'),
        _t('pooled', 'float32', 'P', 'D'),
    ),
)


def graph_specs(num_layers: int, *, referring: bool = True) -> dict[str, GraphSpec]:
    """All graphs of one export: encoder, decoder layers, mask head, full, text encoder.

    With `referring`, a second set of decoder-layer graphs takes the expression's tokens too.
    """
    specs = [ENCODER_SPEC, MASK_HEAD_SPEC, FULL_SPEC, TEXT_ENCODER_SPEC]
    specs += [decoder_layer_spec(layer) for layer in range(num_layers)]
    if referring:
        specs += [decoder_layer_spec(layer, referring=True) for layer in range(num_layers)]
    return {spec.name: spec for spec in specs}
