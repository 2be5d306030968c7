"""One tiny random-init MOBIUS exported once per session (exports cost seconds each)."""

from __future__ import annotations

import pytest
from export_fixture import CANVAS, Exported

torch = pytest.importorskip('torch')
pytest.importorskip('onnxruntime')


# The paper's stride-16 bottleneck, and the bundled demo model's layout (stride-8 bottleneck,
# decoder cross-attending to every scale, attention pooling of referring expressions).
LAYOUTS = {
    'bottleneck16': {},
    'demo_layout': {
        'pixel_decoder': {'encoder_strides': (8,)},
        'decoder': {'multi_scale': True, 'referring_pooling': 'attention'},
    },
    # The mobile option whose norms fold into the convolutions at export.
    'batch_norm': {'pixel_decoder': {'norm': 'batch'}},
    # A converted GLEE-Lite and GLEE-Plus (reduced, with the parity test's seeded GLEE weights).
    'glee_lite': None,
    'glee_plus': None,
}


@pytest.fixture(scope='session', params=sorted(LAYOUTS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    from mobius_ros.export.onnx import ExportOptions, export_model
    from mobius_ros.model.variants import build_model

    torch.manual_seed(0)
    if request.param.startswith('glee_'):
        from scripts.glee_reference import converted_reduced

        variant = {'glee_lite': 'GLEE-Lite', 'glee_plus': 'GLEE-Plus'}[request.param]
        model = converted_reduced(variant=variant)[0]
    else:
        model = build_model('MOBIUS-tiny', **LAYOUTS[request.param]).eval()
    if getattr(model.decoder, 'referring_pool', None) is not None:
        # Its last layer starts at zero (= a plain mean); make the weighting non-uniform.
        torch.nn.init.normal_(model.decoder.referring_pool[-1].weight, std=1.0)
    generator = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            # Fresh statistics are the identity; give the fold something to get wrong.
            module.running_mean.normal_(0.0, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0.0, 0.3, generator=generator)
    directory = tmp_path_factory.mktemp('export') / request.param
    export_model(model, directory, ExportOptions(input_size=CANVAS))
    return Exported(model, directory)
