"""Network pieces the trainable families share (pix2pix.py, pconv.py, glcic.py): the norm layer,
the papers' weight init, the generator input, and the residual on the hole fill.

Tensors are float NCHW: images in -1..1, masks in 0..1 with 1 in the boxes.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d | InstanceNorm2d | Identity over `channels`, by `kind` (one of NORMS)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The paper's init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def generator_input(masked_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) filled masked image in -1..1 + (N, 1, H, W) mask -> (N, 4, H, W)."""
    return torch.cat([masked_image, mask], dim=1)


def residual_on_fill(fill: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """tanh(atanh(fill) + residual), float (N, 3, H, W) in -1..1: a zero residual gives the fill
    back (clamped to +-0.999), and the output always stays inside -1..1."""
    return torch.tanh(torch.atanh(fill.float().clamp(-0.999, 0.999)) + residual.float())
