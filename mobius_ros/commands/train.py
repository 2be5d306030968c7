"""`mobius train`: train a recipe (single process, or every rank of a torchrun job).

mobius train --recipe demo --out runs/demo
torchrun --nproc_per_node 8 -m mobius_ros.cli train --recipe configs/paper.yaml --out runs/p
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        '--recipe',
        default='demo',
        help="a named recipe ('demo', 'paper', 'coco128', 'tiny') or a YAML file (configs/)",
    )
    parser.add_argument('--out', required=True, type=Path, help='run directory')
    parser.add_argument(
        '--resume', action='store_true', help="continue from the run's latest checkpoint"
    )
    parser.add_argument('--iterations', type=int, help='override the number of iterations')
    parser.add_argument('--seed', type=int, help="override the recipe's seed")
    parser.add_argument(
        '--data-root',
        type=Path,
        help="folder the recipe's relative dataset paths are read under (default: the current"
        ' directory), e.g. --recipe coco128 --data-root ../shared/data',
    )
    parser.add_argument(
        '--init-from',
        help='start from the weights of this .safetensors checkpoint (fine-tuning); tensors'
        " that do not fit the recipe's model stay as built",
    )
    parser.add_argument(
        '--device', help="'cpu', 'cuda' or 'cuda:N' (default: the rank's GPU, else the CPU)"
    )
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch decides)')
    parser.add_argument(
        '--time-limit-min', type=float, help='stop with a checkpoint after this many minutes'
    )
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument(
        '--export-to',
        type=Path,
        help='also copy the final checkpoint to this .safetensors path (its .json beside it),'
        ' e.g. mobius_ros/assets/demo/mobius-demo.safetensors',
    )


def run(args: argparse.Namespace) -> int:
    import os
    import shutil

    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch

    from mobius_ros.train.loop import train
    from mobius_ros.train.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    if args.iterations is not None:
        recipe = recipe.replace(iterations=args.iterations)
    if args.seed is not None:
        recipe = recipe.replace(seed=args.seed)
    if args.data_root is not None:
        recipe = recipe.with_data_root(args.data_root)
    if args.init_from:
        recipe = recipe.replace(init_from=args.init_from)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(
        recipe,
        args.out,
        resume=args.resume,
        device=torch.device(args.device) if args.device else None,
        time_limit_s=None if args.time_limit_min is None else args.time_limit_min * 60,
        progress=not args.no_progress,
    )
    if int(os.environ.get('RANK', '0')) == 0:
        summary = {
            'recipe': recipe.name,
            'steps': result.steps,
            'final_loss': result.final_loss,
            'minutes': round(result.seconds / 60, 2),
            'model': str(result.model_path),
        }
        if args.export_to is not None:
            target = args.export_to.with_suffix('.safetensors')
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(result.model_path, target)
            shutil.copy(result.model_path.with_suffix('.json'), target.with_suffix('.json'))
            # The recipe travels along: it records the training image size and data.
            shutil.copy(result.out_dir / 'recipe.yaml', target.with_suffix('.recipe.yaml'))
            summary['exported_to'] = str(target)
        print(json.dumps(summary, indent=2))
    return 0
