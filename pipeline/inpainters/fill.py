"""The hole fill: what the boxes hold before a model sees them (param `hole_fill` of pix2pix, glcic
and sd; the mean / telea / navier-stokes methods are this fill alone). uint8 in, uint8 out, so it
also runs in the data loader's workers."""

from __future__ import annotations

import cv2
import numpy as np

# none: the pixels stay as they are (black in a masked image); zero: mid-grey, 0 on a model's
# -1..1 scale (the canonical pix2pix input); mean: the image's mean colour of its known pixels;
# telea / navier-stokes: OpenCV's inpainting from the known pixels around the hole; pyramid: the
# known pixels pushed down a Gaussian pyramid and pulled back up into the hole, a smooth blend of
# the box's surroundings (on the sample: RMSE as an inpainter 0.1524 vs Telea's 0.1533, at a fifth
# of Telea's cost in a loader worker, benchmarks/loader.py; networks trained on it scored worse in
# short runs, so the configs keep Telea)
HOLE_FILLS = ("none", "zero", "mean", "telea", "navier-stokes", "pyramid")
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
        elif how == "pyramid":
            _pyramid_fill(image, mask)
        elif how in _OPENCV:  # an image without known pixels comes back as it went in
            image[:] = cv2.inpaint(image, mask.astype(np.uint8), radius, _OPENCV[how])
    return out if batch else out[0]


def _pyramid_fill(image: np.ndarray, mask: np.ndarray) -> None:
    """Push-pull in place: uint8 HxWx3 `image`, its pixels under bool HxW `mask` set to a smooth
    blend of the known pixels (weighted pyrDown to where every pixel has some weight, pyrUp back)."""
    if not mask.any():
        return
    known = ~mask
    if not known.any():
        image[:] = GREY
        return
    # colour premultiplied by weight, weight in channel 3: one pyrDown per level for both
    level = np.dstack([image.astype(np.float32) * known[..., None], known.astype(np.float32)])
    levels = [level]
    while (level[..., 3] <= 1e-3).any() and min(level.shape[:2]) > 2:
        level = cv2.pyrDown(level)
        levels.append(level)
    colour = level[..., :3] / np.maximum(level[..., 3:], 1e-6)
    for level in reversed(levels[1:-1]):  # pull: a level's own colour where it has weight
        up = cv2.pyrUp(colour, dstsize=level.shape[1::-1])
        weight = np.minimum(level[..., 3:], 1.0)
        colour = weight * (level[..., :3] / np.maximum(level[..., 3:], 1e-6)) + (1 - weight) * up
    up = colour if len(levels) == 1 else cv2.pyrUp(colour, dstsize=image.shape[1::-1])
    image[mask] = np.clip(np.round(up[mask]), 0, 255).astype(np.uint8)
