"""Multiply-accumulate counting in the convention of the MOBIUS paper (fvcore / detectron2 style).

The paper reports "FLOPs" that are multiply-accumulates (MACs) of what inference computes, counted
on a traced graph from which dead outputs are removed. `MacCounter` reproduces that without
tracing: a `TorchDispatchMode` records every aten op with its MACs, the component it ran in (by
the innermost registered module on the call stack) and the ops that produced its inputs. Asking
for a report with the tensors that inference keeps walks that graph backwards, so work whose
results never reach those tensors (the text branch of the bi-attention fusion, heads of
intermediate layers, deep-supervision proposals) is reported as dead and left out of the total.

Counting rules (fvcore defaults as detectron2 uses them):
- matmuls and convolutions: one MAC per multiply-add; fused attention kernels count their two
  matmuls ([B, H, Lq, Lk] x (Dqk + Dv));
- `grid_sample` (bilinear): 4 MACs per sampled point per channel, i.e. 4 per output element
  (neither `torch.utils.flop_counter` nor fvcore's tracer sees it inside deformable attention);
- bilinear upsampling 4 and nearest 1 per output element; LayerNorm / GroupNorm 5 per element
  (4 without affine); adaptive average pooling 1 per input element;
- batch norm (eval) 2 per element, as fvcore does: with it ResNet-50 at 800x800 gives the paper's
  52.4 G (52.13 G without); elementwise ops, softmax and activations are free;
- `F.scaled_dot_product_attention` counts its two matmuls, once, whatever kernel runs it. fvcore's
  tracer never saw that op; `fused_attention=False` reproduces that blind spot (the paper's Tab. 11
  numbers for the hybrid MobileNetV4 encoders only fit without it, see docs/flops.md).
"""

from mobius_ros.model.flops.counter import (
    UNATTRIBUTED,
    MacCounter,
    MacReport,
    count_macs,
    giga,
    tensors_in,
)
from mobius_ros.model.flops.formulas import attention_macs, conv_macs, grid_sample_macs
from mobius_ros.model.flops.model import (
    COMPONENTS,
    DECODER,
    FUSION,
    PIXEL_DECODER,
    TEXT_PROJECTION,
    VISION_ENCODER,
    ModelMacs,
    clip_text_tower_macs,
    count_model_forward,
    count_model_stages,
    model_components,
)

__all__ = [
    'COMPONENTS',
    'DECODER',
    'FUSION',
    'PIXEL_DECODER',
    'TEXT_PROJECTION',
    'UNATTRIBUTED',
    'VISION_ENCODER',
    'MacCounter',
    'MacReport',
    'ModelMacs',
    'attention_macs',
    'clip_text_tower_macs',
    'conv_macs',
    'count_macs',
    'count_model_forward',
    'count_model_stages',
    'giga',
    'grid_sample_macs',
    'model_components',
    'tensors_in',
]
