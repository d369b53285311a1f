"""Training and evaluation samples: (masked image, mask, target) with box masks and augmentation.

Training records get fresh random boxes every time they are drawn (count and size from the data
config) and albumentations transforms applied jointly to the image, its box mask and its boxes:
jitter by reflect-padding and a random crop back to size, a horizontal flip, colour jitter. The
geometric transforms only translate and mirror, so a 75x75 box stays 75x75, and boxes are drawn
far enough from the border that no crop cuts them: after augmentation the masked pixels are
exactly the transformed boxes. The masked input is then JPEG-compressed at a random quality
(`jpeg`), as the competition's masked copies are, so a model learns the ringing it will see
around the test boxes. Validation and test records keep their fixed boxes, unaugmented; a
validation record's input is the competition's own masked copy when it has one.

Randomness comes from (seed, epoch, index) alone, so a resumed run sees the same samples as an
uninterrupted one, whatever the number of loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import DataConfig
from pipeline.data.boxes import Box, apply_mask, boxes_mask, random_boxes
from pipeline.data.competition import ImageRecord, read_image

# (masked uint8 HxWx3, bool HxW mask) -> uint8 HxWx3 with the hole filled: a model's starting point
HoleFill = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class AugmentConfig:
    """Training augmentation; `jitter` is the largest shift in pixels of the pad-and-crop."""

    jitter: int = 16
    flip: float = 0.5
    colour: float = 0.5  # probability of colour jitter
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.02
    jpeg: float = 0.0  # probability of JPEG-compressing the masked input
    jpeg_quality: tuple[int, int] = (60, 95)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 0..255 -> float32 3xHxW in -1..1."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """float (N)x3xHxW in -1..1 -> uint8 (N)xHxWx3 0..255 (rounded, clipped)."""
    array = tensor.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return array.movedim(-3, -1).numpy()


def build_augmentation(aug: AugmentConfig, size: int) -> A.Compose:
    """Joint image/mask/box transforms; box coordinates in pascal_voc (x_min, y_min, x_max, y_max)."""
    return A.Compose(
        [
            A.PadIfNeeded(size + 2 * aug.jitter, size + 2 * aug.jitter, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(size, size),
            A.HorizontalFlip(p=aug.flip),
            A.ColorJitter(brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation,
                          hue=aug.hue, p=aug.colour),
        ],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["box_ids"]),
    )


def build_compression(aug: AugmentConfig) -> A.Compose | None:
    """JPEG compression of the masked input (None when off)."""
    if aug.jpeg <= 0:
        return None
    low, high = aug.jpeg_quality
    return A.Compose([A.ImageCompression(compression_type="jpeg", quality_range=(int(low), int(high)), p=aug.jpeg)])


class BoxInpaintingDataset(Dataset):
    """Items are dicts of tensors:

    model_input:  float32 3xHxW in -1..1, the masked photo with its box pixels set to the hole fill
                  (0 = black without one)
    mask:         float32 1xHxW, 1 inside the boxes
    target:       float32 3xHxW in -1..1, the full (augmented) photo
    boxes:        int64 (boxes, 4) as x, y, w, h after augmentation
    index:        int64, the record's position (to find its id)
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        data: DataConfig,
        augment: AugmentConfig | None = None,
        hole_fill: HoleFill | None = None,
        seed: int = 0,
    ):
        if not records:
            raise ValueError("no images to build a dataset from (is the training folder empty?)")
        self.records = list(records)
        self.data = data
        self.augment = augment
        self.transform = build_augmentation(augment, data.image_size) if augment else None
        self.compression = build_compression(augment) if augment else None
        self.hole_fill = hole_fill
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of boxes and augmentations for `epoch` (same epoch, same draws)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, list[Box], np.ndarray]:
        """(image uint8 HxWx3, mask bool HxW, boxes, masked input uint8 HxWx3) for item `index`
        before tensor conversion; the masked input's box pixels are 0."""
        record = self.records[index]
        size = self.data.image_size
        image = read_image(record.path, size)
        if record.boxes:  # val/test: fixed boxes, no augmentation, the competition's masked copy
            boxes = list(record.boxes)
            mask = boxes_mask(boxes, size, size)
            source = read_image(record.masked_path, size) if record.masked_path else image
            return image, mask, boxes, apply_mask(source, mask)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        margin = self.augment.jitter if self.augment else 0
        boxes = random_boxes(rng, size, self.data.box_size, self.data.boxes_per_image, margin=margin)
        mask = boxes_mask(boxes, size, size)
        if self.transform is None:
            return image, mask, boxes, apply_mask(image, mask)
        self.transform.set_random_seed(int(rng.integers(2**31)))
        out = self.transform(
            image=image, mask=mask.astype(np.uint8), bboxes=np.array([b.as_xyxy() for b in boxes], dtype=np.float32),
            box_ids=list(range(len(boxes))),
        )
        boxes = [Box(int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))
                 for x0, y0, x1, y1 in np.asarray(out["bboxes"]).reshape(-1, 4)]
        image, mask = out["image"], out["mask"].astype(bool)
        masked = apply_mask(image, mask)
        if self.compression is not None:
            # blacked out, then compressed, as the competition's masked copies were made; the
            # boxes are blanked again afterwards, as for every model input
            self.compression.set_random_seed(int(rng.integers(2**31)))
            masked = apply_mask(self.compression(image=masked)["image"], mask)
        return image, mask, boxes, masked

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask, boxes, masked = self.sample(index)
        if self.hole_fill is not None:
            masked = self.hole_fill(masked, mask)
        return {
            "model_input": to_tensor(masked),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "target": to_tensor(image),
            "boxes": torch.tensor([[b.x, b.y, b.w, b.h] for b in boxes], dtype=torch.int64),
            "index": torch.tensor(index),
        }
