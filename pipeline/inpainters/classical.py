"""Classical baselines: per-image mean colour, and OpenCV's Telea and Navier-Stokes inpainting
(each one of the hole fills of pipeline/inpainters/fill.py, on its own)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import ConfigError, VariantConfig, param_where, parse_params
from pipeline.inpainters.base import InpaintBatch, Inpainter
from pipeline.inpainters.fill import fill_holes


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
        return fill_holes(batch.masked_images, batch.masks, "mean")


@dataclass
class OpenCVParams:
    radius: float = 5.0  # neighbourhood each inpainted pixel draws from


class OpenCVInpaint(Classical):
    """cv2.inpaint with the Telea (fast marching) or Navier-Stokes algorithm, per image."""

    ALGORITHMS = ("telea", "navier-stokes")

    def __init__(self, algorithm: str, radius: float):
        if algorithm not in self.ALGORITHMS:
            raise ValueError(f"OpenCV inpainting {algorithm!r} is not one of {', '.join(self.ALGORITHMS)}")
        self.algorithm = algorithm
        self.radius = radius

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "OpenCVInpaint":
        params = parse_params(OpenCVParams, variant.params, variant)
        if not params.radius > 0:
            raise ConfigError(f"{param_where(variant, 'radius')}: the radius must be a positive number of pixels")
        return cls(variant.method, params.radius)

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        return fill_holes(batch.masked_images, batch.masks, self.algorithm, self.radius)
