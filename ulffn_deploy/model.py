"""ULFFN, the Upper and Lower Layers Feature Fusing Network (see docs/model.md), in PyTorch.

Resolutions for an input of H x W (both multiples of 8), base width w (64 in the paper):

    input unit       w  @ H
    code unit 1     2w  @ H    -> skip E1, then stride-2 conv -> H/2
    code unit 2     4w  @ H/2  -> skip E2, then stride-2 conv -> H/4
    code unit 3     8w  @ H/4  -> skip E3, then stride-2 conv -> H/8
    code unit 4    16w  @ H/8  -> skip E4, no downsampling (output stride 8)
    bottom          4w  @ H/8  (ASPP on E4, or a plain 3x3 conv block)
    decode unit 1   8w  @ H/8  fuses bottom + pool8(E1) + pool4(E2) + pool2(E3) + E4, then x2 -> H/4
    decode unit 2   4w  @ H/4  fuses D1     + pool4(E1) + pool2(E2) + E3,            then x2 -> H/2
    decode unit 3   2w  @ H/2  fuses D2     + pool2(E1) + E2,                        then x2 -> H
    decode unit 4    w  @ H    fuses D3     + E1,                                    no upsampling
    CAM, head        2  @ H    logits

Decode unit k therefore works at the resolution of code unit 5-k, so its "own level" skip needs no
resampling, the shallower skips are average-pooled down to it, and three sub-pixel upsamplings take the
decoder from H/8 back to H.

Choices beyond docs/model.md: the decoder's fusing "3x3 convolution block" is one Conv -> ReLU -> BN; the
sub-pixel convolution is such a block too (to 4C) before PixelShuffle; variants without ASPP use a 3x3
conv block from 16w to the ASPP's 4w, so the decoder is identical across variants; the ASPP image-pooling
branch has no BatchNorm (it would see one value per channel at batch size 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ulffn_deploy.config import OUTPUT_STRIDE, ModelConfig
from ulffn_deploy.errors import UlffnError

ASPP_RATES = (6, 12, 18)
FLOP_CONVENTION = "convolutions only; one multiply-add counts as 2 FLOPs"


class ConvBlock(nn.Sequential):
    """Convolution -> ReLU -> BatchNorm, the order of the paper's Fig. 2."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_ch),
        )


class ResidualBlock(nn.Module):
    """Two 3x3 conv blocks summed with the input (through a 1x1 projection when widths differ)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBlock(in_ch, out_ch), ConvBlock(out_ch, out_ch))
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class CodeUnit(nn.Module):
    """Encoder unit: residual block (its output is the skip), then an optional learned stride-2 downsampling."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool) -> None:
        super().__init__()
        self.block = ResidualBlock(in_ch, out_ch)
        self.down = ConvBlock(out_ch, out_ch, stride=2) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.block(x)
        return skip, self.down(skip)


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool -> 1x1 conv -> ReLU, broadcast back over H x W.

    The broadcast uses ``expand`` rather than an interpolation so the graph has no Resize node (TensorRT's
    Resize support is restricted). No BatchNorm here: on a 1x1 map it would fail at batch size 1.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        pooled = super().forward(x)
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-level branch, fused by a 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int, rates: tuple[int, ...] = ASPP_RATES) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBlock(in_ch, out_ch, kernel=1)]
        branches += [ConvBlock(in_ch, out_ch, dilation=rate) for rate in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.project = ConvBlock(len(branches) * out_ch, out_ch, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class SubPixelUpsample(nn.Sequential):
    """x2 upsampling by sub-pixel convolution: 3x3 conv block to 4C channels, then PixelShuffle(2)."""

    def __init__(self, channels: int) -> None:
        super().__init__(ConvBlock(channels, 4 * channels), nn.PixelShuffle(2))


class DecodeUnit(nn.Module):
    """Concatenate the input with the pooled shallower skips and this level's skip, fuse, optionally upsample.

    ``skip_scales`` lists, per incoming skip (shallowest first), its resolution divided by this unit's; the
    last entry is 1 (this level's own skip).
    """

    def __init__(
        self, in_ch: int, skip_channels: list[int], skip_scales: list[int], out_ch: int, upsample: bool
    ) -> None:
        super().__init__()
        self.pools = nn.ModuleList(
            nn.AvgPool2d(scale, stride=scale) if scale > 1 else nn.Identity() for scale in skip_scales
        )
        self.fuse = ConvBlock(in_ch + sum(skip_channels), out_ch)
        self.up = SubPixelUpsample(out_ch) if upsample else nn.Identity()

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        pooled = [pool(skip) for pool, skip in zip(self.pools, skips)]
        return self.up(self.fuse(torch.cat([x, *pooled], dim=1)))


def channel_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population variance over H and W, each N x C x 1 x 1.

    The variance is mean((x - mean)^2), not torch.var: it exports as ReduceMean/Sub/Mul, which every
    runtime supports, and it cannot go negative as E[x^2] - E[x]^2 can in low precision.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    return mean, (centred * centred).mean(dim=(2, 3), keepdim=True)


class ChannelStatistics(nn.Module):
    """GAP and GVP side by side: N x C x H x W -> N x 2C x 1 x 1 (mean channels first)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(channel_statistics(x), dim=1)


class CAM(nn.Module):
    """Channel attention (paper Fig. 5): weights from mean and variance pooling; out = x * weights + x.

    Submodule names (``statistics``, ``excitation``) end up in exported node names, so FP16/INT8 tooling
    can keep the nodes whose names contain "cam" in FP32.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.statistics = ChannelStatistics()
        self.excitation = nn.Sequential(
            nn.Conv2d(2 * channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.excitation(self.statistics(x)) + x


def _is_exporting() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def check_input_size(height: int, width: int) -> None:
    """Raise a UlffnError unless both sides are positive multiples of the output stride."""
    stride = OUTPUT_STRIDE
    if height < stride or width < stride:
        raise UlffnError(
            f"input height={height}, width={width} is smaller than {stride}x{stride}",
            f"use at least {stride}x{stride} (512x512 in the paper)",
        )
    if height % stride == 0 and width % stride == 0:
        return

    def up(n: int) -> int:
        return -(-n // stride) * stride

    def down(n: int) -> int:
        return n // stride * stride

    raise UlffnError(
        f"input height={height}, width={width} is not divisible by {stride}",
        f"pad to {up(height)}x{up(width)} or crop to {down(height)}x{down(width)}",
    )


class ULFFN(nn.Module):
    """The ULFFN segmentation network; ``forward`` maps N x 3 x H x W images to N x 2 x H x W logits.

    H and W must be multiples of 8 (see the module docstring for the resolution of every unit). ``variant``
    is one of the paper's ablations ("w-ac", "w-a", "w-c", "wo-ac"); ``width`` is the base width.
    """

    def __init__(self, variant: str = "w-ac", width: int = 64) -> None:
        super().__init__()
        self.config = ModelConfig(variant=variant, width=width)
        w = width
        enc = [2 * w, 4 * w, 8 * w, 16 * w]
        dec = [8 * w, 4 * w, 2 * w, w]
        self.stem = ConvBlock(3, w)
        self.encoder = nn.ModuleList(
            CodeUnit(in_ch, out_ch, downsample=i < 3) for i, (in_ch, out_ch) in enumerate(zip([w, *enc], enc))
        )
        self.bottom: nn.Module = ASPP(enc[3], 4 * w) if self.config.has_aspp else ConvBlock(enc[3], 4 * w)
        self.decoder = nn.ModuleList(
            DecodeUnit(
                in_ch=in_ch,
                skip_channels=enc[: 4 - i],
                skip_scales=[2 ** (3 - i - j) for j in range(4 - i)],
                out_ch=out_ch,
                upsample=i < 3,
            )
            for i, (in_ch, out_ch) in enumerate(zip([4 * w, *dec], dec))
        )
        self.cam: nn.Module = CAM(w) if self.config.has_cam else nn.Identity()
        self.head = nn.Conv2d(w, 2, 1)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        if not _is_exporting():
            _check_input(x)
        skips = []
        x = self.stem(x)
        for unit in self.encoder:
            skip, x = unit(x)
            skips.append(skip)
        x = self.bottom(x)
        for i, unit in enumerate(self.decoder):
            x = unit(x, skips[: 4 - i])
        return self.head(self.cam(x))


def _check_input(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise UlffnError(f"expected an N x 3 x H x W image batch, got shape {tuple(x.shape)}")
    check_input_size(int(x.shape[2]), int(x.shape[3]))


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_model(config: ModelConfig) -> ULFFN:
    """A freshly initialised ULFFN for ``config``."""
    return ULFFN(variant=config.variant, width=config.width)


def model_info(config: ModelConfig, size: int = 512) -> dict[str, Any]:
    """Parameter count and convolution GFLOPs for one size x size image, computed on the meta device."""
    check_input_size(size, size)
    with torch.device("meta"):
        model = build_model(config).eval()
        image = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(image)
    return {
        "variant": config.variant,
        "width": config.width,
        "input_size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflops": counter.get_total_flops() / 1e9,
        "flop_convention": FLOP_CONVENTION,
        "output_stride": OUTPUT_STRIDE,
    }


def random_model(width: int, seed: int = 0) -> ULFFN:
    """A ULFFN with random weights and perturbed BatchNorm statistics, in eval mode: its outputs vary across
    pixels and images as a trained model's do. What tests and benchmarks use where no trained model exists."""
    torch.manual_seed(seed)
    model = ULFFN(width=width)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for buffer, low, high in ((module.running_mean, -0.2, 0.2), (module.running_var, 0.5, 2.0)):
                if buffer is not None:
                    buffer.uniform_(low, high)
    return model.eval()
