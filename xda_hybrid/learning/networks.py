"""Convolutional backbones of the inversion networks.

Both act on ``(batch, channel, *space)`` tensors and keep the spatial shape:

* :class:`CircularCNN1d` — residual 1D CNN with circular padding, for states on
  a ring (Lorenz96).  Equivariant to rolls of the site axis.
* :class:`UNet2d` — 2D U-Net whose padding is ``"zeros"`` or ``"replicate"``
  for closed borders and ``"circular"`` for periodic domains.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CircularCNN1d", "UNet2d"]

_PADDINGS = ("zeros", "replicate", "circular", "reflect")


class _ResBlock1d(nn.Module):
    """``x + conv(gelu(conv(gelu(x))))`` with circular padding."""

    def __init__(self, width: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(width, width, kernel_size, padding=pad, padding_mode="circular")
        self.conv2 = nn.Conv1d(width, width, kernel_size, padding=pad, padding_mode="circular")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class CircularCNN1d(nn.Module):
    """Residual 1D CNN with circular padding.

    ``in_channels → width`` (lifting convolution), ``depth`` residual blocks of
    two convolutions each, then ``width → out_channels`` (1×1 convolution).

    Parameters
    ----------
    in_channels, out_channels : int
    width : int
        Hidden channels.
    depth : int
        Residual blocks (receptive field ``(2·depth + 1)·(kernel_size − 1) + 1`` sites).
    kernel_size : int
        Odd kernel size.
    zero_last : bool
        Initialise the output layer to zero (the network starts as the zero map;
        used for additive corrections).

    Shapes
    ------
    ``(batch, in_channels, n) → (batch, out_channels, n)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 64,
        depth: int = 4,
        kernel_size: int = 5,
        zero_last: bool = False,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if depth < 0 or width < 1:
            raise ValueError(f"need width >= 1 and depth >= 0, got width={width}, depth={depth}")
        pad = kernel_size // 2
        self.lift = nn.Conv1d(in_channels, width, kernel_size, padding=pad, padding_mode="circular")
        self.blocks = nn.Sequential(*[_ResBlock1d(width, kernel_size) for _ in range(depth)])
        self.head = nn.Conv1d(width, out_channels, 1)
        if zero_last:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"CircularCNN1d expects (batch, channel, n), got {tuple(x.shape)}")
        return self.head(F.gelu(self.blocks(self.lift(x))))


class _DoubleConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, padding: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, padding_mode=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv2(F.gelu(self.conv1(x))))


class UNet2d(nn.Module):
    """2D U-Net: ``levels`` down/up-sampling stages, channels doubling per level.

    Down-sampling is 2×2 average pooling (odd sizes are padded by one row or
    column beforehand, the same way as the convolutions), up-sampling is
    bilinear interpolation to the skip connection's size, so any grid size works.

    Parameters
    ----------
    in_channels, out_channels : int
    width : int
        Channels at full resolution.
    levels : int
        Number of down-sampling stages (0: a plain CNN).
    padding : {"zeros", "replicate", "reflect", "circular"}
        Boundary treatment: ``"zeros"`` / ``"replicate"`` for closed borders,
        ``"circular"`` for periodic domains.

    Shapes
    ------
    ``(batch, in_channels, ny, nx) → (batch, out_channels, ny, nx)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 32,
        levels: int = 3,
        padding: str = "zeros",
    ):
        super().__init__()
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
        self.padding = padding
        chans = [width * 2**i for i in range(levels + 1)]
        self.inc = _DoubleConv2d(in_channels, chans[0], padding)
        self.down = nn.ModuleList(_DoubleConv2d(chans[i], chans[i + 1], padding) for i in range(levels))
        self.up = nn.ModuleList(
            _DoubleConv2d(chans[i + 1] + chans[i], chans[i], padding) for i in reversed(range(levels))
        )
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = x.shape[-2] % 2, x.shape[-1] % 2
        if ph or pw:
            mode = {"zeros": "constant"}.get(self.padding, self.padding)
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return F.avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"UNet2d expects (batch, channel, ny, nx), got {tuple(x.shape)}")
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(self._pool(skips[-1])))
        h = skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return self.head(h)
