"""One tiny random-init MOBIUS exported once per session (exports cost seconds each)."""

from __future__ import annotations

import pytest
from export_fixture import CANVAS, Exported

torch = pytest.importorskip('torch')
pytest.importorskip('onnxruntime')


@pytest.fixture(scope='session')
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    model = build_model('MOBIUS-tiny').eval()
    directory = tmp_path_factory.mktemp('export') / 'tiny'
    export_model(model, directory, ExportOptions(input_size=CANVAS))
    return Exported(model, directory)
