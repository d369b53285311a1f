"""Losses the trainable families share: reconstruction over the box pixels, and the adversarial
loss of discriminator logits.

Tensors are float NCHW; masks (N, 1, H, W) with 1 in the boxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_LOSSES = ("vanilla", "lsgan")


def box_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean absolute (l1) or squared (l2) error over the box pixels only."""
    diff = (prediction.float() - target.float()) * mask
    values = diff.abs() if kind == "l1" else diff.square()
    return values.sum() / (mask.sum() * prediction.shape[1]).clamp_min(1.0)


class GANLoss(nn.Module):
    """loss(logits, real): the adversarial loss of discriminator logits (any shape) against an
    all-real (1) or all-fake (0) label; vanilla: BCE on the logits, lsgan: least squares.

    The labels are buffers, so `.to(device)` puts them beside the logits (CycleGAN's GANLoss).
    """

    def __init__(self, kind: str = "vanilla"):
        super().__init__()
        if kind not in GAN_LOSSES:
            raise ValueError(f"gan_loss {kind!r} is not one of {', '.join(GAN_LOSSES)}")
        self.kind = kind
        self.register_buffer("real_label", torch.tensor(1.0), persistent=False)
        self.register_buffer("fake_label", torch.tensor(0.0), persistent=False)

    def forward(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        logits = logits.float()
        target = (self.real_label if real else self.fake_label).expand_as(logits)
        if self.kind == "lsgan":
            return F.mse_loss(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)
