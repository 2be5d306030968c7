"""Swin Transformer trunk as GLEE-Plus runs it (detectron2's `D2SwinTransformer`, Swin-L).

The hierarchical shifted-window transformer (Liu et al., ICCV 2021) in the variant GLEE and
Mask2Former use for dense prediction: any input size (the image is padded right and bottom to
a multiple of the 4-pixel patch, every stage's map to a multiple of the window, odd maps to an
even size before patch merging, and the padding is cropped again), windows as large as the
stage's padded map allows no smaller (no window clipping), a shifted-window mask of -100 on
the padded grid, and a LayerNorm on each of the four outputs (strides 4 to 32). The module and
tensor names are the ones GLEE's checkpoints use under `backbone.`, so conversion is a rename.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRIDES = (4, 8, 16, 32)
MASK_VALUE = -100.0  # what the reference adds between tokens of different shifted regions


def relative_position_index(window: int) -> Tensor:
    """[w*w, w*w] int64: index into the (2w-1)^2 bias table for each pair of window tokens."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing='ij')
    ).flatten(1)  # [2, w*w]
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        self.register_buffer('relative_position_index', relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B*nW, N, C] window tokens, mask [nW, N, N] additive or None -> [B*nW, N, C]."""
        windows, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B*nW, heads, N, d]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(tokens, tokens, -1).permute(2, 0, 1)[None]
        if mask is not None:
            count = mask.shape[0]
            attn = attn.reshape(-1, count, self.num_heads, tokens, tokens) + mask[None, :, None]
            attn = attn.reshape(-1, self.num_heads, tokens, tokens)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows, tokens, dim)
        return self.proj(out)


class Mlp(nn.Module):
    """C -> ratio*C -> C with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, both residual, on a [B, H, W, C] map."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, H, W, C]; mask [nW, w*w, w*w] for the shifted windows of the padded map."""
        _, height, width, dim = x.shape
        w = self.window
        y = F.pad(self.norm1(x), (0, 0, 0, (w - width % w) % w, 0, (w - height % w) % w))
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        padded = y.shape[1:3]
        y = self.attn(window_partition(y, w).reshape(-1, w * w, dim), mask if self.shift else None)
        y = window_reverse(y.reshape(-1, w, w, dim), w, padded)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :height, :width]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (odd maps padded), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]."""
        height, width = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """`depth` blocks alternating plain and half-window-shifted windows, then patch merging."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, merge: bool
    ) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if merge else None

    def forward(self, x: Tensor) -> Tensor:
        """[B, H, W, C] -> the stage's output [B, H, W, C] (before merging)."""
        mask = shifted_window_mask(x.shape[1:3], self.window, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x


class D2Swin(nn.Module):
    """Swin trunk -> {stride: [B, C_s, H/s, W/s]} for strides 4, 8, 16, 32.

    Args:
        embed_dim: stride-4 width (192 for Swin-L); each stage doubles it.
        depths: blocks per stage ((2, 2, 18, 2) for Swin-L).
        num_heads: attention heads per stage ((6, 12, 24, 48)).
        window: attention window side (12).
        mlp_ratio: MLP hidden width over the block width (4).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 192,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (6, 12, 24, 48),
        window: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(STRIDES) or len(num_heads) != len(STRIDES):
            raise ValueError(f'Swin needs 4 stages, got depths {depths}, heads {num_heads}')
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, kernel_size=4, stride=4)
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        widths = [embed_dim * 2**i for i in range(len(STRIDES))]
        self.layers = nn.ModuleList(
            SwinStage(width, depth, heads, window, mlp_ratio, merge=i < len(STRIDES) - 1)
            for i, (width, depth, heads) in enumerate(zip(widths, depths, num_heads))
        )
        for i, width in enumerate(widths):
            self.add_module(f'norm{i}', nn.LayerNorm(width))
        self.channels = dict(zip(STRIDES, widths))

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        """[B, 3, H, W] normalised images -> {stride s: [B, C_s, ceil(H/s), ceil(W/s)]}."""
        height, width = images.shape[-2:]
        images = F.pad(images, (0, (4 - width % 4) % 4, 0, (4 - height % 4) % 4))
        x = self.patch_embed.norm(self.patch_embed.proj(images).permute(0, 2, 3, 1))
        features = {}
        for i, (stride, stage) in enumerate(zip(STRIDES, self.layers)):
            x = stage(x)
            features[stride] = getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None:
                x = stage.downsample(x)
        return features


def window_partition(x: Tensor, window: int) -> Tensor:
    """[B, H, W, C] (H, W multiples of window) -> [B*nW, window, window, C], row-major windows."""
    batch, height, width, dim = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, dim)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, dim)


def window_reverse(windows: Tensor, window: int, size: tuple[int, int]) -> Tensor:
    """Inverse of `window_partition` for a map of `size` (H, W)."""
    height, width = size
    dim = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, dim)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, dim)


def shifted_window_mask(
    size: tuple[int, int], window: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """[nW, w*w, w*w] additive mask of the shifted windows of a map padded up from `size`.

    The padded map is cut into 3x3 regions at -window and -window/2 from its end; tokens of
    different regions that a cyclic shift brings into one window do not attend to each other.
    """
    shift = window // 2

    def labels(length: int) -> Tensor:  # 0, 1, 2 for the three regions along one axis
        padded = -(-int(length) // window) * window
        sizes = (padded - window, window - shift, shift)
        return torch.cat([torch.full((n,), float(i), device=device) for i, n in enumerate(sizes)])

    region = 3 * labels(size[0])[:, None] + labels(size[1])[None, :]  # no in-place writes
    ids = window_partition(region[None, :, :, None], window).reshape(-1, window * window)
    different = (ids[:, None, :] - ids[:, :, None]) != 0
    return torch.zeros_like(different, dtype=dtype).masked_fill(different, MASK_VALUE)


def d2_swin_from_glee(take: Callable[[str], Tensor], depths: tuple[int, ...]) -> dict[str, Tensor]:
    """GLEE-Plus's 'backbone.*' tensors -> the state dict of `D2Swin` (the same names)."""
    names = ['patch_embed.proj.weight', 'patch_embed.proj.bias']
    names += [f'patch_embed.norm.{leaf}' for leaf in ('weight', 'bias')]
    block_names = [
        'norm1.weight', 'norm1.bias', 'attn.relative_position_bias_table',
        'attn.relative_position_index', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight',
        'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias',
        'mlp.fc2.weight', 'mlp.fc2.bias',
    ]  # fmt: skip
    for stage, depth in enumerate(depths):
        for block in range(depth):
            names += [f'layers.{stage}.blocks.{block}.{n}' for n in block_names]
        if stage < len(depths) - 1:
            names += [
                f'layers.{stage}.downsample.{n}'
                for n in ('reduction.weight', 'norm.weight', 'norm.bias')
            ]
        names += [f'norm{stage}.weight', f'norm{stage}.bias']
    return {name: take(f'backbone.{name}') for name in names}
