"""GLEE's own model from its official source, as the oracle our conversion is proven against.

Builds `GLEE_Model` from a GLEE source tree (default `../shared/glee-src`, or
`$MOBIUS_GLEE_SRC`) on a CPU without compiling anything, in the full-size GLEE-Lite or
GLEE-Plus configuration or a reduced one (narrow widths, few layers, a small CLIP text config)
with seeded random weights. Nothing here is imported by the package at run time; only tests and the
recording commands use it.

    python -m scripts.glee_reference manifest [--variant GLEE-Plus]  # mobius_ros/assets/glee/
    python -m scripts.glee_reference record [--variant GLEE-Plus]    # test/fixtures/glee/
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = REPO.parent / 'shared' / 'glee-src'
LITE_CONFIG = 'projects/GLEE/configs/images/Lite/Stage2_joint_training_CLIPteacher_R50.yaml'
PLUS_CONFIG = 'projects/GLEE/configs/images/Plus/Stage2_joint_training_CLIPteacher_SwinL.yaml'
CLIP_DIR = 'projects/GLEE/clip_vit_base_patch32'


def glee_src() -> Path | None:
    """The GLEE source tree, or None where it is absent."""
    src = Path(os.environ.get('MOBIUS_GLEE_SRC', DEFAULT_SRC))
    return src if (src / 'projects' / 'GLEE' / 'glee').is_dir() else None


_IMPORTED: dict[str, types.ModuleType] = {}


def import_glee(src: Path | None = None) -> types.SimpleNamespace:
    """Import GLEE and its detectron2 from source, with the shims a CPU and current libs need."""
    if 'ns' in _IMPORTED:
        return _IMPORTED['ns']
    src = Path(src or glee_src() or DEFAULT_SRC)
    if not src.is_dir():
        raise FileNotFoundError(f'no GLEE source tree at {src}')
    import PIL.Image

    if not hasattr(PIL.Image, 'LINEAR'):
        PIL.Image.LINEAR = PIL.Image.BILINEAR
    # Video-evaluation modules GLEE imports but inference never uses.
    for name, cls in (('pycocotools.ytvos', 'YTVOS'), ('pycocotools.ytvoseval', 'YTVOSeval')):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            setattr(stub, cls, type(cls, (), {}))
            sys.modules[name] = stub
    import transformers
    from transformers import BatchEncoding, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    clip_dir = str(src / CLIP_DIR)

    def _resolve(path):
        return clip_dir if str(path).rstrip('/').endswith('clip_vit_base_patch32') else path

    tok_from = CLIPTokenizer.from_pretrained.__func__

    def tokenizer_from_pretrained(cls, path, *a, **k):
        return tok_from(cls, _resolve(path), *a, **k)

    CLIPTokenizer.from_pretrained = classmethod(tokenizer_from_pretrained)
    text_config = {'value': None}

    def text_model_from_pretrained(cls, path, *a, **k):
        config = text_config['value'] or CLIPTextConfig.from_pretrained(_resolve(path))
        return cls(config)

    CLIPTextModel.from_pretrained = classmethod(text_model_from_pretrained)
    if not hasattr(CLIPTokenizer, 'batch_encode_plus'):
        CLIPTokenizer.batch_encode_plus = lambda self, *a, **k: self(*a, **k)
    original_to = BatchEncoding.to

    def to(self, device, *a, **k):
        if str(device).startswith('cuda'):
            device = 'cpu'
        return original_to(self, device, *a, **k)

    BatchEncoding.to = to
    sys.path.insert(0, str(src))
    with _chdir(src):  # GLEE reads data files by paths relative to its root at import
        from detectron2.config import get_cfg
        from projects.GLEE.glee.config import add_glee_config
        from projects.GLEE.glee.models.glee_model import GLEE_Model

    ns = types.SimpleNamespace(
        src=src,
        get_cfg=get_cfg,
        add_glee_config=add_glee_config,
        GLEE_Model=GLEE_Model,
        CLIPTokenizer=CLIPTokenizer,
        CLIPTextConfig=CLIPTextConfig,
        text_config=text_config,
        transformers=transformers,
    )
    _IMPORTED['ns'] = ns
    return ns


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# The reduced configuration: every structural feature of GLEE-Lite (4 trunk stages, 3 encoder
# scales + the extra stride-64 level, early fusion, two-stage query selection, box refinement),
# at widths and depths that run in a second on a CPU.
REDUCED = {
    'MODEL.RESNETS.DEPTH': 50,
    'MODEL.RESNETS.RES2_OUT_CHANNELS': 64,
    'MODEL.RESNETS.STEM_OUT_CHANNELS': 16,
    'MODEL.RESNETS.WIDTH_PER_GROUP': 16,
    'MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS': 2,
    'MODEL.SEM_SEG_HEAD.DIM_FEEDFORWARD': 128,
    'MODEL.MaskDINO.DEC_LAYERS': 3,
    'MODEL.MaskDINO.NUM_OBJECT_QUERIES': 20,
    'MODEL.MaskDINO.DIM_FEEDFORWARD': 128,
    'MODEL.LANGUAGE_BACKBONE.LANG_DIM': 64,
}
# GLEE-Plus's Swin-L reduced the same way: every stage, shifted windows and padding at window 7.
REDUCED_SWIN = {
    'MODEL.SWIN.EMBED_DIM': 32,
    'MODEL.SWIN.DEPTHS': [2, 2, 2, 2],
    'MODEL.SWIN.NUM_HEADS': [1, 2, 4, 8],
    'MODEL.SWIN.WINDOW_SIZE': 7,
}
REDUCED_TEXT = {
    'hidden_size': 64,
    'intermediate_size': 128,
    'num_hidden_layers': 2,
    'num_attention_heads': 4,
    'max_position_embeddings': 77,
}


def build_cfg(variant: str = 'GLEE-Lite', reduced: bool = False, overrides: dict | None = None):
    """GLEE's detectron2 config of a variant, optionally reduced."""
    ns = import_glee()
    cfg = ns.get_cfg()
    ns.add_glee_config(cfg)
    cfg.merge_from_file(str(ns.src / (LITE_CONFIG if variant == 'GLEE-Lite' else PLUS_CONFIG)))
    values = dict(REDUCED) if reduced else {}
    if reduced and variant == 'GLEE-Plus':
        values.update(REDUCED_SWIN)
    values.update(overrides or {})
    opts = []
    for key, value in values.items():
        opts += [key, value]
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = 'cpu'
    return cfg


def build_reference(
    variant: str = 'GLEE-Lite', reduced: bool = False, seed: int = 0, overrides: dict | None = None
):
    """GLEE_Model with seeded random weights, in eval mode; returns (model, cfg)."""
    import torch

    ns = import_glee()
    cfg = build_cfg(variant, reduced, overrides)
    if variant == 'GLEE-Plus':  # random init: no ImageNet Swin-L file to read here
        cfg.defrost()
        cfg.MODEL.SWIN.PRETRAINED_WEIGHT = None
    if reduced:
        base = ns.CLIPTextConfig.from_pretrained(str(ns.src / CLIP_DIR))
        for key, value in REDUCED_TEXT.items():
            setattr(base, key, value)
        ns.text_config['value'] = base
    else:
        ns.text_config['value'] = None
    torch.manual_seed(seed)
    with _chdir(ns.src):
        model = ns.GLEE_Model(cfg, None, 'cpu', None, True)
    ns.text_config['value'] = None
    reseed(model, seed)
    return model.eval(), cfg


def reseed(model, seed: int) -> None:
    """Load `seeded_state` of the model's own manifest (see there); integer buffers (Swin's
    relative position index) keep their values."""
    floats = [e for e in state_dict_manifest(model) if e[2].startswith(('float', 'bfloat'))]
    missing, unexpected = model.load_state_dict(seeded_state(floats, seed), strict=False)
    assert not unexpected and all(not n.endswith('weight') for n in missing), missing


def seeded_state(entries: list[list], seed: int) -> dict:
    """Deterministic, well-scaled random values for a manifest [[name, shape, dtype], ...].

    GLEE's own initialisers leave some parts at zero (box heads, FrozenBN means) which would
    hide mapping mistakes, so every tensor gets fresh values; norms' scales stay near 1 and
    FrozenBN variances positive so activations stay in range. Names of one shared tensor get
    one value. Needs only torch: the parity test regenerates the weights without GLEE's code.
    """
    import math

    import torch

    from mobius_ros.model.glee_checkpoint import shared_key

    generator = torch.Generator().manual_seed(seed)
    state, shared = {}, {}
    for name, shape, dtype in entries:
        key = shared_key(name)
        if key is not None and key in shared:
            state[name] = shared[key]
            continue
        if not dtype.startswith(('float', 'bfloat')):
            raise ValueError(f'{name}: no seeded values for dtype {dtype}')
        fan = math.prod(shape[1:]) if len(shape) > 1 else 1  # fan-in of linear and conv
        noise = torch.randn(shape, generator=generator)
        leaf = name.rsplit('.', 1)[-1]
        if leaf == 'running_var':
            value = 0.5 + noise.abs()
        elif len(shape) == 1 and leaf in ('weight', 'gamma'):
            value = 1.0 + 0.1 * noise
        elif len(shape) == 1:
            value = 0.05 * noise
        else:
            value = noise / max(fan, 1) ** 0.5
        state[name] = value
        if key is not None:
            shared[key] = value
    return state


def fixture_name(variant: str) -> str:
    """Stem of a variant's recorded parity fixture under test/fixtures/glee."""
    return {'GLEE-Lite': 'reference', 'GLEE-Plus': 'reference_plus'}[variant]


def integer_buffers(model) -> dict:
    """The model's integer buffers (Swin's relative position index): values the weights file
    carries but `seeded_state` does not generate."""
    return {k: v for k, v in model.state_dict().items() if not v.is_floating_point()}


def converted_reduced(
    entries: list[list] | None = None,
    seed: int = 0,
    variant: str = 'GLEE-Lite',
    buffers: dict | None = None,
):
    """Our model of `variant` converted (by `convert_state`) from `seeded_state(entries, seed)`
    plus the integer `buffers` (GLEE-Plus's, as GLEE's code computed them).

    `entries` and `buffers` default to the variant's recorded reduced fixture
    (test/fixtures/glee). The reduced oracle's head counts and query count are not visible in
    the weights and are set here. Needs only torch, not GLEE's code. Returns (model in eval
    mode, Conversion).
    """
    import json

    from mobius_ros.model.glee_checkpoint import convert_state, glee_config
    from mobius_ros.model.variants import VARIANTS, build_from_config

    stem = REPO / 'test' / 'fixtures' / 'glee' / fixture_name(variant)
    if entries is None:
        entries = json.loads(stem.with_suffix('.json').read_text())['tensors']
    floats = [e for e in entries if e[2].startswith(('float', 'bfloat'))]
    if buffers is None and len(floats) < len(entries):
        from safetensors.torch import load_file

        recorded = load_file(str(stem.with_suffix('.safetensors')))
        buffers = {k[len('buffer.') :]: v for k, v in recorded.items() if k.startswith('buffer.')}
    state = {**seeded_state(floats, seed), **(buffers or {})}
    base = VARIANTS[variant].replace(
        text={'heads': REDUCED_TEXT['num_attention_heads']},
        decoder={'num_queries': REDUCED['MODEL.MaskDINO.NUM_OBJECT_QUERIES']},
    )
    conversion = convert_state(state, config=glee_config(state, base))
    model = build_from_config(conversion.config)
    model.load_state_dict(conversion.state)
    return model.eval(), conversion


def state_dict_manifest(model) -> list[list]:
    """[[name, shape, dtype], ...] of a model's state dict, in its order."""
    return [
        [name, list(t.shape), str(t.dtype).replace('torch.', '')]
        for name, t in model.state_dict().items()
    ]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    m = sub.add_parser('manifest', help='write the full-size state-dict manifest')
    m.add_argument('--variant', default='GLEE-Lite')
    m.add_argument('-o', '--out', type=Path)
    r = sub.add_parser('record', help='record the parity fixtures of the reduced model')
    r.add_argument('--variant', default='GLEE-Lite', choices=('GLEE-Lite', 'GLEE-Plus'))
    args = parser.parse_args(argv)
    if args.command == 'manifest':
        model, _ = build_reference(args.variant, reduced=False)
        out = args.out or REPO / 'mobius_ros' / 'assets' / 'glee' / f'{args.variant}.json'
        out.parent.mkdir(parents=True, exist_ok=True)
        entries = state_dict_manifest(model)
        doc = {
            'variant': args.variant,
            'source': (
                'GLEE commit 6f5a19d35b1f732715c8a33e091c6729367b75a5, GLEE_Model state dict'
            ),
            'num_tensors': len(entries),
            'num_elements': sum(int(__import__('math').prod(s)) for _, s, _ in entries),
            'tensors': entries,
        }
        out.write_text(json.dumps(doc, separators=(',', ':')) + '\n')
        print(f'{out}: {len(entries)} tensors')
        return 0
    from scripts.glee_record import record

    return record(variant=args.variant)


if __name__ == '__main__':
    raise SystemExit(main())
