"""Vision encoders as features-only extractors: image -> {stride: feature map}.

timm provides ResNet-50 and MobileNetV4; FasterViT comes from the optional `fastervit` package
(NVIDIA non-commercial licence, hence an extra); a tiny conv net serves the tests.
"""

from __future__ import annotations

from torch import Tensor, nn

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


def build_backbone(
    name: str, *, image_size: tuple[int, int], pretrained: bool = False, tiny_width: int = 16
) -> nn.Module:
    """Backbone by name: 'tiny', 'fastervit-0'..'3', or any timm model name."""
    if name == 'tiny':
        return TinyBackbone(tiny_width)
    if name in FASTERVIT:
        return FasterViTBackbone(name, image_size=image_size, pretrained=pretrained)
    return TimmBackbone(name, pretrained=pretrained)
