"""Classical baselines: per-image mean colour, and OpenCV's Telea and Navier-Stokes inpainting."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.config import ConfigError, VariantConfig, param_where, parse_params
from pipeline.inpainters.base import InpaintBatch, Inpainter


@dataclass
class MeanFillParams:
    pass


class Classical(Inpainter):
    """A classical method: building it is cheap, so checking its params is building it."""

    @classmethod
    def check_params(cls, variant: VariantConfig) -> None:
        cls.from_config(variant)


class MeanFill(Classical):
    """Fills the boxes with the mean colour of the image's known pixels (the RMSE-optimal constant)."""

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "MeanFill":
        parse_params(MeanFillParams, variant.params, variant)
        return cls()

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        out = batch.masked_images.copy()
        for image, mask in zip(out, batch.masks):
            known = image[~mask]
            # a fully masked image has no known pixel: mid-grey is the RMSE-safest guess
            image[mask] = np.round(known.mean(axis=0)).astype(np.uint8) if len(known) else 128
        return out


@dataclass
class OpenCVParams:
    radius: float = 5.0  # neighbourhood each inpainted pixel draws from


class OpenCVInpaint(Classical):
    """cv2.inpaint with the Telea (fast marching) or Navier-Stokes algorithm, per image."""

    FLAGS = {"telea": cv2.INPAINT_TELEA, "navier-stokes": cv2.INPAINT_NS}

    def __init__(self, algorithm: str, radius: float):
        self.flag = self.FLAGS[algorithm]
        self.radius = radius

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "OpenCVInpaint":
        params = parse_params(OpenCVParams, variant.params, variant)
        if not params.radius > 0:
            raise ConfigError(f"{param_where(variant, 'radius')}: the radius must be a positive number of pixels")
        return cls(variant.method, params.radius)

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        return np.stack(
            [
                cv2.inpaint(image, mask.astype(np.uint8), self.radius, self.flag)
                for image, mask in zip(batch.masked_images, batch.masks)
            ]
        )
