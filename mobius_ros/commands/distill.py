"""`mobius distill`: a teacher labels unlabelled images once, a smaller student learns from it.

    mobius distill --teacher big.safetensors --student configs/distill_student.yaml \\
        --images photos/ --out runs/student
    mobius distill --student MOBIUS-mobile-lite --bag robot.mcap --topic /camera/image_raw \\
        --every 10 --vocabulary 'mug,laptop,chair' --size 384x512 --out runs/robot
    torchrun --nproc_per_node 2 -m mobius_ros.cli distill --coco train.json --student ... --out d
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--teacher',
        help='teacher .safetensors checkpoint (MOBIUS or converted GLEE; default:'
        ' the bundled demo model)',
    )
    parser.add_argument(
        '--student',
        required=True,
        help="student: a variant name ('MOBIUS-mobile-lite'), a named recipe or a recipe YAML"
        ' (its model, optimiser, schedule and loss weights are used, its datasets are not)',
    )
    parser.add_argument('--out', required=True, type=Path, help='run directory of the student')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', type=Path, help='a folder of images (searched recursively)')
    source.add_argument('--coco', type=Path, help='a COCO JSON whose images are used (labels not)')
    source.add_argument('--bag', type=Path, help='a rosbag2 recording (mcap or sqlite3)')
    parser.add_argument(
        '--coco-images', type=Path, help='image folder of --coco (default: its folder)'
    )
    parser.add_argument('--topic', help='image topic of --bag (Image or CompressedImage)')
    parser.add_argument('--every', type=int, default=1, help='every N-th frame of --bag')
    parser.add_argument(
        '--vocabulary',
        help='a text file (one phrase a line) or comma-separated phrases;'
        " default: the teacher's own vocabulary",
    )
    parser.add_argument(
        '--size',
        help="input canvas 'H' or 'HxW', a multiple of 32 (default: the teacher's training size)",
    )
    parser.add_argument(
        '--cache-dir', type=Path, help='teacher cache (default: OUT/teacher_cache)'
    )
    parser.add_argument(
        '--rebuild-cache',
        action='store_true',
        help='relabel when the cache belongs to another teacher, vocabulary or size',
    )
    parser.add_argument('--teacher-batch', type=int, default=8, help='images per teacher pass')
    parser.add_argument('--iterations', type=int, help="student steps (default: the recipe's)")
    parser.add_argument('--batch-size', type=int, help="override the recipe's batch size")
    parser.add_argument('--seed', type=int, help="override the recipe's seed")
    parser.add_argument(
        '--score-threshold', type=float, default=0.3, help='teacher score a pseudo-instance needs'
    )
    parser.add_argument(
        '--soft-targets',
        type=float,
        default=0.5,
        help="weight of the teacher's scores in the class targets (0 = one-hot)",
    )
    parser.add_argument(
        '--score-weight',
        type=float,
        default=2.0,
        help="weight of the matched queries' score distillation",
    )
    parser.add_argument(
        '--feature-weight',
        type=float,
        default=1.0,
        help='weight of the mask-feature distillation (0: off, not cached)',
    )
    parser.add_argument(
        '--agnostic-ratio',
        type=float,
        default=0.2,
        help="share of batches with the prompt 'object'",
    )
    parser.add_argument('--resume', action='store_true', help="continue from OUT's checkpoint")
    parser.add_argument('--device', help="'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--time-limit-min', type=float, help='stop the student after this long')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch

    from mobius_ros.commands.distill_setup import (
        open_source,
        parse_size,
        resolve_student,
        resolve_vocabulary,
        teacher_path,
    )
    from mobius_ros.model.checkpoint import load_checkpoint
    from mobius_ros.train.distill import DistillSettings, PseudoLabels
    from mobius_ros.train.distill_cache import CacheIdentity, TeacherCache, teacher_identity
    from mobius_ros.train.distill_loop import distill_student
    from mobius_ros.train.distill_teacher import label_images
    from mobius_ros.train.loop import default_device, setup_distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = DistillSettings(
            score_threshold=args.score_threshold,
            soft_targets=args.soft_targets,
            score_weight=args.score_weight,
            feature_weight=args.feature_weight,
            agnostic_ratio=args.agnostic_ratio,
        )
        recipe = resolve_student(args.student)
        teacher_file = teacher_path(args.teacher)
        vocabulary = resolve_vocabulary(args.vocabulary, teacher_file)
        input_hw = parse_size(args.size, teacher_file)
        source = open_source(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f'mobius distill: {error}') from error
    changes = {'short_sides': (input_hw[0],), 'max_long_side': max(input_hw)}
    for field_name, value in (
        ('iterations', args.iterations),
        ('batch_size', args.batch_size),
        ('seed', args.seed),
    ):
        if value is not None:
            changes[field_name] = value
    recipe = recipe.replace(**changes)
    device = torch.device(args.device) if args.device else default_device()
    info = setup_distributed(device)
    out: Path = args.out
    index_file = out / 'distill_images.json'
    teacher = load_checkpoint(teacher_file, device=device)
    identity = CacheIdentity(
        teacher=teacher_identity(teacher_file),
        vocabulary=vocabulary,
        input_hw=input_hw,
        features=settings.feature_weight > 0,
    )
    cache_dir = args.cache_dir or out / 'teacher_cache'
    if info.is_main:
        from mobius_ros.train.distill_cache import CacheMismatchError

        try:
            cache = TeacherCache(cache_dir, identity, rebuild=args.rebuild_cache)
        except CacheMismatchError as error:
            raise SystemExit(f'mobius distill: {error}') from error
        print(f'teacher {teacher_file} ({teacher.config.name}) labels {source.description}')
        summary = label_images(
            teacher, source, cache, total=source.count, batch_size=args.teacher_batch,
            device=device, progress=not args.no_progress,
        )  # fmt: skip
        if not summary.hashes:
            raise SystemExit(
                f'mobius distill: no readable image in {source.description}'
                f' ({summary.skipped} unreadable: {"; ".join(summary.errors[:3])})'
            )
        out.mkdir(parents=True, exist_ok=True)
        index_file.write_text(json.dumps(summary.hashes) + '\n')
        report = {
            'teacher': str(teacher_file),
            'teacher_identity': identity.teacher,
            'teacher_variant': teacher.config.name,
            'vocabulary': list(vocabulary),
            'input_hw': list(input_hw),
            'source': source.description,
            'images': len(summary.hashes),
            'labelled_now': summary.labelled,
            'from_cache': summary.cached,
            'unreadable': summary.skipped,
            'unreadable_examples': summary.errors,
            'pseudo_instances_stored_now': summary.instances,
            'teacher_seconds': round(summary.seconds, 2),
            'settings': settings.__dict__,
        }
        (out / 'distill.json').write_text(json.dumps(report, indent=2) + '\n')
        print(
            f'teacher: {summary.labelled} labelled, {summary.cached} from the cache,'
            f' {summary.skipped} unreadable skipped, {summary.seconds:.1f} s'
        )
    if info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    if not info.is_main:
        cache = TeacherCache(cache_dir, identity)
    hashes = json.loads(index_file.read_text())
    teacher_dim = teacher.pixel_decoder.dim if identity.features else None
    del teacher
    data = PseudoLabels(cache, hashes, settings, batch_size=recipe.batch_size, seed=recipe.seed)
    result = distill_student(
        recipe, data, out, teacher_dim=teacher_dim, resume=args.resume, device=device,
        time_limit_s=None if args.time_limit_min is None else args.time_limit_min * 60,
        progress=not args.no_progress,
    )  # fmt: skip
    if info.is_main:
        print(json.dumps({
            'student': recipe.variant, 'steps': result.steps, 'final_loss': result.final_loss,
            'minutes': round(result.seconds / 60, 2), 'model': str(result.model_path),
        }, indent=2))  # fmt: skip
    return 0
