"""One tiny random-init MOBIUS exported once per session (exports cost seconds each)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('onnxruntime')

CANVAS = (64, 96)  # H, W: non-square on purpose, multiples of 32


@dataclass
class Exported:
    model: object  # mobius_ros.model.mobius.Mobius
    directory: Path


@pytest.fixture(scope='session')
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').eval()
    directory = tmp_path_factory.mktemp('export') / 'tiny'
    export_model(model, directory, ExportOptions(input_size=CANVAS))
    return Exported(model, directory)
