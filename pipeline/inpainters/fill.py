"""The hole fill: what the boxes hold before a model sees them (param `hole_fill` of pix2pix, glcic
and sd; the mean / telea / navier-stokes methods are this fill alone). uint8 in, uint8 out, so it
also runs in the data loader's workers."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# none: the pixels stay as they are (black in a masked image); zero: mid-grey, 0 on a model's
# -1..1 scale (the canonical pix2pix input); mean: the image's mean colour of its known pixels;
# telea / navier-stokes: OpenCV's inpainting from the known pixels around the hole; pyramid: the
# known pixels pushed down a Gaussian pyramid and pulled back up into the hole, a smooth blend of
# the box's surroundings; telea-half: Telea on the image at half size (radius 3 there, 6 pixels
# here), upsampled into the hole; onion: Telea's weighting ring by ring in torch, done by the
# network on the batch's device (pix2pix family; elsewhere it runs here, on the CPU).
# On the sample's 24 validation images, as inpainters alone: RMSE telea 0.1533, pyramid 0.1524,
# telea-half 0.1547, onion 0.1566. In a loader worker telea costs ~25 ms an image, pyramid and
# telea-half a tenth to a fifth of that, onion nothing. unet-l2-cpu trained 150 steps on each
# (best validation RMSE, seeds 0 / 1): telea 0.1448 / 0.1460, onion 0.1461 / 0.1470, telea-half
# 0.1487 / 0.1490, pyramid 0.1503 / 0.1512; on the sample's 47 test images telea 0.1320 / 0.1297,
# onion 0.1313 / 0.1293. The configs keep Telea (validation first); onion is the loader-free opt-in.
HOLE_FILLS = ("none", "zero", "mean", "telea", "navier-stokes", "pyramid", "telea-half", "onion")
# fills a trainable family computes on the batch's device, in the network's input path (onion_fill):
# the loader leaves the boxes as they are; fill_holes runs the same code on the CPU (its reference)
DEVICE_FILLS = ("onion",)
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
        elif how == "onion":
            _onion_uint8(image, mask)
        elif how == "telea-half":
            _telea_half(image, mask)
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


def _telea_half(image: np.ndarray, mask: np.ndarray, radius: float = 3.0) -> None:
    """In place: uint8 HxWx3 `image`, its pixels under bool HxW `mask` set to Telea's fill of the
    image at half size (`radius` in half-size pixels), upsampled bilinearly. Telea's cost grows
    with the hole's pixels times its radius squared: at half size a sixth of Telea's (radius 5)."""
    known = ~mask
    if not mask.any() or not known.any():  # as telea: an image without known pixels stays as it is
        return
    h, w = mask.shape
    size = (max(w // 2, 1), max(h // 2, 1))
    # a half-size pixel is in the hole if any of its full-size pixels is: its colour is all known
    small_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small = cv2.inpaint(small, small_mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    image[mask] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[mask]


def _onion_uint8(image: np.ndarray, mask: np.ndarray) -> None:
    """onion_fill in place on one uint8 HxWx3 image (the CPU reference of the device fill)."""
    with torch.no_grad():
        filled = onion_fill(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(mask)[None, None])
    image[:] = filled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def onion_fill(images: torch.Tensor, masks: torch.Tensor, radius: int = 5) -> torch.Tensor:
    """Telea's inpainting done layer by layer on any device: `images` float (N, C, H, W) on any
    scale (0..255 or -1..1), `masks` (N, 1, H, W) true / 1 in the holes. Returns float32 of the
    images' shape; pixels outside the holes unchanged, holes filled from their edge inwards, one
    ring of pixels (chessboard distance) at a time. Each pixel is Telea's weighted mean of the known
    or already filled pixels within `radius`: weight |offset . normal| / |offset|^3 / (1 + distance
    difference), normal = the gradient of the distance to the hole's edge. Where nothing is known
    within reach (an image without known pixels) the input stays. On the sample: RMSE 0.1566 as an
    inpainter alone against Telea's 0.1533, 0.016 from Telea's own fill."""
    images, holes = images.float(), masks.bool()
    n, _, h, w = images.shape
    r = radius
    known = ~holes
    # distance to the hole's edge: outside -(chessboard distance to the hole, at most r + 2), inside
    # the ring number (1 at the edge; the image border counts as hole, so rings grow from the known side)
    reached, grow = torch.zeros((n, 1, h, w), device=images.device), holes.float()
    for _ in range(r + 1):
        grow = F.max_pool2d(grow, 3, 1, 1)
        reached = reached + grow
    distance = torch.where(known, reached - (r + 2), torch.zeros_like(reached))
    rings, shrink = 0, holes.float()
    while bool(shrink.any()):
        rings += 1
        distance = distance + shrink
        eroded = -F.max_pool2d(F.pad(-shrink, (1, 1, 1, 1), value=-1.0), 3, 1, 0)
        if torch.equal(eroded, shrink):  # a hole no known pixel reaches (an image all hole) stops here
            break
        shrink = eroded
    # the disk of offsets, Telea's distance weight
    ys, xs = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = (ys**2 + xs**2 <= r * r) & ((ys != 0) | (xs != 0))
    dy, dx = ys[disk].to(images.device), xs[disk].to(images.device)
    closeness = 1.0 / (dy.float() ** 2 + dx.float() ** 2) ** 1.5
    padded_distance = F.pad(distance, (r, r, r, r))
    grad_y = (padded_distance[:, :, r + 1:r + 1 + h, r:r + w] - padded_distance[:, :, r - 1:r - 1 + h, r:r + w]) / 2
    grad_x = (padded_distance[:, :, r:r + h, r + 1:r + 1 + w] - padded_distance[:, :, r:r + h, r - 1:r - 1 + w]) / 2
    out = F.pad(images * known, (r, r, r, r))
    done = F.pad(known.float(), (r, r, r, r))
    for ring in range(1, rings + 1):
        b, _, y, x = (distance == ring).logical_and(holes).nonzero(as_tuple=True)
        yy, xx, bb = y[:, None] + dy + r, x[:, None] + dx + r, b[:, None]
        direction = (grad_y[b, 0, y, x][:, None] * dy + grad_x[b, 0, y, x][:, None] * dx).abs().clamp_min(1e-6)
        level = 1.0 / (1.0 + (distance[b, 0, y, x][:, None] - padded_distance[bb, 0, yy, xx]).abs())
        weight = done[bb, 0, yy, xx] * direction * closeness * level  # (pixels, offsets)
        total = weight.sum(1, keepdim=True)
        value = (weight[..., None] * out[bb, :, yy, xx]).sum(1) / total.clamp_min(1e-12)
        out[b, :, y + r, x + r] = torch.where(total > 0, value, images[b, :, y, x])
        done[b, 0, y + r, x + r] = 1.0
    return out[:, :, r:r + h, r:r + w]
