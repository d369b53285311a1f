"""Test-time augmentation: a prediction averaged over flips and 90-degree rotations of its input.

    none   the prediction as it is
    flip   the mean of the prediction and the mirrored prediction of the mirrored image
    d4     the mean over the eight symmetries of the square (four rotations, each with and
           without a mirror): image and mask transformed, the prediction transformed back

A network that is equivariant to a transform (predicts the transformed output for a transformed
input) gains nothing from it; one that is not (every CNN trained on upright photos, a little)
averages out some of its orientation-dependent error.
"""

from __future__ import annotations

from typing import Callable

import torch

TTA_MODES = ("none", "flip", "d4")


def transforms(mode: str) -> list[tuple[int, bool]]:
    """The transforms of `mode` as (quarter turns, mirrored) pairs; the identity first."""
    if mode == "none":
        return [(0, False)]
    if mode == "flip":
        return [(0, False), (0, True)]
    if mode == "d4":
        return [(k, mirror) for mirror in (False, True) for k in range(4)]
    raise ValueError(f"tta {mode!r} is not one of {', '.join(TTA_MODES)}")


def forward(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """NCHW `x` mirrored left-right (if `mirror`), then turned `turns` quarter turns."""
    if mirror:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def inverse(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """Undo `forward(., turns, mirror)`."""
    if turns:
        x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.flip(-1) if mirror else x


def averaged(predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], image: torch.Tensor,
             mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The mean of predict(t(image), t(mask)) transformed back, over the transforms t of `mode`.

    image (N, C, H, W), mask (N, 1, H, W); rotations need H == W (the competition's squares).
    """
    steps = transforms(mode)
    if any(turns % 2 for turns, _ in steps) and image.shape[-1] != image.shape[-2]:
        raise ValueError(f"tta {mode}: rotations need square images, got {tuple(image.shape[-2:])}")
    total = None
    for turns, mirror in steps:
        out = inverse(predict(forward(image, turns, mirror), forward(mask, turns, mirror)), turns, mirror)
        total = out if total is None else total + out
    return total / len(steps)
