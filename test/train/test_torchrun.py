"""Multi-process training through torchrun: 2 CPU ranks (gloo), a few steps of the tiny recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_torchrun_smoke(tmp_path: Path) -> None:
    out = tmp_path / 'run'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    command = [
        sys.executable,
        '-m',
        'torch.distributed.run',
        '--standalone',  # a free local rendezvous port, so parallel test runs never collide
        '--nproc_per_node',
        '2',
        '-m',
        'mobius_ros.cli',
        'train',
        '--recipe',
        'tiny',
        '--out',
        str(out),
        '--iterations',
        '3',
        '--threads',
        '1',
        '--no-progress',
    ]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index('{') :])
    assert summary['steps'] == 3
    # Rank 0 alone writes: one metrics file with one row per step, one final checkpoint.
    rows = (out / 'metrics.csv').read_text().strip().splitlines()
    assert len(rows) == 1 + 3
    assert (out / 'model.safetensors').is_file() and (out / 'model.json').is_file()
    assert (out / 'checkpoints' / 'latest.txt').read_text().strip() == 'step_0000003'


@pytest.mark.slow
def test_two_process_torchrun_distill(tmp_path: Path) -> None:
    import cv2

    from mobius_ros.train.data.synthetic import SynthConfig, generate_scene, scene_rng

    (tmp_path / 'images').mkdir()
    for i in range(4):
        scene = generate_scene(
            scene_rng(1, 'train', i), split='train', config=SynthConfig(image_hw=(64, 64))
        )
        cv2.imwrite(str(tmp_path / 'images' / f'{i}.png'), scene.image[..., ::-1])
    out = tmp_path / 'run'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
        '-m', 'mobius_ros.cli', 'distill', '--student', 'tiny', '--images',
        str(tmp_path / 'images'), '--size', '64', '--out', str(out), '--iterations', '3',
        '--threads', '1', '--no-progress',
    ]  # fmt: skip
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index('{\n') :])
    assert summary['steps'] == 3
    assert json.loads((out / 'distill.json').read_text())['images'] == 4
    rows = (out / 'metrics.csv').read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # the tiny recipe logs every step, rank 0 alone
    assert (out / 'checkpoints' / 'latest.txt').read_text().strip() == 'step_0000003'
