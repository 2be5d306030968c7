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
