"""`mobius eval`: COCO AP, agnostic AR@100, referring P@0.5 and the pruning study.

    mobius eval                                   # the bundled demo model, synthetic test split
    mobius eval --checkpoint runs/demo/model.safetensors --pruning-study --out results.json
    mobius eval --checkpoint runs/demo/model.safetensors --equal-flops   # Tab. 15's comparison
    mobius eval --export model_int8 --size 160   # an export folder through the runtime
    mobius eval --checkpoint m.safetensors --annotations instances_val2017.json \\
        --images val2017 --size 384 --tasks vocabulary,agnostic
    mobius eval --annotations set/instances.json --images set/images --referring set/referring.json
    mobius eval --renderer independent --num 200 --size 160 --seed 0
    mobius eval --renderer independent --size 640 --canvas 384 512   # as the node's canvas sees it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ('vocabulary', 'agnostic', 'referring')


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        '--checkpoint', help='.safetensors checkpoint (default: the bundled demo model)'
    )
    source.add_argument(
        '--export',
        type=Path,
        help='an export folder (`mobius export`, `mobius quantize`) evaluated through the '
        "runtime on ONNX Runtime: its one-label numbers compare with a checkpoint's one_label/",
    )
    parser.add_argument(
        '--annotations', type=Path, help='COCO instances JSON (default: synthetic test scenes)'
    )
    parser.add_argument('--images', type=Path, help='image folder of --annotations')
    parser.add_argument(
        '--referring',
        type=Path,
        help='referring file of --annotations (records of image_id, ann_id, sentence, kind;'
        ' `mobius render-eval` writes one)',
    )
    parser.add_argument(
        '--renderer',
        choices=('synthetic', 'randomised', 'independent'),
        default='synthetic',
        help="scenes to evaluate on without --annotations: the training generator's split"
        ' (default), the same split drawn by its domain-randomised preset (what the randomised'
        ' recipes train on), or the independent evaluation renderer (`mobius render-eval`,'
        ' rendered in memory from --num, --size, --seed)',
    )
    parser.add_argument(
        '--background-photos',
        type=Path,
        help='a folder of photos the synthetic / randomised scenes are drawn over (never'
        ' downloaded; e.g. ../shared/data/coco_val128/val2017, photos training never used)',
    )
    parser.add_argument('--num', type=int, default=200, help='synthetic images (default 200)')
    parser.add_argument(
        '--size', type=int, help='synthetic image side / COCO short side (default: trained size)'
    )
    parser.add_argument(
        '--canvas',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='letterbox every image into this canvas (multiples of 32) as the node does with'
        ' input_height / input_width, and score at the frame size (default: the model'
        ' runs each image at its own size; --export always uses its fixed canvas)',
    )
    parser.add_argument('--split', default='test', choices=('train', 'val', 'test'))
    parser.add_argument('--seed', type=int, default=0, help='synthetic generator seed')
    parser.add_argument(
        '--tasks', default=','.join(TASKS), help=f'comma-separated subset of {",".join(TASKS)}'
    )
    parser.add_argument(
        '--pruning-study',
        action='store_true',
        help='AP, queries kept per layer and decoder MACs for pruning off and each trajectory',
    )
    parser.add_argument(
        '--equal-flops',
        action='store_true',
        help='sigmoid vs logarithmic vs exponential pruning the same number of queries: the'
        ' upper threshold of the latter two is searched to match the sigmoid default',
    )
    parser.add_argument('--min-keep', type=int, default=30, help='min_keep of the pruning study')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--out', type=Path, help='write all metrics as JSON here')


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch

    from mobius_ros.model.checkpoint import load_checkpoint
    from mobius_ros.train.eval_loop import EvalSettings, evaluate_model
    from mobius_ros.train.eval_sets import coco_eval_set, synthetic_eval_set

    tasks = tuple(t.strip() for t in args.tasks.split(',') if t.strip())
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f'unknown tasks {unknown}; choose from {TASKS}')
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.background_photos is not None and (
        args.annotations is not None or args.renderer == 'independent'
    ):
        raise SystemExit(
            '--background-photos applies to the synthetic and randomised renderers, not to'
            ' --annotations or --renderer independent'
        )
    canvas = None if args.canvas is None else (int(args.canvas[0]), int(args.canvas[1]))
    if canvas is not None:
        if canvas[0] <= 0 or canvas[1] <= 0 or canvas[0] % 32 or canvas[1] % 32:
            raise SystemExit(f'--canvas {canvas[0]} {canvas[1]}: must be positive multiples of 32')
        if args.export is not None:
            raise SystemExit('--canvas is for --checkpoint: an export runs at its own canvas')
        if args.pruning_study or args.equal_flops:
            raise SystemExit('--canvas does not apply to --pruning-study or --equal-flops')
    if args.export is not None:
        if args.pruning_study or args.equal_flops:
            raise SystemExit('--pruning-study and --equal-flops need --checkpoint')
        checkpoint, model = args.export, None
        size = args.size or 160
    else:
        checkpoint = _checkpoint_path(args.checkpoint)
        model = load_checkpoint(checkpoint, device=args.device)
        size = args.size or _trained_size(checkpoint)
    if args.annotations is not None:
        if args.images is None:
            raise SystemExit('--annotations needs --images')
        data = coco_eval_set(
            args.annotations, args.images, short_side=size, referring=args.referring
        )
        if args.referring is None:
            tasks = tuple(t for t in tasks if t != 'referring')  # no referring ground truth
        source = str(args.annotations)
    elif args.referring is not None:
        raise SystemExit('--referring needs --annotations and --images')
    elif args.renderer == 'independent':
        import tempfile

        from mobius_ros.evalrender.coco import write_set

        with tempfile.TemporaryDirectory() as tmp:
            paths = write_set(tmp, num=args.num, size=size, seed=args.seed)
            data = coco_eval_set(
                paths['annotations'],
                paths['images'],
                short_side=size,
                referring=paths['referring'],
            )
        source = f'independent renderer, {args.num} images at {size} px, seed {args.seed}'
    else:
        photos: tuple[str, ...] = ()
        if args.background_photos is not None:
            from mobius_ros.common.images import image_files

            photos = tuple(str(p) for p in image_files(args.background_photos))
            if not photos:
                raise SystemExit(f'--background-photos {args.background_photos}: no images there')
        randomised = args.renderer == 'randomised'
        data = synthetic_eval_set(
            num_images=args.num,
            size=size,
            split=args.split,
            seed=args.seed,
            randomised=randomised,
            background_photos=photos,
        )
        source = (
            f'synthetic {args.split} split{" (randomised)" if randomised else ""}, {args.num}'
            f' images at {size} px, seed {args.seed}'
            + (f', photos from {args.background_photos}' if photos else '')
        )
    settings = EvalSettings(
        batch_size=args.batch_size, pruning_min_keep=args.min_keep, canvas=canvas
    )
    if canvas is not None:
        source += f', letterboxed into a {canvas[0]}x{canvas[1]} canvas'
    if model is None:
        from mobius_ros.train.eval_runtime import evaluate_export, open_export

        with open_export(args.export) as segmenter:
            results = evaluate_export(segmenter, data, tasks=tasks)
        results = {'export': str(args.export), 'data': source, **results}
        print(_summary({'checkpoint': str(args.export), **results}))
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + '\n')
        return 0
    results = evaluate_model(
        model,
        data,
        settings=settings,
        tasks=tasks,
        with_pruning_study=args.pruning_study,
        with_equal_flops=args.equal_flops,
    )
    results = {'checkpoint': str(checkpoint), 'data': source, **results}
    print(_summary(results))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + '\n')
    return 0


def _checkpoint_path(checkpoint: str | None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    from mobius_ros.runtime.backends import resolve_checkpoint

    return resolve_checkpoint(None)


def _trained_size(checkpoint: Path) -> int:
    """The training size recorded beside a run's checkpoint (recipe.yaml), else 160."""
    import yaml

    for recipe_file in (checkpoint.parent / 'recipe.yaml', checkpoint.with_suffix('.recipe.yaml')):
        if recipe_file.is_file():
            recipe = yaml.safe_load(recipe_file.read_text())
            return int(recipe['short_sides'][0])
    return 160


def _summary(results: dict) -> str:
    """The headline numbers, one per line."""
    lines = [f'checkpoint: {results["checkpoint"]}', f'data: {results["data"]}']
    headline = [
        ('mask AP', 'segm/AP'),
        ('box AP', 'bbox/AP'),
        ('mask AP, one label per query', 'one_label/segm/AP'),
        ('agnostic mask AR@100', 'agnostic/segm/AR100'),
        ('agnostic box AR@100', 'agnostic/bbox/AR100'),
        ('referring P@0.5 (all)', 'referring/all/P@0.5'),
        ('referring P@0.5 (seen phrasings)', 'referring/seen/P@0.5'),
        ('referring P@0.5 (held-out phrasings)', 'referring/held_out/P@0.5'),
        ('referring oIoU (all)', 'referring/all/oIoU'),
    ]
    headline += [
        (f'referring P@0.5 ({key.split("/")[1].removeprefix("kind_")} expressions)', key)
        for key in sorted(results)
        if key.startswith('referring/kind_') and key.endswith('/P@0.5')
    ]
    for label, key in headline:
        if key in results:
            lines.append(f'{label:38s} {results[key]:6.1f}')
    rows = [('pruning', row) for row in results.get('pruning_study', [])]
    rows += [('equal-FLOPs', row) for row in results.get('pruning_equal_flops', [])]
    for study, row in rows:
        kept = '/'.join(f'{k:g}' for k in row['queries_kept'])
        lines.append(
            f'{study} {row["trajectory"]:12s} upper {row["upper"]:.3f}'
            f'  mask AP {row["mask_AP"]:5.1f}  box AP {row["box_AP"]:5.1f}'
            f'  decoder {row["decoder_MMACs"]:7.1f} MMACs  kept {kept}'
        )
    return '\n'.join(lines)
