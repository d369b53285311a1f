"""Boxes: the square holes whose pixels a submission predicts, and the masks drawn from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Box:
    """A box in pixel coordinates: top-left corner (x, y), width w, height h; end exclusive."""

    x: int
    y: int
    w: int
    h: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices that index this box in an HxW(xC) array."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    def overlaps(self, other: "Box") -> bool:
        return not (
            self.x + self.w <= other.x
            or other.x + other.w <= self.x
            or self.y + self.h <= other.y
            or other.y + other.h <= self.y
        )

    def inside(self, height: int, width: int) -> bool:
        return self.x >= 0 and self.y >= 0 and self.x + self.w <= width and self.y + self.h <= height

    def as_xyxy(self) -> tuple[int, int, int, int]:
        """(x_min, y_min, x_max, y_max), end exclusive: albumentations' pascal_voc format."""
        return self.x, self.y, self.x + self.w, self.y + self.h


def boxes_mask(boxes: Iterable[Box], height: int, width: int) -> np.ndarray:
    """Bool HxW mask, True inside any of the boxes (the pixels to predict)."""
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        mask[box.slices] = True
    return mask


def apply_mask(image: np.ndarray, mask: np.ndarray, fill: int = 0) -> np.ndarray:
    """Copy of uint8 HxWx3 `image` with the masked pixels set to `fill` (what a test image holds)."""
    out = image.copy()
    out[mask] = fill
    return out


def random_boxes(
    rng: np.random.Generator,
    image_size: int,
    box_size: int,
    count: int,
    margin: int = 0,
    max_tries: int = 1000,
) -> list[Box]:
    """`count` non-overlapping box_size squares placed uniformly in an image_size square.

    `margin` keeps every box that many pixels from the border (so a later crop cannot cut it).
    Raises ValueError if they cannot fit.
    """
    low, high = margin, image_size - margin - box_size
    if high < low:
        raise ValueError(f"a {box_size}px box with margin {margin} does not fit in {image_size}px")
    boxes: list[Box] = []
    for _ in range(max_tries):
        x, y = (int(v) for v in rng.integers(low, high + 1, size=2))
        candidate = Box(x, y, box_size, box_size)
        if not any(candidate.overlaps(b) for b in boxes):
            boxes.append(candidate)
            if len(boxes) == count:
                return boxes
    raise ValueError(f"could not place {count} non-overlapping {box_size}px boxes in {image_size}px")


def box_pixels(image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """Concatenated pixels of `boxes` in `image` (HxWxC), shape (len(boxes), h, w, C)."""
    return np.stack([image[b.slices] for b in boxes])
