"""The one interface every inpainting method implements, and the compositing into the boxes.

A method sees a batch of masked images and masks and returns full images; the pipeline (not the
method) then keeps every pixel outside the boxes from the input and takes only the box pixels from
the method's output (`composite`).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.config import ConfigError, VariantConfig
from pipeline.data.boxes import Box


@dataclass
class InpaintBatch:
    """What a method gets.

    masked_images: uint8 (N, H, W, 3) RGB, 0..255, box pixels blanked (0).
    masks: bool (N, H, W), True where pixels are missing.
    boxes: per image, its boxes (for methods that work around each box).
    labels: per image, its class folder name or None (for prompts).
    image_ids: per image, its id.
    """

    masked_images: np.ndarray
    masks: np.ndarray
    boxes: Sequence[Sequence[Box]]
    labels: Sequence[str | None]
    image_ids: Sequence[str]

    def __post_init__(self) -> None:
        n = len(self.masked_images)
        if self.masked_images.dtype != np.uint8 or self.masked_images.ndim != 4 or self.masked_images.shape[-1] != 3:
            raise ValueError(f"masked_images must be uint8 (N,H,W,3), got {self.masked_images.dtype} {self.masked_images.shape}")
        if self.masks.shape != self.masked_images.shape[:3] or self.masks.dtype != bool:
            raise ValueError(f"masks must be bool {self.masked_images.shape[:3]}, got {self.masks.dtype} {self.masks.shape}")
        if not (len(self.boxes) == len(self.labels) == len(self.image_ids) == n):
            raise ValueError("boxes, labels and image_ids must have one entry per image")


class Inpainter(ABC):
    """A method: `inpaint(batch)` -> uint8 (N, H, W, 3) RGB images (only box pixels are used)."""

    @classmethod
    @abstractmethod
    def from_config(cls, variant: VariantConfig) -> "Inpainter":
        """Build the method from its variant config (validating `variant.params`)."""

    @abstractmethod
    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        """Fill the masked pixels of each image; returns uint8 (N, H, W, 3)."""

    @classmethod
    @abstractmethod
    def check_params(cls, variant: VariantConfig) -> None:
        """Parse and check `variant.params` alone (no weights, no checkpoint); raise ConfigError."""

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """Cheap checks to run before any other work (config, weights on disk); raise to stop."""
        cls.check_params(variant)


def composite(masked_images: np.ndarray, masks: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Box pixels from `predictions`, every other pixel from `masked_images` (all uint8 NHWC)."""
    if predictions.shape != masked_images.shape:
        raise ValueError(
            f"inpainter returned shape {predictions.shape}, expected {masked_images.shape}"
        )
    if predictions.dtype != np.uint8:
        raise ValueError(f"inpainter returned dtype {predictions.dtype}, expected uint8")
    return np.where(masks[..., None], predictions, masked_images)


# method name -> "module:Class", imported on first use so a classical run never loads torch
METHODS = {
    "mean": "pipeline.inpainters.classical:MeanFill",
    "telea": "pipeline.inpainters.classical:OpenCVInpaint",
    "navier-stokes": "pipeline.inpainters.classical:OpenCVInpaint",
    "sd": "pipeline.inpainters.sd:SDInpainter",
    "pix2pix": "pipeline.inpainters.pix2pix:Pix2PixInpainter",
    "pconv": "pipeline.inpainters.pconv:PConvInpainter",
    "glcic": "pipeline.inpainters.glcic:GLCICInpainter",
    "torchscript": "pipeline.inpainters.torchscript:TorchScriptInpainter",
    "blend": "pipeline.blend:BlendInpainter",  # the parts' predictions weighted (pipeline/blend.py)
    "nearest": "pipeline.inpainters.nearest:NearestInpainter",
}


def inpainter_class(variant: VariantConfig) -> type[Inpainter]:
    """The Inpainter class named by `variant.method`."""
    target = METHODS.get(variant.method)
    if target is None:
        raise ConfigError(
            f"{variant.source or variant.name}: method {variant.method!r} is not one of "
            f"{', '.join(sorted(METHODS))}"
        )
    module, cls_name = target.split(":")
    return getattr(importlib.import_module(module), cls_name)


def check_params(variant: VariantConfig) -> None:
    """The variant's params checked by its method's own parser (what `make test` runs on every config)."""
    inpainter_class(variant).check_params(variant)


def preflight(variant: VariantConfig) -> None:
    """The method's checks that must pass before any other work (e.g. its weights are here)."""
    inpainter_class(variant).preflight(variant)


def build_inpainter(variant: VariantConfig) -> Inpainter:
    """The Inpainter named by `variant.method`, built from the variant's config."""
    return inpainter_class(variant).from_config(variant)
