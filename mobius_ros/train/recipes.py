"""Named training recipes as frozen dataclasses; YAML files in `configs/` map onto them.

- `paper`: the supplementary's single-stage recipe (§6, Tab. 5): the 14-dataset mixture with its
  sampling ratios, 500k iterations, AdamW 1e-4 / wd 0.05, encoders at 0.1x, lr x0.1 after 400k and
  500k iterations (as written; the second decay coincides with the end of training), multi-scale
  384-800 short side, long side <= 1333.
- `demo`: the bundled CPU-trained demo model on synthetic scenes (DESIGN §7).
- `coco128`: a short run on the 128-image COCO subset (paths relative to `--data-root`).
- `tiny`: seconds-long runs for tests.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobius_ros.train.criterion import LossWeights
from mobius_ros.train.matcher import MatchCosts
from mobius_ros.train.optim import OptimConfig

TASKS = ('vocabulary', 'agnostic', 'referring')
SOURCES = ('synthetic', 'coco', 'refcoco')


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the mixture.

    Attributes:
        name: label used in logs.
        source: 'synthetic' (generated on the fly), 'coco' (instances JSON) or 'refcoco'
            (refs + instances JSON).
        task: 'vocabulary' (class names), 'agnostic' (prompt "object") or 'referring'.
        ratio: sampling ratio within the mixture (Tab. 5); one dataset per batch.
        images: image folder (coco/refcoco).
        annotations: instances JSON (coco) or refs JSON (refcoco).
        instances: instances JSON of a refcoco dataset.
        box_only: the dataset has no masks (mask losses are skipped).
        max_vocabulary: phrases per batch for large vocabularies (positives first).
        num_images: size of a synthetic split (0 = endless fresh scenes).
    """

    name: str
    source: str
    task: str = 'vocabulary'
    ratio: float = 1.0
    images: str = ''
    annotations: str = ''
    instances: str = ''
    box_only: bool = False
    max_vocabulary: int = 100
    num_images: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f'dataset {self.name}: source must be one of {SOURCES}')
        if self.task not in TASKS:
            raise ValueError(f'dataset {self.name}: task must be one of {TASKS}')
        if self.ratio <= 0:
            raise ValueError(f'dataset {self.name}: ratio must be positive')


SYNTH_DOMAINS = ('default', 'randomised')


@dataclass(frozen=True)
class SynthSpec:
    """How the recipe's synthetic scenes are drawn (`mobius_ros/train/data/synthetic.py`).

    Attributes:
        domain: 'default' (the original generator) or 'randomised' (`SynthConfig.randomised`:
            every randomisation axis on, HSV colours).
        background_photos: folder of photos (relative paths lie under `--data-root`, e.g.
            'coco128/train2017'); half the scenes get a crop of one as background. Never
            downloaded: a missing folder is an error.
        sizes: square scene sides drawn natively per sample (empty: `short_sides[0]`). With
            sizes given, a synthetic-only recipe is not resized (flip only); the scenes of one
            batch of an endless synthetic dataset share a size (finite ones are padded to the
            largest).
        size_weights: relative weight of each size (empty: uniform).
    """

    domain: str = 'default'
    background_photos: str = ''
    sizes: tuple[int, ...] = ()
    size_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.domain not in SYNTH_DOMAINS:
            raise ValueError(f'synth.domain must be one of {SYNTH_DOMAINS}, got {self.domain!r}')
        if any(side < 32 for side in self.sizes):
            raise ValueError(f'synth.sizes must all be >= 32, got {self.sizes}')
        if self.size_weights and len(self.size_weights) != len(self.sizes):
            raise ValueError('synth.size_weights needs one weight per entry of synth.sizes')
        if self.size_weights and (min(self.size_weights) < 0 or sum(self.size_weights) <= 0):
            raise ValueError('synth.size_weights must be >= 0 with a positive sum')


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides the output directory.

    Attributes:
        variant: model name in `mobius_ros.model.variants.VARIANTS`.
        text_encoder: 'clip', 'minilm' or 'tiny'.
        model_overrides: (field, value) pairs passed to `build_model` (e.g. num_queries).
        short_sides: multi-scale training sizes of the shorter image side; `max_long_side` caps
            the longer one.
        batch_size: images per process per step.
        amp: bfloat16 autocast when training on CUDA (ignored on CPU).
        freeze_text_encoder: keep the text encoder fixed (its projection still learns).
        init_from: a .safetensors checkpoint whose weights start the run (fine-tuning, e.g.
            from the bundled demo model); tensors whose name or shape differ stay as built.
    """

    name: str
    variant: str
    text_encoder: str
    datasets: tuple[DatasetSpec, ...]
    iterations: int
    batch_size: int
    short_sides: tuple[int, ...]
    max_long_side: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    match: MatchCosts = field(default_factory=MatchCosts)
    model_overrides: tuple[tuple[str, Any], ...] = ()
    pretrained: bool = False
    init_from: str = ''
    freeze_text_encoder: bool = False
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    log_every: int = 20
    checkpoint_every: int = 5000
    eval_images: int = 0
    synth: SynthSpec = field(default_factory=SynthSpec)
    notes: str = field(default='', compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), the inverse of `from_dict`."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build from a nested dict; unknown keys anywhere are errors."""
        return _from_dict(cls, data, 'recipe')

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some top-level fields changed."""
        return dataclasses.replace(self, **changes)

    def with_data_root(self, root: str | Path) -> Recipe:
        """A copy whose relative dataset paths (images, annotations, instances) lie under `root`.

        Absolute and empty paths stay as they are.
        """

        def under(path: str) -> str:
            return path if not path or Path(path).is_absolute() else str(Path(root) / path)

        datasets = tuple(
            dataclasses.replace(
                d,
                images=under(d.images),
                annotations=under(d.annotations),
                instances=under(d.instances),
            )
            for d in self.datasets
        )
        synth = dataclasses.replace(
            self.synth, background_photos=under(self.synth.background_photos)
        )
        return self.replace(datasets=datasets, synth=synth)


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    """YAML lists as tuples, also inside mappings, so a loaded recipe equals the coded one."""
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise TypeError(f'{where}: expected a mapping, got {type(data).__name__}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f'{where}: unknown keys {unknown}; known: {sorted(names)}')
    return cls(**{k: _convert(hints[k], v, f'{where}.{k}') for k, v in data.items()})


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f'{where}[{i}]') for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f'{where}: expected {len(args)} items, got {len(value)}')
        return tuple(_convert(a, v, f'{where}[{i}]') for i, (a, v) in enumerate(zip(args, value)))
    if origin in (typing.Union, types.UnionType) or hint is Any:
        return _freeze(value)
    if hint is float and isinstance(value, int):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise TypeError(f'{where}: expected {hint.__name__}, got {value!r}')
    return value


def _paper_datasets(root: str = 'datasets') -> tuple[DatasetSpec, ...]:
    """Tab. 5 of the supplementary: the single-stage mixture and its sampling ratios.

    Video datasets are used frame by frame; SA1B is the 500k-image subset after the part-level
    mask-IoU NMS; the three RefCOCO datasets share one ratio (2.5) as a joint set.
    """

    def coco(
        name: str, ratio: float, task: str = 'vocabulary', box_only: bool = False
    ) -> DatasetSpec:
        return DatasetSpec(
            name=name,
            source='coco',
            task=task,
            ratio=ratio,
            images=f'{root}/{name}/images',
            annotations=f'{root}/{name}/annotations/instances_train.json',
            box_only=box_only,
        )

    def refer(name: str, ratio: float, box_only: bool = False) -> DatasetSpec:
        return DatasetSpec(
            name=name,
            source='refcoco',
            task='referring',
            ratio=ratio,
            images=f'{root}/coco/images/train2014',
            annotations=f'{root}/{name}/refs.json',
            instances=f'{root}/{name}/instances.json',
            box_only=box_only,
        )

    return (
        coco('objects365', 1.5, box_only=True),
        coco('openimages', 1.5, box_only=True),
        coco('lvis', 1.5),
        coco('coco', 1.5),
        coco('bdd', 0.15),
        refer('refcoco_joint', 2.5),  # RefCOCO + RefCOCOg + RefCOCO+
        refer('visualgenome', 2.0, box_only=True),
        coco('uvo', 0.2, task='agnostic'),
        coco('sa1b', 2.5, task='agnostic'),
        coco('ytvis19', 0.3),
        coco('ytvis21', 0.3),
        coco('ovis', 0.3),
        refer('refvos', 0.3),
    )


# The demo model's widths: mobile-lite narrowed to C = 64, Q = 50 and 4 decoder layers, with the
# bottleneck at stride 8 and a multi-scale decoder, so that objects 20-70 px across span several
# tokens (at stride 16 the shapes' corners, all that tells a hexagon from a circle, are lost).
_DEMO_WIDTHS: tuple[tuple[str, Any], ...] = (
    ('hidden_dim', 64),
    (
        'pixel_decoder',
        {
            'encoder_strides': (8,),
            'num_layers': 3,
            'num_heads': 4,
            'ffn_dim': 256,
            'fusion_dim': 256,
            'fusion_heads': 4,
        },
    ),
    (
        'decoder',
        {
            'num_queries': 50,
            'num_layers': 4,
            'num_heads': 4,
            'ffn_dim': 256,
            'multi_scale': True,
            'referring_pooling': 'attention',
        },
    ),
)

RECIPES: dict[str, Recipe] = {
    'paper': Recipe(
        name='paper',
        variant='MOBIUS-R50',
        text_encoder='clip',
        datasets=_paper_datasets(),
        iterations=500_000,
        batch_size=2,
        short_sides=tuple(range(384, 801, 32)),
        max_long_side=1333,
        optim=OptimConfig(decay_steps=(400_000, 500_000)),
        pretrained=True,
        checkpoint_every=5000,
        notes='Supplementary §6 and Tab. 5; the global batch size is not stated in the paper.',
    ),
    'demo': Recipe(
        name='demo',
        variant='MOBIUS-mobile-lite',
        text_encoder='minilm',
        datasets=(
            DatasetSpec(name='synthetic', source='synthetic', task='vocabulary', ratio=2.0),
            DatasetSpec(name='synthetic_agnostic', source='synthetic', task='agnostic', ratio=1.0),
            DatasetSpec(name='synthetic_refer', source='synthetic', task='referring', ratio=2.0),
        ),
        iterations=3900,
        batch_size=8,
        short_sides=(160,),
        max_long_side=160,
        # Narrower than mobile-lite (`_DEMO_WIDTHS`): a 2-core CPU takes ~0.41 s per step at
        # 160 px (3900 steps in 26.8 min), and steps matter more than width in a 30-minute budget.
        # Referring expressions are attention-pooled (`_DEMO_WIDTHS`): with the mean, relations
        # were found 47 % of the time; a larger referring share (60 %) did not help.
        model_overrides=_DEMO_WIDTHS,
        # Random-init backbone: the paper's 0.1x encoder lr is for pretrained encoders and
        # stalls learning from scratch (MiniLM is frozen, so no text-encoder group exists).
        optim=OptimConfig(
            lr=1e-3,
            lr_multipliers=(),
            warmup_iters=100,
            decay_steps=(3300,),
            clip_grad_norm=1.0,
        ),
        # Naming the shapes is the hard part on these scenes (the masks come early: agnostic
        # mask AP ~75 when the class accuracy is still ~25 %), so the class loss weighs 10 and
        # the mask losses 2.5 each (measured at 800 steps: shape accuracy 26 % vs 19 % with
        # 4 / 5 / 5).
        loss=LossWeights(class_weight=10.0, mask_bce_weight=2.5, dice_weight=2.5, num_points=1024),
        match=MatchCosts(num_points=1024),
        freeze_text_encoder=True,
        checkpoint_every=500,
        log_every=20,
        eval_images=200,
    ),
    'coco128': Recipe(
        name='coco128',
        variant='MOBIUS-mobile-lite',
        text_encoder='minilm',
        datasets=(
            DatasetSpec(
                name='coco128',
                source='coco',
                images='coco128/train2017',
                annotations='coco128/annotations/instances_train2017.json',
            ),
        ),
        # The whole pipeline on real COCO images in CPU minutes; the demo model's widths, so
        # `--init-from` the demo model lends it every tensor (the class head is text-based).
        iterations=800,
        batch_size=4,
        short_sides=(288, 320, 352),
        max_long_side=480,
        model_overrides=_DEMO_WIDTHS,
        optim=OptimConfig(
            lr=5e-4,
            lr_multipliers=(),
            warmup_iters=50,
            decay_steps=(650,),
            clip_grad_norm=1.0,
        ),
        loss=LossWeights(num_points=1024),
        match=MatchCosts(num_points=1024),
        freeze_text_encoder=True,
        checkpoint_every=200,
        log_every=20,
    ),
    'tiny': Recipe(
        name='tiny',
        variant='MOBIUS-tiny',
        text_encoder='tiny',
        datasets=(
            DatasetSpec(name='synthetic', source='synthetic', task='vocabulary', ratio=1.0),
            DatasetSpec(name='synthetic_refer', source='synthetic', task='referring', ratio=1.0),
        ),
        iterations=4,
        batch_size=2,
        short_sides=(64,),
        max_long_side=64,
        optim=OptimConfig(warmup_iters=2, decay_steps=(3,), clip_grad_norm=1.0),
        loss=LossWeights(num_points=128),
        match=MatchCosts(num_points=128),
        checkpoint_every=2,
        log_every=1,
    ),
}


def load_recipe(name_or_path: str) -> Recipe:
    """A named recipe, or a YAML file: `base: <name>` plus overrides, or a complete recipe."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(
            f'unknown recipe {name_or_path!r}: not one of {sorted(RECIPES)} or a file'
        )
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop('base', None)
    if base is None:
        return Recipe.from_dict(data)
    if base not in RECIPES:
        raise ValueError(f'{path}: unknown base recipe {base!r}')
    merged = _merge(RECIPES[base].to_dict(), data, str(path))
    return Recipe.from_dict(merged)


def _merge(base: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if key not in base:
            raise ValueError(f'{where}: unknown key {key!r}')
        if isinstance(base[key], dict) and isinstance(value, dict):
            merged[key] = _merge(base[key], value, f'{where}.{key}')
        else:
            merged[key] = value
    return merged
