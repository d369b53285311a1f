"""The hole fill: what the boxes hold before a model sees them (param `hole_fill` of pix2pix, glcic
and sd; the mean / telea / navier-stokes methods are this fill alone). uint8 in, uint8 out, so it
also runs in the data loader's workers."""

from __future__ import annotations

import cv2
import numpy as np

# none: the pixels stay as they are (black in a masked image); zero: mid-grey, 0 on a model's
# -1..1 scale (the canonical pix2pix input); mean: the image's mean colour of its known pixels;
# telea / navier-stokes: OpenCV's inpainting from the known pixels around the hole
HOLE_FILLS = ("none", "zero", "mean", "telea", "navier-stokes")
GREY = 128  # also the fill where an image has no known pixel: the RMSE-safest guess
_OPENCV = {"telea": cv2.INPAINT_TELEA, "navier-stokes": cv2.INPAINT_NS}


def fill_holes(images: np.ndarray, masks: np.ndarray, how: str, radius: float = 5.0) -> np.ndarray:
    """Copies of `images` with the pixels under `masks` filled `how` (one of HOLE_FILLS).

    images: uint8 RGB, one HxWx3 image or a NxHxWx3 batch; masks: bool HxW or NxHxW, True in the
    holes. radius: the neighbourhood, in pixels, telea / navier-stokes draw each pixel from.
    Returns uint8 of the images' shape; pixels outside the holes are unchanged.
    """
    if how not in HOLE_FILLS:
        raise ValueError(f"hole_fill {how!r} is not one of {', '.join(HOLE_FILLS)}")
    batch = images.ndim == 4
    out = images.copy() if batch else images[None].copy()
    for image, mask in zip(out, masks if batch else masks[None]):
        if how == "zero":
            image[mask] = GREY
        elif how == "mean":
            known = image[~mask]
            image[mask] = np.round(known.mean(axis=0)).astype(np.uint8) if len(known) else GREY
        elif how in _OPENCV:  # an image without known pixels comes back as it went in
            image[:] = cv2.inpaint(image, mask.astype(np.uint8), radius, _OPENCV[how])
    return out if batch else out[0]
