"""Vision encoders as features-only extractors: image -> {stride: feature map}.

timm provides ResNet-50 and MobileNetV4; FasterViT comes from the optional `fastervit` package
(NVIDIA non-commercial licence, hence an extra); 'd2-resnet50' is the ResNet-50 GLEE-Lite runs
(detectron2's layout, loaded from a converted GLEE checkpoint) and 'd2-swin' the Swin-L of
GLEE-Plus (swin.py); a tiny conv net serves the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.model.config import BackboneConfig

STRIDES = (4, 8, 16, 32)

# FasterViT-0..3 from the `fastervit` package (model name, channels at strides 4..32).
FASTERVIT = {
    'fastervit-0': ('faster_vit_0_any_res', (64, 128, 256, 512)),
    'fastervit-1': ('faster_vit_1_any_res', (80, 160, 320, 640)),
    'fastervit-2': ('faster_vit_2_any_res', (96, 192, 384, 768)),
    'fastervit-3': ('faster_vit_3_any_res', (128, 256, 512, 1024)),
}


class TimmBackbone(nn.Module):
    """A timm model created with `features_only=True`, restricted to strides 4..32.

    Args:
        name: timm model name (e.g. 'resnet50', 'mobilenetv4_conv_small').
        pretrained: download ImageNet weights (users' machines only; tests never do).
    """

    def __init__(self, name: str, *, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(name, pretrained=pretrained, features_only=True)
        reductions = self.body.feature_info.reduction()
        missing = [s for s in STRIDES if s not in reductions]
        if missing:
            raise ValueError(f'{name} has no features at strides {missing}')
        # Built once with every stage; outputs at other strides (2) are simply not returned.
        self.picks = [reductions.index(s) for s in STRIDES]
        channels = self.body.feature_info.channels()
        self.channels = {s: channels[i] for s, i in zip(STRIDES, self.picks)}

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """[B, 3, H, W] -> {stride s: [B, C_s, H/s, W/s]} for s in 4, 8, 16, 32."""
        outputs = self.body(images)
        return {s: outputs[i] for s, i in zip(STRIDES, self.picks)}


class FasterViTBackbone(nn.Module):
    """FasterViT-0..3 (Hatamizadeh et al.) from the optional `fastervit` package.

    Its hierarchical attention fixes the input resolution at construction, so the image size
    is part of the backbone.

    Args:
        name: 'fastervit-0' .. 'fastervit-3'.
        image_size: (H, W) of the input tensor.
        pretrained: download ImageNet weights.
    """

    def __init__(
        self, name: str, *, image_size: tuple[int, int], pretrained: bool = False
    ) -> None:
        super().__init__()
        try:
            from fastervit import create_model
        except ImportError as exc:
            raise ImportError(
                f'{name} needs the optional `fastervit` package: install the `fastervit` extra'
                ' (pip install --no-deps fastervit)'
            ) from exc
        model_name, channels = FASTERVIT[name]
        model = create_model(model_name, pretrained=pretrained, resolution=list(image_size))
        self.patch_embed = model.patch_embed
        self.levels = model.levels
        self.channels = dict(zip(STRIDES, channels))

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """[B, 3, H, W] -> {stride s: [B, C_s, H/s, W/s]} for s in 4, 8, 16, 32."""
        x = self.patch_embed(images)
        features = {}
        for stride, level in zip(STRIDES, self.levels):
            # A level downsamples at its end; the feature of this stride is taken before that.
            downsample, level.downsample = level.downsample, None
            try:
                x = level(x)
            finally:
                level.downsample = downsample
            features[stride] = x
            if downsample is not None:
                x = downsample(x)
        return features


class TinyBackbone(nn.Module):
    """A four-stage conv net (stride 4..32) for tests and CPU demos.

    Args:
        width: channels at stride 4; doubled at each later stage.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], widths[0]
        for cout in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(cout, cout, 3, padding=1),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                )
            )
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.channels = dict(zip(STRIDES, widths))

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """[B, 3, H, W] -> {stride s: [B, C_s, H/s, W/s]} for s in 4, 8, 16, 32."""
        x = self.stem(images)
        features = {}
        for stride, stage in zip(STRIDES, self.stages):
            x = stage(x)
            features[stride] = x
        return features


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms: y = x * scale + shift.

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale, per channel;
    all four are buffers (GLEE's trunk keeps them frozen) and there is no batch counter.

    Args:
        channels: C.
        eps: 1e-5, detectron2's.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer('weight', torch.ones(channels))
        self.register_buffer('bias', torch.zeros(channels))
        self.register_buffer('running_mean', torch.zeros(channels))
        self.register_buffer('running_var', torch.ones(channels) - eps)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C, H, W]."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None].to(x.dtype) + shift[:, None, None].to(x.dtype)


class ConvFrozenBN(nn.Module):
    """Bias-free conv followed by frozen batch norm."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck, 1x1 -> 3x3 (carrying the stride) -> 1x1, plus the shortcut.

    The shortcut is a strided 1x1 conv with frozen BN where the width changes, else identity.
    """

    def __init__(self, cin: int, width: int, cout: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvFrozenBN(cin, width, 1)
        self.conv2 = ConvFrozenBN(width, width, 3, stride=stride)
        self.conv3 = ConvFrozenBN(width, cout, 1)
        self.shortcut = ConvFrozenBN(cin, cout, 1, stride=stride) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        """[B, C_in, H, W] -> [B, C_out, H / stride, W / stride]."""
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


D2_BLOCKS = (3, 4, 6, 3)  # ResNet-50's bottlenecks per stage (res2..res5)


class D2ResNet50(nn.Module):
    """ResNet-50 as detectron2 builds it for GLEE-Lite (STRIDE_IN_1X1 False, FrozenBN).

    Stem: 7x7 stride-2 conv, frozen BN, ReLU, 3x3 stride-2 max pool. Stages res2..res5 of 3, 4,
    6, 3 bottlenecks; each later stage halves the resolution in its first block's 3x3 and
    doubles the bottleneck and output widths.

    Args:
        stem_width: stem output channels (64).
        width_per_group: bottleneck width of res2 (64).
        res2_out: output channels of res2 (256); res3..res5 give 2x, 4x, 8x.
    """

    def __init__(
        self, *, stem_width: int = 64, width_per_group: int = 64, res2_out: int = 256
    ) -> None:
        super().__init__()
        self.stem = ConvFrozenBN(3, stem_width, 7, stride=2)
        stages, cin = [], stem_width
        for index, blocks in enumerate(D2_BLOCKS):
            width, cout = width_per_group * 2**index, res2_out * 2**index
            stage = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(Bottleneck(cin, width, cout, stride=stride))
                cin = cout
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.channels = {s: res2_out * 2**i for i, s in enumerate(STRIDES)}

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """[B, 3, H, W] -> {stride s: [B, C_s, H/s, W/s]} for s in 4, 8, 16, 32."""
        x = F.max_pool2d(F.relu(self.stem(images)), kernel_size=3, stride=2, padding=1)
        features = {}
        for stride, stage in zip(STRIDES, self.stages):
            x = stage(x)
            features[stride] = x
        return features


_NORM_TENSORS = ('weight', 'bias', 'running_mean', 'running_var')


def d2_resnet_from_glee(
    take: Callable[[str], Tensor], config: BackboneConfig
) -> dict[str, Tensor]:
    """GLEE's 'backbone.*' tensors -> the state dict of `D2ResNet50`.

    GLEE names a conv `<block>.conv1.weight` with its norm at `<block>.conv1.norm.*` (FrozenBN:
    weight, bias, running_mean, running_var; no num_batches_tracked); blocks are
    `res<2..5>.<i>`, the stem `stem.conv1`. The names do not depend on the widths, so `config`
    is not read; the caller checks the shapes against the model built from it.
    """
    del config
    out: dict[str, Tensor] = {}

    def conv(glee: str, ours: str) -> None:
        out[f'{ours}.conv.weight'] = take(f'backbone.{glee}.weight')
        for leaf in _NORM_TENSORS:
            out[f'{ours}.norm.{leaf}'] = take(f'backbone.{glee}.norm.{leaf}')

    conv('stem.conv1', 'stem')
    for index, blocks in enumerate(D2_BLOCKS):
        for block in range(blocks):
            glee, ours = f'res{index + 2}.{block}', f'stages.{index}.{block}'
            for part in ('conv1', 'conv2', 'conv3'):
                conv(f'{glee}.{part}', f'{ours}.{part}')
            if block == 0:
                conv(f'{glee}.shortcut', f'{ours}.shortcut')
    return out


def build_backbone(
    name: str,
    *,
    image_size: tuple[int, int],
    pretrained: bool = False,
    tiny_width: int = 16,
    d2_stem_width: int = 64,
    d2_width_per_group: int = 64,
    d2_res2_out: int = 256,
    swin_embed_dim: int = 192,
    swin_depths: tuple[int, ...] = (2, 2, 18, 2),
    swin_heads: tuple[int, ...] = (6, 12, 24, 48),
    swin_window: int = 12,
) -> nn.Module:
    """Backbone by name: 'tiny', 'd2-resnet50', 'd2-swin', 'fastervit-0'..'3', or a timm name.

    The d2_* widths only apply to 'd2-resnet50', the swin_* ones to 'd2-swin' (see
    `BackboneConfig`).
    """
    if name == 'tiny':
        return TinyBackbone(tiny_width)
    if name in ('d2-resnet50', 'd2-swin') and pretrained:
        raise ValueError(
            f'{name!r} has no ImageNet weights to download: its weights come from a GLEE '
            'checkpoint converted with `mobius convert-glee`'
        )
    if name == 'd2-resnet50':
        return D2ResNet50(
            stem_width=d2_stem_width, width_per_group=d2_width_per_group, res2_out=d2_res2_out
        )
    if name == 'd2-swin':
        from mobius_ros.model.swin import D2Swin

        return D2Swin(
            embed_dim=swin_embed_dim,
            depths=tuple(swin_depths),
            num_heads=tuple(swin_heads),
            window=swin_window,
        )
    if name in FASTERVIT:
        return FasterViTBackbone(name, image_size=image_size, pretrained=pretrained)
    return TimmBackbone(name, pretrained=pretrained)
