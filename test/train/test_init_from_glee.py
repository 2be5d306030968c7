"""MOBIUS-R50 from a converted GLEE: `--init-from` copies what transfers, then training runs.

The GPU recipe configs/mobius_r50_from_glee.yaml, shrunk to the reduced GLEE-Lite of the
parity fixtures (same widths, so every transferable tensor fits) and a few CPU steps.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from mobius_ros.model.checkpoint import load_checkpoint, save_checkpoint
from mobius_ros.train.recipes import DatasetSpec, load_recipe
from scripts.glee_reference import converted_reduced

ROOT = Path(__file__).resolve().parents[2]


def _converted_glee(path: Path):
    model, _ = converted_reduced()
    save_checkpoint(model, path)
    return model.config


def test_mobius_r50_starts_from_glee_and_trains(tmp_path: Path, capsys) -> None:
    from mobius_ros.cli import main

    source = tmp_path / 'glee_lite.safetensors'
    glee = _converted_glee(source)
    recipe = load_recipe(str(ROOT / 'configs' / 'mobius_r50_from_glee.yaml'))
    assert recipe.variant == 'MOBIUS-R50' and recipe.text_encoder == 'hf-clip'
    overrides = dict(recipe.model_overrides)
    assert overrides['backbone']['name'] == glee.backbone.name
    # The GPU recipe at the reduced GLEE's widths, on synthetic scenes for two steps.
    small = recipe.replace(
        datasets=(DatasetSpec(name='synthetic', source='synthetic', task='vocabulary'),),
        iterations=2,
        batch_size=1,
        short_sides=(64,),
        max_long_side=96,
        init_from=str(source),
        model_overrides=(
            ('backbone', {**glee.to_dict()['backbone']}),
            ('text', glee.to_dict()['text']),
            ('pixel_decoder', {'num_layers': 1, 'ffn_dim': 128, 'fusion_dim': 256}),
            ('decoder', {'num_layers': 3, 'num_queries': 20, 'ffn_dim': 128}),
        ),
        loss=recipe.loss.__class__(num_points=64),
        match=recipe.match.__class__(num_points=64),
        log_every=1,
        checkpoint_every=2,
    )
    path = tmp_path / 'recipe.yaml'
    path.write_text(yaml.safe_dump(small.to_dict()))
    out = tmp_path / 'run'
    assert main(['train', '--recipe', str(path), '--out', str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    report = {
        line.split()[0]: line.split()[1]
        for line in printed.splitlines()
        if line.startswith('  ') and '/' in line
    }
    # The trunk, the text tower and its projection transfer whole.
    for part in ('backbone', 'text_encoder', 'text_proj'):
        copied, total = report[part].split('/')
        assert copied == total and int(total) > 0, (part, report[part])
    # The decoder layers share GLEE's layout: attention and FFN weights transfer; only the
    # deformable sampling offsets and weights differ (one memory level here, GLEE's four).
    copied, total = map(int, report['decoder.layers.0'].split('/'))
    assert total - 4 <= copied < total, report['decoder.layers.0']
    # The bottleneck pixel decoder is new.
    copied, total = map(int, report['pixel_decoder'].split('/'))
    assert copied < total
    assert (out / 'model.safetensors').is_file()
    model = load_checkpoint(out / 'model.safetensors')
    assert model.config.name == 'MOBIUS-R50' and model.config.decoder.style == 'mobius'
    assert model.config.backbone.name == 'd2-resnet50' and model.config.text.name == 'hf-clip'
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
