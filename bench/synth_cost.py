"""Per-scene cost of the synthetic generator: default and randomised presets at several sizes.

`python -m bench.synth_cost` -> bench/results/synth_cost.json (median ms per scene over rounds;
scenes are drawn per training sample, so this is data-loading cost per image).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mobius_ros.common.images import image_files
from mobius_ros.train.data.synthetic import SynthConfig, generate_scene, scene_rng

RESULTS = Path(__file__).parent / 'results'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--scenes', type=int, default=50, help='scenes per round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--sizes', type=int, nargs='+', default=[160, 320, 640])
    parser.add_argument('--photos', type=Path, default=None, help='background photo folder')
    parser.add_argument('--out', type=Path, default=RESULTS / 'synth_cost.json')
    args = parser.parse_args()
    photos = tuple(str(p) for p in image_files(args.photos)) if args.photos else ()
    cases = {}
    for side in args.sizes:
        cases[f'default@{side}'] = SynthConfig(image_hw=(side, side))
        cases[f'randomised@{side}'] = SynthConfig.randomised((side, side))
        if photos:
            cases[f'randomised+photos@{side}'] = SynthConfig.randomised((side, side), photos)
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved rounds
        for name, config in cases.items():
            start = time.perf_counter()
            for i in range(args.scenes):
                generate_scene(scene_rng(0, 'train', i), split='train', config=config)
            timings[name].append((time.perf_counter() - start) / args.scenes * 1000)
    result = {
        'unit': 'ms per scene (median over rounds)',
        'scenes_per_round': args.scenes,
        'rounds': args.rounds,
        'photos': str(args.photos) if args.photos else None,
        'ms_per_scene': {name: round(float(np.median(t)), 2) for name, t in timings.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + '\n')
    print(json.dumps(result['ms_per_scene'], indent=2))


if __name__ == '__main__':
    main()
