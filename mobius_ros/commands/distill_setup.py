"""What `mobius distill` resolves from its flags: teacher, student, vocabulary, size, source.

Each function raises ValueError or FileNotFoundError with a user-facing message.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from mobius_ros.train.distill_cache import vocabulary_tuple
from mobius_ros.train.distill_sources import (
    ImageSource,
    bag_source,
    coco_source,
    folder_source,
)
from mobius_ros.train.recipes import RECIPES, Recipe, load_recipe

# A variant named as the student trains with the demo recipe's optimiser and loss weights.
VARIANT_BASE = 'demo'


def teacher_path(teacher: str | None) -> Path:
    """The teacher's .safetensors file (None: the bundled demo model)."""
    from mobius_ros.runtime.backends import resolve_checkpoint

    path = resolve_checkpoint(teacher)
    if path.is_dir():
        raise ValueError(
            f'teacher {path} is an export folder; distillation needs the .safetensors checkpoint'
        )
    return path


def resolve_student(spec: str) -> Recipe:
    """A variant name, a named recipe or a recipe YAML -> the student's recipe."""
    from mobius_ros.model.variants import VARIANTS

    if spec in VARIANTS:
        text = VARIANTS[spec].text.name
        return RECIPES[VARIANT_BASE].replace(
            name=f'distill-{spec}', variant=spec, text_encoder=text, model_overrides=()
        )
    return load_recipe(spec)


def _recipe_beside(checkpoint: Path) -> dict | None:
    for path in (checkpoint.with_suffix('.recipe.yaml'), checkpoint.parent / 'recipe.yaml'):
        if path.is_file():
            return yaml.safe_load(path.read_text())
    return None


def resolve_vocabulary(value: str | None, teacher: Path) -> tuple[str, ...]:
    """--vocabulary as a file (a phrase a line) or comma-separated phrases; else the teacher's.

    The teacher's own vocabulary is read from the recipe stored beside it: synthetic scenes
    give the shape names, a COCO dataset its category names; GLEE checkpoints know COCO's 80.
    """
    if value is not None:
        path = Path(value)
        if path.is_file():
            return vocabulary_tuple(path.read_text().splitlines())
        return vocabulary_tuple(value.split(','))
    from mobius_ros.model.checkpoint import load_config

    if load_config(teacher).name.startswith('GLEE'):
        from mobius_ros.ops.coco_classes import COCO_CLASSES

        return COCO_CLASSES
    recipe = _recipe_beside(teacher)
    for spec in (recipe or {}).get('datasets', []):
        if spec.get('task') != 'vocabulary':
            continue
        if spec.get('source') == 'synthetic':
            from mobius_ros.train.data.synthetic import SHAPES

            return SHAPES
        annotations = Path(spec.get('annotations', ''))
        if spec.get('source') == 'coco' and annotations.is_file():
            import json

            categories = json.loads(annotations.read_text()).get('categories', [])
            return vocabulary_tuple([c['name'] for c in categories])
    raise ValueError(
        f'the vocabulary of teacher {teacher} is not recorded beside it; give --vocabulary'
    )


def parse_size(value: str | None, teacher: Path) -> tuple[int, int]:
    """'H' or 'HxW' (multiples of 32); default: the teacher's square training size."""
    if value is None:
        recipe = _recipe_beside(teacher)
        side = int(recipe['short_sides'][0]) if recipe else 384
        hw = (side, side)
    else:
        try:
            parts = [int(p) for p in value.lower().split('x')]
        except ValueError:
            raise ValueError(f"--size {value!r}: expected 'H' or 'HxW'") from None
        if len(parts) not in (1, 2):
            raise ValueError(f"--size {value!r}: expected 'H' or 'HxW'")
        hw = (parts[0], parts[-1])
    if any(v < 32 or v % 32 for v in hw):
        raise ValueError(f'input size {hw[0]}x{hw[1]} must be multiples of 32, at least 32')
    return hw


def open_source(args: argparse.Namespace) -> ImageSource:
    """The image source named by --images, --coco or --bag (+ --topic, --every)."""
    if args.images is not None:
        return folder_source(args.images)
    if args.coco is not None:
        return coco_source(args.coco, args.coco_images)
    if not args.topic:
        raise ValueError('--bag needs --topic (the image topic to read)')
    return bag_source(args.bag, args.topic, every=args.every)
