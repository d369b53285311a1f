"""Blending: several variants' predicted box pixels, weighted, as a variant of its own.

    data/predictions/<competition>/<part>/val/   the parts' validation predictions (and truth)
      -> weights: non-negative, summing to one (per channel as an option), least squares on the
         validation box pixels; scored cross-fitted (fitted on one half of the validation
         images, scored on the other, and the other way round) beside each part's RMSE
      -> submissions/<name>.yaml   the blend as a variant config (method: blend, its parts and weights)
      -> the submit step on it (pipeline.submit): the blended val and test predictions in the
         parts' layout, submissions/<name>.csv, its scores, its leaderboard row

`BlendInpainter` (method `blend`) is what predict runs for such a variant: each image's parts read
from their prediction folders, weighted and rounded; the pipeline composites the box pixels as
for any method. Parts predicted on another split or competition (the split fingerprint in their
run.json differs from the data's) are refused by name, so a blend never mixes two sets of boxes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from pipeline.config import ConfigError, DataConfig, VariantConfig, parse_params, variant_from_dict
from pipeline.data.boxes import box_pixels
from pipeline.data.competition import Competition, load_competition, read_image
from pipeline.data.predictions import PREDICTIONS_DIR, prediction_dir
from pipeline.files import atomic_write
from pipeline.inpainters.base import InpaintBatch, Inpainter
from pipeline.next_step import NextStep
from pipeline.score import split_fingerprint, truth_boxes

SPLITS = ("val", "test")


@dataclass
class BlendParams:
    variants: list = field(default_factory=list)  # the parts, by variant name
    weights: list = field(default_factory=list)  # one per part, or one [r, g, b] per part (per channel)
    per_channel: bool = False
    cross_fit_rmse: float = 0.0  # validation RMSE, weights fitted on the other half (what blend reported)


@dataclass
class BlendFit:
    """What `fit_blend` found: weights (parts,) or (parts, 3), RMSEs on the 0..1 scale."""

    parts: list[str]
    weights: np.ndarray
    part_rmse: dict[str, float]
    fitted_rmse: float  # the blend with the weights fitted on every validation image (optimistic)
    cross_fit_rmse: float  # each half scored with the weights fitted on the other half
    half_weights: tuple[np.ndarray, np.ndarray]  # fitted on the even-indexed, the odd-indexed images
    images: int


# --- the weights --------------------------------------------------------------------------------

def simplex_least_squares(parts: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Weights w >= 0, sum 1, minimising mean((w @ parts - truth)^2).

    parts (P, M) float, truth (M,) float -> (P,). Solved on the P x P Gram matrix (SLSQP), so the
    cost after the two products does not depend on the number of pixels.
    """
    from scipy.optimize import minimize

    count = len(parts)
    if count == 1:
        return np.ones(1)
    gram = parts @ parts.T / parts.shape[1]
    cross = parts @ truth / parts.shape[1]
    result = minimize(lambda w: w @ gram @ w - 2 * cross @ w, np.full(count, 1 / count),
                      jac=lambda w: 2 * gram @ w - 2 * cross, method="SLSQP", bounds=[(0.0, 1.0)] * count,
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones_like(w)}],
                      options={"ftol": 1e-15, "maxiter": 1000})
    weights = np.clip(result.x, 0.0, None)
    return weights / weights.sum()


def fit_weights(parts: np.ndarray, truth: np.ndarray, per_channel: bool) -> np.ndarray:
    """parts (P, ..., 3) uint8 box pixels, truth (..., 3) -> weights (P,), or (P, 3) per channel."""
    x = parts.reshape(len(parts), -1, 3).astype(np.float64) / 255.0
    y = truth.reshape(-1, 3).astype(np.float64) / 255.0
    if per_channel:
        return np.stack([simplex_least_squares(x[..., c], y[:, c]) for c in range(3)], axis=1)
    return simplex_least_squares(x.reshape(len(parts), -1), y.reshape(-1))


def blend_pixels(parts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """parts (P, ..., 3) uint8, weights (P,) or (P, 3) -> the weighted sum, rounded to uint8."""
    w = np.asarray(weights, np.float64)
    w = w.reshape(len(parts), *([1] * (parts.ndim - 1))) if w.ndim == 1 else w.reshape(len(parts), *([1] * (parts.ndim - 2)), 3)
    return np.clip(np.round((parts.astype(np.float64) * w).sum(axis=0)), 0, 255).astype(np.uint8)


def _rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((prediction.astype(np.float64) - truth.astype(np.float64)) ** 2)) / 255.0)


# --- the parts' predictions ---------------------------------------------------------------------

def part_folders(parts: Sequence[str], competition: Competition, splits: Sequence[str] = SPLITS,
                 root: Path = PREDICTIONS_DIR) -> dict[str, dict[str, Path]]:
    """{part: {split: its prediction folder}}, each checked to hold predictions of this
    competition's `split` (the split fingerprint its run.json carries); ConfigError naming the part."""
    folders: dict[str, dict[str, Path]] = {}
    for split in splits:
        expected = split_fingerprint(competition, split)
        for part in parts:
            folder = prediction_dir(part, split, competition, root)
            run = folder / "run.json"
            submit = NextStep("submit", {"variant": part, "data": competition.root})
            if not run.exists():
                raise ConfigError(f"{part} has no {split} predictions for {competition.root} ({folder}): "
                                  f"run `{submit}` before blending it")
            if json.loads(run.read_text()).get("split_fingerprint") != expected:
                raise ConfigError(f"{part}: its {split} predictions ({folder}) were made on another split or "
                                  f"competition than {competition.root} holds now (other data, boxes, "
                                  f"data.val_count / val_seed): run `{submit}` again, or leave it out")
            folders.setdefault(part, {})[split] = folder
    return folders


def fit_blend(parts: Sequence[str], competition: Competition, per_channel: bool = False,
              root: Path = PREDICTIONS_DIR) -> BlendFit:
    """Weights fitted on the validation box pixels of `parts`, with the cross-fitted RMSE."""
    parts = list(parts)
    if len(parts) < 2 or len(set(parts)) != len(parts):
        raise ConfigError(f"blend: needs two or more different variants, got {', '.join(parts) or 'none'}")
    records = competition.val
    if len(records) < 2:
        raise ConfigError(f"blend: the validation split of {competition.root} has {len(records)} image(s); "
                          "cross-fitting needs two or more (data.val_count)")
    folders = part_folders(parts, competition, root=root)
    size = competition.config.image_size
    predicted = np.stack([
        np.stack([box_pixels(read_image(folders[p]["val"] / f"{r.image_id}.png", size), r.boxes) for r in records])
        for p in parts])  # (P, N, boxes, S, S, 3)
    truth = truth_boxes(competition, records)
    halves = (np.arange(len(records)) % 2 == 0, np.arange(len(records)) % 2 == 1)
    half_weights = tuple(fit_weights(predicted[:, half], truth[half], per_channel) for half in halves)
    crossed = np.empty_like(truth)
    for fitted_on, scored in ((0, 1), (1, 0)):  # each half blended with the other half's weights
        crossed[halves[scored]] = blend_pixels(predicted[:, halves[scored]], half_weights[fitted_on])
    weights = fit_weights(predicted, truth, per_channel)
    return BlendFit(parts, weights, {p: _rmse(predicted[i], truth) for i, p in enumerate(parts)},
                    _rmse(blend_pixels(predicted, weights), truth), _rmse(crossed, truth), half_weights, len(records))


# --- the blend as a variant ---------------------------------------------------------------------

def default_name(parts: Sequence[str]) -> str:
    return "blend-" + "_".join(parts)


def describe_weights(parts: Sequence[str], weights) -> str:
    """'0.62 unet-l2-cpu + 0.38 pix2pix-cpu' (per channel: 'unet-l2-cpu (0.60/0.62/0.65) + ...')."""
    w = np.asarray(weights, np.float64)
    if w.ndim == 1:
        return " + ".join(f"{v:.2f} {p}" for p, v in zip(parts, w))
    return " + ".join(f"{p} ({'/'.join(f'{v:.2f}' for v in row)})" for p, row in zip(parts, w))


def blend_variant(fit: BlendFit, data: DataConfig, name: str, per_channel: bool) -> VariantConfig:
    """The blend as a variant config: method blend, its parts, weights and cross-fitted RMSE."""
    data_dict = VariantConfig(name=name, method="blend", data=data).to_dict()["data"]
    raw = {"name": name, "method": "blend",
           "description": f"blend {describe_weights(fit.parts, fit.weights)}"
                          + (" (weights per channel)" if per_channel else ""),
           "params": {"variants": list(fit.parts), "weights": np.round(fit.weights, 6).tolist(),
                      "per_channel": per_channel, "cross_fit_rmse": round(fit.cross_fit_rmse, 6)},
           "data": data_dict}
    return variant_from_dict(raw)


def write_config(variant: VariantConfig, folder: Path) -> Path:
    """submissions/<name>.yaml: the blend's config, for score / kaggle-submit / submit --variant <file>."""
    path = Path(folder) / f"{variant.name}.yaml"
    with atomic_write(path) as tmp:
        tmp.write_text("# written by the blend command: the parts' validation predictions fitted the weights\n"
                       + yaml.safe_dump(variant.to_dict(), sort_keys=False))
    return path


def format_fit(fit: BlendFit) -> str:
    """The parts' validation RMSE beside the blend's, fitted and cross-fitted, and the weights."""
    best = min(fit.part_rmse, key=fit.part_rmse.get)
    lines = [f"{'validation RMSE':<40s} on {fit.images} images"]
    lines += [f"  {part:<38s} {rmse:.4f}" for part, rmse in fit.part_rmse.items()]
    lines += [f"  {'blend, cross-fitted (the honest one)':<38s} {fit.cross_fit_rmse:.4f}  "
              f"({fit.cross_fit_rmse - fit.part_rmse[best]:+.4f} against {best})",
              f"  {'blend, fitted and scored on all':<38s} {fit.fitted_rmse:.4f}",
              f"weights: {describe_weights(fit.parts, fit.weights)}",
              f"  on the even-indexed half: {describe_weights(fit.parts, fit.half_weights[0])}",
              f"  on the odd-indexed half:  {describe_weights(fit.parts, fit.half_weights[1])}"]
    return "\n".join(lines)


def make_blend(parts: Sequence[str], data: DataConfig, leaderboard, name: str | None = None,
               per_channel: bool = False, out_dir: Path | None = None,
               on_fit: Callable[[BlendFit], None] = lambda fit: None) -> tuple[BlendFit, VariantConfig, Path, dict]:
    """Fit the weights, write the blend's config, then submit it as any variant is submitted
    (its val + test predictions, CSV, scores, leaderboard row). Returns (fit, variant, config
    file, leaderboard row); `on_fit` sees the fit before the (slower) submission."""
    from pipeline.submit import SUBMISSIONS_DIR, submit_variant

    out_dir = Path(out_dir or SUBMISSIONS_DIR)
    name = name or default_name(parts)
    if name in parts:
        raise ConfigError(f"blend: the blend's name {name!r} is one of its parts; pick another name")
    competition = load_competition(data)
    fit = fit_blend(parts, competition, per_channel)
    on_fit(fit)
    variant = blend_variant(fit, data, name, per_channel)
    config = write_config(variant, out_dir)
    return fit, variant, config, submit_variant(variant, competition, leaderboard, out_dir)


class BlendInpainter(Inpainter):
    """Each image's parts, read from their prediction folders (val or test, by image id), weighted."""

    def __init__(self, params: BlendParams, competition: Competition, folders: dict[str, dict[str, Path]]):
        self.params = params
        self.weights = np.asarray(params.weights, np.float64)
        self.size = competition.config.image_size
        self.split_of: dict[str, str] = {}
        for split in SPLITS:
            for record in competition.split(split):
                if self.split_of.setdefault(record.image_id, split) != split:
                    raise ConfigError(f"blend: image id {record.image_id!r} is in both the validation split and "
                                      "the test set; a blend cannot tell their predictions apart")
        self.folders = folders

    @classmethod
    def check_params(cls, variant: VariantConfig) -> BlendParams:
        params = parse_params(BlendParams, variant.params, variant)
        where = f"{variant.source or variant.name}: params"
        if len(params.variants) < 2 or not all(isinstance(v, str) for v in params.variants):
            raise ConfigError(f"{where}.variants: two or more variant names")
        weights = np.asarray(params.weights, np.float64) if params.weights else np.zeros(0)
        shape = (len(params.variants), 3) if params.per_channel else (len(params.variants),)
        if weights.shape != shape:
            raise ConfigError(f"{where}.weights: expected {'one [r, g, b] per variant' if params.per_channel else 'one per variant'} "
                              f"({len(params.variants)}), got {params.weights!r}")
        if (weights < 0).any() or not np.allclose(weights.sum(axis=0), 1.0, atol=1e-4):
            raise ConfigError(f"{where}.weights: non-negative, summing to one (per channel), got {params.weights!r}")
        return params

    @classmethod
    def preflight(cls, variant: VariantConfig) -> None:
        """The params, and every part's predictions made on this data's splits."""
        params = cls.check_params(variant)
        part_folders(params.variants, load_competition(variant.data, check_images=False))

    @classmethod
    def from_config(cls, variant: VariantConfig) -> "BlendInpainter":
        params = cls.check_params(variant)
        competition = load_competition(variant.data, check_images=False)
        return cls(params, competition, part_folders(params.variants, competition))

    def inpaint(self, batch: InpaintBatch) -> np.ndarray:
        out = []
        for image_id in batch.image_ids:
            split = self.split_of.get(image_id)
            if split is None:
                raise ConfigError(f"blend: image {image_id!r} is in neither the validation split nor the test set")
            parts = np.stack([read_image(self.folders[p][split] / f"{image_id}.png", self.size)
                              for p in self.params.variants])
            out.append(blend_pixels(parts, self.weights))
        return np.stack(out)
