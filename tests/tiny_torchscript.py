"""Tiny TorchScript stand-ins for big-lama.pt and migan_traced.pt, saved to disk as the real files
are, with the same signatures and conventions.

TinyLama / TinyMigan: a few convolutions, a batch norm and an FFT block (LaMa's fast Fourier
convolution in miniature), to load, call and fine-tune. LamaProbe / MiganProbe: no parameters;
they refuse inputs that break the convention (sizes, ranges, mask values) and answer with values a
test computes on its own: mode 0 fills the hole with fixed colours, mode 1 with the mirror image
(flip along the width) of the padded input.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

LAMA_FILL = (0.25, 0.5, 0.75)  # RGB on 0..1
MIGAN_FILL = (-0.6, 0.2, 0.7)  # RGB on -1..1


class FourierUnit(nn.Module):
    """A 1x1 convolution on the real and imaginary parts of the image's 2-D FFT (LaMa's FFC)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        f = torch.fft.rfft2(x, norm="ortho")
        y = self.conv(torch.cat([f.real, f.imag], dim=1))
        real, imag = torch.chunk(y, 2, dim=1)
        return torch.fft.irfft2(torch.complex(real, imag), s=[h, w], norm="ortho")


class Body(nn.Module):
    """in_channels -> 3: conv, batch norm, ReLU, Fourier unit, conv."""

    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.fourier = FourierUnit(width)
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.head(x)))
        return self.tail(x + self.fourier(x))


class TinyLama(nn.Module):
    """model(image, mask): image (N, 3, H, W) RGB 0..1, mask (N, 1, H, W) 1 = hole -> RGB 0..1."""

    def __init__(self):
        super().__init__()
        self.body = Body(4)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] % 8 != 0 or image.shape[-1] % 8 != 0:
            raise RuntimeError("sides must be multiples of 8")
        masked = image * (1 - mask)
        return torch.sigmoid(self.body(torch.cat([masked, mask], dim=1)))


class TinyMigan(nn.Module):
    """model(x): x = cat([0.5 - mask, image * (1 - mask)]) (N, 4, 512, 512), image -1..1 -> RGB -1..1."""

    def __init__(self):
        super().__init__()
        self.body = Body(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 4 or x.shape[-2] != 512 or x.shape[-1] != 512:
            raise RuntimeError("expects (N, 4, 512, 512)")
        return torch.tanh(self.body(x))


def _fill(mask: torch.Tensor, colours: list[float]) -> torch.Tensor:
    n, h, w = mask.shape[0], mask.shape[-2], mask.shape[-1]
    return torch.tensor(colours).view(1, 3, 1, 1).expand(n, 3, h, w)


class LamaProbe(nn.Module):
    def __init__(self, mode: int = 0):
        super().__init__()
        self.mode = mode

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[1] != 3 or mask.shape[1] != 1:
            raise RuntimeError("image (N, 3, H, W) and mask (N, 1, H, W)")
        if image.shape[-2] % 8 != 0 or image.shape[-1] % 8 != 0:
            raise RuntimeError("sides must be multiples of 8")
        if bool(image.min() < 0) or bool(image.max() > 1):
            raise RuntimeError("image must be on 0..1")
        if bool(((mask != 0) & (mask != 1)).any()):
            raise RuntimeError("mask must be 0 or 1")
        hole = mask > 0.5
        if self.mode == 0:
            return torch.where(hole, _fill(mask, [0.25, 0.5, 0.75]), image)
        return torch.where(hole, image.flip(-1), image)


class MiganProbe(nn.Module):
    def __init__(self, mode: int = 0):
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 4 or x.shape[-2] != 512 or x.shape[-1] != 512:
            raise RuntimeError("expects (N, 4, 512, 512)")
        mask = 0.5 - x[:, 0:1]
        image = x[:, 1:]
        if bool(((mask != 0) & (mask != 1)).any()):
            raise RuntimeError("channel 0 must be 0.5 - mask")
        if bool(image.min() < -1) or bool(image.max() > 1):
            raise RuntimeError("image must be on -1..1")
        if bool((image * mask).abs().max() > 0):
            raise RuntimeError("the hole must be erased")
        hole = mask > 0.5
        if self.mode == 0:
            return torch.where(hole, _fill(mask, [-0.6, 0.2, 0.7]), image)
        return torch.where(hole, image.flip(-1), image)


def save(module: nn.Module, path: Path, seed: int = 0) -> Path:
    """`module` scripted in eval mode (its batch norm with non-trivial statistics) into `path`."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # torch 2.9 calls torch.jit deprecated; the published files are TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module.eval()).save(str(path))
    return path
