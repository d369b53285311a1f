"""The comparison report: every variant on the leaderboard (or a chosen few) side by side.

    submissions/report.html   self-contained (images inlined as data URIs): the leaderboard table
                              (local RMSE, PSNR, SSIM, Kaggle public score, time per image, gain
                              over the best baseline; the best variant highlighted and its margin
                              stated; config, training steps and stop reason folded in a <details>
                              per row), the RMSE chart with the baselines marked, the training
                              curves read from each run's TensorBoard scalars, per-class RMSE (a
                              class with too few validation images flagged), and the gallery: each
                              box cropped with a little context and enlarged 3x, per variant
    submissions/report.png    the chart, the curves, the per-class heatmap and the gallery in one image

Reads the leaderboard (latest row per variant, on one validation split) and the validation predictions;
it never predicts. A variant whose predictions are missing, or were made on other validation
images, keeps its table row and gets a note instead of gallery pictures.

The page's structure is templates/report.html.j2; this module computes what it shows (table rows,
figures as data URIs) and renders it.

The figure builders return matplotlib Figures (made without pyplot, so no global backend is
touched), which the results notebook displays as they are.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm import tqdm

from pipeline.config import ConfigError, DataConfig, data_config, variant_from_dict
from pipeline.data.boxes import apply_mask, box_pixels, boxes_mask
from pipeline.data.competition import Competition, CompetitionError, ImageRecord, load_competition, read_image
from pipeline.data.predictions import PREDICTIONS_DIR, prediction_dir
from pipeline.files import write_bytes_atomic
from pipeline.leaderboard import BASELINE_METHODS, Leaderboard, gains_over_baseline, is_baseline
from pipeline.next_step import NextStep
from pipeline.score import rmse, split_fingerprint, truth_path

REPORT_PATH = Path("submissions/report.html")
GALLERY_IMAGES = 6
BASELINE_COLOR, VARIANT_COLOR, BOX_COLOR = "#9e9e9e", "#1f77b4", "#ffd400"
# gallery crops: the box and CROP_MARGIN pixels of context around it, enlarged CROP_SCALE times
# with nearest-neighbour (every predicted pixel stays a visible square, nothing is smoothed)
CROP_SCALE, CROP_MARGIN = 3, 4
# a class with fewer validation images than this gets a flag: its RMSE rests on a handful of
# photos (two boxes each), so one unusual photo moves it more than variants differ
MIN_CLASS_IMAGES = 10
# the training loss drawn per variant: the first of these its run logged, else its first loss/* tag
MAIN_LOSS_TAGS = ("loss/total", "loss/box_l2", "loss/box_l1", "loss/mse")
VAL_RMSE_TAG = "val/rmse"

# leaderboard column -> (heading, format); the table shows these values, rounded, and keeps the
# exact value in data-value so nothing is lost
TABLE_COLUMNS = {
    "val_rmse": ("val RMSE", "{:.4f}"),
    "val_rmse_255": ("RMSE /255", "{:.2f}"),
    "val_psnr": ("PSNR dB", "{:.2f}"),
    "val_ssim": ("SSIM", "{:.4f}"),
    "test_rmse": ("test RMSE (sample truth)", "{:.4f}"),
    "kaggle_public_score": ("Kaggle public", "{:.5f}"),
    "seconds_per_image": ("s / image", "{:.4f}"),
}


def select_rows(leaderboard: Leaderboard, variants: Sequence[str] | None = None,
                split: str | None = None) -> pd.DataFrame:
    """The latest leaderboard row of each variant (all, or `variants`) scored on one validation
    split (`split`, or the newest selected row's), best local RMSE first. Rows on other splits
    are not comparable: `apart_rows` lists them.

    Raises ConfigError naming the leaderboard file when it is empty or a requested variant has no
    row, listing the variants that have one.
    """
    table = _selected(leaderboard, variants)
    return table[_on_split(table, split)].reset_index(drop=True)


def apart_rows(leaderboard: Leaderboard, variants: Sequence[str] | None = None,
               split: str | None = None) -> pd.DataFrame:
    """The latest rows that `select_rows` leaves out: scored on another validation split."""
    table = _selected(leaderboard, variants)
    return table[~_on_split(table, split)].reset_index(drop=True)


def _selected(leaderboard: Leaderboard, variants: Sequence[str] | None) -> pd.DataFrame:
    table = leaderboard.latest()
    if table.empty:
        raise ConfigError(f"{leaderboard.path}: no submissions yet; run `{_submit('telea')}`")
    if variants:
        missing = [v for v in variants if v not in set(table["variant"])]
        if missing:
            raise ConfigError(
                f"{leaderboard.path}: no submission of {', '.join(missing)}; recorded: "
                f"{', '.join(sorted(set(table['variant'])))}. Run `{_submit(missing[0])}` or leave it out of the "
                "variants asked for"
            )
        table = table[table["variant"].isin(variants)].reset_index(drop=True)
    return table


def _on_split(table: pd.DataFrame, split: str | None) -> pd.Series:
    splits = table["split"].fillna("")
    if split is None:
        split = splits.loc[table["submitted_at"].astype(str).idxmax()] if len(table) else ""
    return splits == (split or "")


def _json(value) -> dict:
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return {}
    return json.loads(value)


def config_summary(row: pd.Series) -> str:
    """The variant's method and params in one line, e.g. 'telea radius=5.0'."""
    config = _json(row.get("config"))
    params = config.get("params") or {}
    if config.get("method") == "blend" and params.get("variants") and params.get("weights"):
        from pipeline.blend import describe_weights

        return (f"blend {describe_weights(params['variants'], params['weights'])}; cross-fitted validation RMSE "
                f"{params.get('cross_fit_rmse', float('nan')):.4f}")
    parts = [str(config.get("method") or row["method"])]
    parts += [f"{key}={json.dumps(value) if isinstance(value, (dict, list, str)) else value}"
              for key, value in sorted(params.items())]
    return " ".join(parts)


def class_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Validation RMSE per class: index variant (rows' order), columns the classes (sorted), NaN
    where a variant has no score for a class. Empty when no class folders were known."""
    by_class = {row["variant"]: _json(row["val_rmse_by_class"]) for _, row in rows.iterrows()}
    classes = sorted({label for scores in by_class.values() for label in scores})
    table = pd.DataFrame([{label: scores.get(label, np.nan) for label in classes} for scores in by_class.values()],
                         index=list(by_class), columns=classes, dtype=float)
    table.index.name = "variant"
    return table


def gallery_data(rows: pd.DataFrame, data_root: str | Path | None = None) -> DataConfig:
    """The competition the gallery shows: `data_root` (like --data elsewhere) or the best row's."""
    for _, row in rows.iterrows():
        config = _json(row.get("config"))
        if config:
            return variant_from_dict(config, data_root=data_root).data
    root = data_root or rows.iloc[0]["data"]
    if not isinstance(root, (str, Path)) or not str(root):
        raise CompetitionError("no leaderboard row records its data folder; name it: "
                               f"`{NextStep('compare', {'data': '<folder>'})}`")
    return data_config({"root": root, "truth": None})


def _submit(variant: str) -> NextStep:
    return NextStep("submit", {"variant": variant})


def gallery_records(competition: Competition, count: int) -> list[ImageRecord]:
    """`count` validation images, the same ones on every run: taken in turn from each class
    (sorted by name, images by id) so that every class shows up when there is room."""
    by_class: dict[str, list[ImageRecord]] = {}
    for record in sorted(competition.val, key=lambda r: r.image_id):
        by_class.setdefault(record.label or "", []).append(record)
    queues = [by_class[label] for label in sorted(by_class)]
    chosen: list[ImageRecord] = []
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return chosen


@dataclass
class Gallery:
    """Pictures for the gallery, all uint8 (S, S, 3) RGB with S = data.image_size.

    predictions[variant] is one image per record, or None when the variant has none to show;
    notes[variant] then says why (and what to run).
    """

    records: list[ImageRecord]
    masked: list[np.ndarray]
    truth: list[np.ndarray]
    predictions: dict[str, list[np.ndarray] | None]
    methods: dict[str, str]
    notes: dict[str, str] = field(default_factory=dict)

    def box_rmse(self, variant: str, index: int) -> float | None:
        """RMSE (0..1) of `variant`'s box pixels on image `index`, None without a prediction."""
        images = self.predictions.get(variant)
        if images is None:
            return None
        boxes = self.records[index].boxes
        return rmse(box_pixels(images[index], boxes), box_pixels(self.truth[index], boxes))


def load_gallery(rows: pd.DataFrame, competition: Competition, count: int = GALLERY_IMAGES,
                 predictions_root: Path = PREDICTIONS_DIR, progress: bool = True) -> Gallery:
    """Read the masked inputs, truths and every row's validation predictions for the gallery."""
    records = gallery_records(competition, count)
    size = competition.config.image_size
    truth = [read_image(truth_path(competition, r), size) for r in records]
    # what the models saw: the competition's masked copy (or the photo), boxes blanked
    masked = [apply_mask(read_image(r.input_path, size), boxes_mask(r.boxes, size, size)) for r in records]
    gallery = Gallery(records, masked, truth, {}, dict(zip(rows["variant"], rows["method"])))
    for _, row in tqdm(list(rows.iterrows()), desc="gallery", unit="variant", disable=not progress):
        name = row["variant"]
        folder = prediction_dir(name, "val", competition, predictions_root)
        run_file = folder / "run.json"
        gallery.predictions[name] = None
        if not run_file.exists():
            gallery.notes[name] = f"no validation predictions in {folder}; run `{_submit(name)}`"
            continue
        run = json.loads(run_file.read_text())
        made_on = run.get("variant", {}).get("data", {})
        if run.get("split_fingerprint") != split_fingerprint(competition, "val"):
            gallery.notes[name] = (
                f"{folder} holds predictions for other validation images or boxes (data.root "
                f"{made_on.get('root')}, val_count {made_on.get('val_count')}, val_seed "
                f"{made_on.get('val_seed')}) than the gallery's ({competition.config.root}, "
                f"{competition.config.val_count}, {competition.config.val_seed}); "
                f"run `{_submit(name)}` on this data")
            continue
        missing = [r.image_id for r in records if not (folder / f"{r.image_id}.png").exists()]
        if missing:
            gallery.notes[name] = (f"{folder}: {len(missing)} gallery image(s) missing (e.g. {missing[0]}.png); "
                                   f"run `{_submit(name)}`")
            continue
        gallery.predictions[name] = [read_image(folder / f"{r.image_id}.png", size) for r in records]
        recorded = _json(row.get("config"))
        if recorded and run.get("variant") != recorded:
            gallery.notes[name] = (f"{folder} was predicted with another config than the leaderboard row "
                                   f"shows; run `{_submit(name)}` to bring them together")
    return gallery


def rmse_chart(rows: pd.DataFrame) -> Figure:
    """Horizontal bars of local validation RMSE per variant (best on top), baselines grey and
    hatched, the best baseline as a dashed line, Kaggle public scores as diamonds when known."""
    rows = rows[rows["val_rmse"].notna()]
    fig = Figure(figsize=(7.5, 0.45 * max(len(rows), 3) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Local validation RMSE (0..1 scale, lower is better)", fontsize=11)
    if rows.empty:
        ax.text(0.5, 0.5, "no variant has a validation RMSE", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    baseline = rows["method"].map(is_baseline).to_numpy()
    y = np.arange(len(rows))
    values = rows["val_rmse"].to_numpy(dtype=float)
    bars = ax.barh(y, values, color=np.where(baseline, BASELINE_COLOR, VARIANT_COLOR), edgecolor="white")
    for bar, is_base in zip(bars, baseline):
        if is_base:
            bar.set_hatch("//")
    ax.bar_label(bars, labels=[f"{v:.4f}" for v in values], padding=3, fontsize=9)
    ax.set_yticks(y, rows["variant"])
    ax.invert_yaxis()
    handles = []
    if not baseline.all():
        handles.append(Patch(facecolor=VARIANT_COLOR, label="variant"))
    if baseline.any():
        handles.append(Patch(facecolor=BASELINE_COLOR, hatch="//", edgecolor="white", label="baseline (classical)"))
    if baseline.any():
        best_baseline = values[baseline].min()
        handles.append(ax.axvline(best_baseline, color="#555555", linestyle="--", linewidth=1,
                                  label=f"best baseline {best_baseline:.4f}"))
    kaggle = rows["kaggle_public_score"].to_numpy(dtype=float)
    if np.isfinite(kaggle).any():
        handles.append(ax.scatter(kaggle, y, marker="D", color="#d62728", zorder=3, label="Kaggle public score"))
    ax.set_xlim(0, np.nanmax(np.concatenate([values, kaggle])) * 1.18)
    ax.set_xlabel("RMSE")
    # below the axes, so it never hides a bar or its value
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def class_heatmap(table: pd.DataFrame) -> Figure | None:
    """Validation RMSE per variant (rows) and class (columns), annotated; None without classes."""
    if table.empty or table.columns.empty:
        return None
    fig = Figure(figsize=(1.0 * len(table.columns) + 2.8, 0.45 * len(table) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    values = table.to_numpy(dtype=float)
    ax.set_facecolor("#eeeeee")  # a class a variant has no score for shows grey, not white
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if value > middle else "black")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), table.index)
    ax.set_title("Validation RMSE per class (lower is better)", fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.8, label="RMSE")
    return fig


def read_scalars(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of the TensorBoard run in `run_dir`, read with tensorboard's EventAccumulator:
    tag -> (steps int64, values float64) in step order; where a resumed run logged a step again,
    the later value. Empty when the folder holds no event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = Path(run_dir)
    if not any(folder.glob("*tfevents*")):
        return {}
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: every point, not a sample
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        by_step = {event.step: event.value for event in events.Scalars(tag)}  # file order: the last wins
        steps = np.array(sorted(by_step), dtype=np.int64)
        scalars[tag] = (steps, np.array([by_step[step] for step in steps], dtype=float))
    return scalars


def training_curves(rows: pd.DataFrame) -> tuple[dict[str, dict], dict[str, str]]:
    """The TensorBoard scalars of each row that records a run_dir ({variant: read_scalars(...)}),
    and a note for each such row whose folder is gone or holds no scalars."""
    curves: dict[str, dict] = {}
    notes: dict[str, str] = {}
    for _, row in rows.iterrows():
        run_dir = row.get("run_dir")
        if not isinstance(run_dir, str) or not run_dir:
            continue
        name = row["variant"]
        if not Path(run_dir).is_dir():
            notes[name] = (f"its TensorBoard run {run_dir} is not here (trained on another machine, or "
                           "the folder was moved); copy it back to see its curves")
            continue
        scalars = read_scalars(run_dir)
        if not scalars:
            notes[name] = (f"{run_dir} holds no TensorBoard scalars ("
                           + ("its event files hold none: damaged, or training stopped before its first log)"
                              if any(Path(run_dir).glob("*tfevents*")) else "no events.out.tfevents file)"))
            continue
        curves[name] = scalars
    return curves, notes


def main_loss_tag(scalars: dict) -> str | None:
    """The loss a run's curve shows: the first of MAIN_LOSS_TAGS it logged, else its first loss/*."""
    for tag in MAIN_LOSS_TAGS:
        if tag in scalars:
            return tag
    return next((tag for tag in sorted(scalars) if tag.startswith("loss/")), None)


def _colors(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def curves_figure(curves: dict[str, dict], best_baseline: float | None = None) -> Figure | None:
    """Two panels, one line per trained variant: its main training loss (`main_loss_tag`) and its
    validation RMSE during training, with the best baseline's validation RMSE dashed. None
    without curves."""
    if not curves:
        return None
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    loss_ax, val_ax = fig.subplots(1, 2)
    positive = True
    for color, (name, scalars) in zip(_colors(len(curves)), curves.items()):
        tag = main_loss_tag(scalars)
        if tag:
            steps, values = scalars[tag]
            positive = positive and bool((values > 0).all())
            loss_ax.plot(steps, values, color=color, linewidth=1.2, marker="." if len(steps) < 30 else None,
                         label=f"{name} ({tag})")
        if VAL_RMSE_TAG in scalars:
            steps, values = scalars[VAL_RMSE_TAG]
            val_ax.plot(steps, values, color=color, linewidth=1.4, marker="o", markersize=3, label=name)
    if best_baseline is not None and np.isfinite(best_baseline):
        val_ax.axhline(best_baseline, color="#555555", linestyle="--", linewidth=1,
                       label=f"best baseline {best_baseline:.4f}")
    if positive:
        loss_ax.set_yscale("log")
    loss_ax.set_title("Training loss (each run's main term" + (", log scale)" if positive else ")"), fontsize=11)
    val_ax.set_title("Validation RMSE during training (lower is better)", fontsize=11)
    for ax in (loss_ax, val_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, frameon=False)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#555555")
    return fig


def box_crop(image: np.ndarray, box, margin: int = CROP_MARGIN, scale: int = CROP_SCALE,
             outline: bool = True) -> np.ndarray:
    """The box with `margin` pixels of context around it (grey past the image's edge), enlarged
    `scale` times with nearest-neighbour, the box outlined (`outline`) just outside its pixels.

    image: uint8 (H, W, 3) RGB. Returns uint8 ((box.h + 2 margin) scale, (box.w + 2 margin) scale, 3)."""
    padded = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    crop = padded[box.y:box.y + box.h + 2 * margin, box.x:box.x + box.w + 2 * margin]
    large = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if outline and margin:
        edge = margin * scale
        color = tuple(int(BOX_COLOR[i:i + 2], 16) for i in (1, 3, 5))
        # one pixel outside the box on every side: no predicted pixel is covered
        cv2.rectangle(large, (edge - 1, edge - 1), (edge + box.w * scale, edge + box.h * scale), color, 1)
    return large


def gallery_figure(gallery: Gallery, cell: float = 1.7) -> Figure:
    """Crops of every gallery box (`box_crop`, CROP_SCALE x), one column per box of each image and
    one row per picture: masked input, ground truth, then each variant (the box's RMSE below the
    crop, the column's best in bold). Rows grow with the variants, so 7+ stay as large as 2."""
    variants = list(gallery.predictions)
    labels = ["masked input", "ground truth"] + variants
    columns = [(i, b) for i, record in enumerate(gallery.records) for b in range(len(record.boxes))]
    fig = Figure(figsize=(cell * max(len(columns), 2) + 1.2, (cell + 0.3) * len(labels) + 0.6), layout="constrained")
    axes = fig.subplots(len(labels), max(len(columns), 1), squeeze=False)
    for j, (i, b) in enumerate(columns):
        record = gallery.records[i]
        box = record.boxes[b]
        scores = {}
        for name in variants:
            images = gallery.predictions[name]
            if images is not None:
                scores[name] = rmse(box_pixels(images[i], [box]), box_pixels(gallery.truth[i], [box]))
        best = min(scores.values()) if scores else None
        pictures = [gallery.masked[i], gallery.truth[i]] + [
            (gallery.predictions[name] or [None] * len(gallery.records))[i] for name in variants]
        for k, (label, picture) in enumerate(zip(labels, pictures)):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if picture is None:
                ax.set_facecolor("#eeeeee")
                ax.text(0.5, 0.5, "no\npredictions", ha="center", va="center", fontsize=7, color="#555555",
                        transform=ax.transAxes)
            else:
                ax.imshow(box_crop(picture, box), interpolation="nearest")
            if label in scores:
                ax.set_xlabel(f"{scores[label]:.4f}", fontsize=7, labelpad=1,
                              fontweight="bold" if scores[label] == best else "normal")
            if k == 0:
                name = record.image_id if len(record.image_id) <= 20 else f"{record.image_id[:9]}..{record.image_id[-9:]}"
                ax.set_title(f"{name}\nbox {b + 1}", fontsize=7)
            if j == 0:
                baseline = k >= 2 and is_baseline(gallery.methods.get(label, ""))
                ax.set_ylabel(label + ("\n(baseline)" if baseline else ""), fontsize=8)
    if not columns:
        axes[0, 0].text(0.5, 0.5, "no validation images", ha="center", va="center")
    fig.suptitle(f"Validation gallery: each box with {CROP_MARGIN} px of context, enlarged {CROP_SCALE}x; "
                 "the box's RMSE below (best in bold)", fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure encoded as PNG bytes (Agg), on a white background."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def _stack_png(images: Sequence[bytes]) -> bytes:
    """PNGs one under the other, centred on white, as one PNG."""
    decoded = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in images]
    width = max(image.shape[1] for image in decoded)
    padded = [cv2.copyMakeBorder(image, 0, 16, (width - image.shape[1]) // 2, (width - image.shape[1] + 1) // 2,
                                 cv2.BORDER_CONSTANT, value=(255, 255, 255))
              for image in decoded]
    ok, encoded = cv2.imencode(".png", np.vstack(padded))
    if not ok:
        raise OSError("could not encode the report PNG")
    return encoded.tobytes()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass(frozen=True)
class NumberCell:
    """One number of a report table: `text` is what the page shows (rounded; "" when there is no
    value, shown as a dash), `value` the exact float's repr (kept in data-value; "" when none)."""

    column: str
    value: str
    text: str
    best: bool = False


def _number(value, fmt: str, column: str, best: bool = False) -> NumberCell:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NumberCell(column, "", "")
    return NumberCell(column, repr(float(value)), fmt.format(float(value)), best)


@dataclass(frozen=True)
class BoardRow:
    """One variant's row of the leaderboard table. best: the row with the lowest validation RMSE
    (highlighted). gain: its validation RMSE below the best baseline's, absolute and percent.
    training: steps and stop reason in a few words ("" when the row does not record them).
    details: (label, text) pairs shown on demand. run_href: the TensorBoard run folder relative
    to the report's folder, None when run_dir is not found (or not given)."""

    variant: str
    method: str
    baseline: bool
    best: bool
    description: str
    numbers: list[NumberCell]
    gain: NumberCell
    config: str
    config_json: str
    training: str
    details: list[tuple[str, str]]
    submitted_at: str
    run_dir: str
    run_href: str | None


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""


def _flag(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0", "yes")


def training_summary(row: pd.Series) -> str:
    """Steps, epochs, stop reason and time of a trained row in a few words, e.g. '30 steps,
    stopped: max_steps, 1.2 min'; "" for a row that records none of them (a classical method,
    or a row written before the leaderboard had these columns)."""
    parts = []
    if _given(row.get("steps")):
        parts.append(f"{int(float(row['steps']))} steps")
    if _given(row.get("epochs")):
        parts.append(f"{float(row['epochs']):g} epochs")
    if _given(row.get("stop_reason")):
        parts.append(f"stopped: {row['stop_reason']}")
    if _given(row.get("train_seconds")):
        seconds = float(row["train_seconds"])
        parts.append(f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s")
    return ", ".join(parts)


def row_details(row: pd.Series) -> list[tuple[str, str]]:
    """What a row records beyond the table's numbers, as (label, text): training, seed, code
    version, checkpoint, submission time, TensorBoard run. Columns a row lacks are left out."""
    details = []
    if training_summary(row):
        details.append(("training", training_summary(row)))
    if _given(row.get("seed")):
        seed = row["seed"]
        details.append(("seed", str(int(seed)) if isinstance(seed, float) and seed.is_integer() else str(seed)))
    if _given(row.get("git_commit")):
        dirty = " (uncommitted changes)" if _flag(row.get("git_dirty")) else ""
        details.append(("git commit", f"{str(row['git_commit'])[:12]}{dirty}"))
    if _given(row.get("checkpoint_sha256")):
        details.append(("checkpoint sha256", str(row["checkpoint_sha256"])[:12]))
    details.append(("submitted", str(row["submitted_at"])))
    return details


def board_rows(rows: pd.DataFrame, out_dir: Path) -> list[BoardRow]:
    """The leaderboard table's rows, in `rows`' order; links are made relative to `out_dir`."""
    gains = gains_over_baseline(rows)
    scored = pd.to_numeric(rows["val_rmse"], errors="coerce")
    best_index = scored.idxmin() if scored.notna().any() else None
    board = []
    for index, row in rows.iterrows():
        run_dir = row.get("run_dir")
        run_dir = run_dir if isinstance(run_dir, str) else ""
        run_href = None
        if run_dir and Path(run_dir).exists():
            run_href = Path(os.path.relpath(Path(run_dir).resolve(), out_dir.resolve())).as_posix()
        description = row.get("description")
        gain, gain_pct = gains.loc[index, "gain"], gains.loc[index, "gain_pct"]
        board.append(BoardRow(
            variant=row["variant"], method=row["method"], baseline=is_baseline(row["method"]),
            best=index == best_index, description=description if isinstance(description, str) else "",
            numbers=[_number(row[column], fmt, column) for column, (_, fmt) in TABLE_COLUMNS.items()],
            gain=(NumberCell("gain", repr(float(gain)), f"{gain:+.4f} ({gain_pct:+.1f}%)")
                  if np.isfinite(gain) else NumberCell("gain", "", "")),
            config=config_summary(row), config_json=json.dumps(_json(row.get("config")), sort_keys=True, indent=1),
            training=training_summary(row), details=row_details(row),
            submitted_at=str(row["submitted_at"]), run_dir=run_dir, run_href=run_href))
    return board


def headline(rows: pd.DataFrame) -> str:
    """One sentence above the table: the best variant, and its margin over the best baseline
    (absolute and percent), or that no variant beats it; "" when no row has a validation RMSE."""
    scored = gains_over_baseline(rows[pd.to_numeric(rows["val_rmse"], errors="coerce").notna()])
    if scored.empty:
        return ""
    baseline = scored["method"].map(is_baseline)
    best = scored.loc[scored["val_rmse"].astype(float).idxmin()]
    if not baseline.any():
        return (f"Best: {best['variant']}, validation RMSE {best['val_rmse']:.4f}. No baseline was scored on "
                f"these images, so there is no margin to state; run `{_submit('telea')}` beside it.")
    base = scored[baseline].loc[scored.loc[baseline, "val_rmse"].astype(float).idxmin()]
    if baseline.all():
        return f"Only baselines here; the best is {base['variant']}, validation RMSE {base['val_rmse']:.4f}."
    learned = scored[~baseline].loc[scored.loc[~baseline, "val_rmse"].astype(float).idxmin()]
    if learned["gain"] > 0:
        return (f"Best variant: {learned['variant']}, validation RMSE {learned['val_rmse']:.4f}, "
                f"{learned['gain']:.4f} ({learned['gain_pct']:.1f}%) below the best baseline, "
                f"{base['variant']} ({base['val_rmse']:.4f}).")
    if learned["gain"] == 0:
        return (f"No variant beats the best baseline: {learned['variant']} ties {base['variant']}, validation "
                f"RMSE {base['val_rmse']:.4f}.")
    return (f"No variant beats the best baseline: {base['variant']} is best, validation RMSE "
            f"{base['val_rmse']:.4f}; the closest variant, {learned['variant']} ({learned['val_rmse']:.4f}), "
            f"is {-learned['gain']:.4f} ({-learned['gain_pct']:.1f}%) above it.")


@dataclass(frozen=True)
class ClassColumn:
    """A class of the per-class table: its validation images (None when unknown) and whether
    they are too few (under MIN_CLASS_IMAGES) for its RMSE to tell variants apart."""

    label: str
    images: int | None
    few: bool


@dataclass(frozen=True)
class ClassRow:
    variant: str
    numbers: list[NumberCell]


def class_columns(table: pd.DataFrame, counts: dict[str, int]) -> list[ClassColumn]:
    return [ClassColumn(str(label), counts.get(label), counts.get(label) is not None
                        and counts[label] < MIN_CLASS_IMAGES) for label in table.columns]


def class_rows(table: pd.DataFrame) -> list[ClassRow]:
    """The per-class table's rows (from `class_scores`), each class's best score marked."""
    best = table.min(axis=0)
    return [ClassRow(str(variant), [_number(value, "{:.4f}", f"class:{label}",
                                            best=bool(np.isfinite(value) and value == best[label]))
                                    for label, value in scores.items()])
            for variant, scores in table.iterrows()]


def _png_uri(image: np.ndarray) -> str:
    """uint8 (H, W, 3) RGB -> a PNG data URI."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("could not encode a gallery crop as PNG")
    return _data_uri(encoded.tobytes())


@dataclass(frozen=True)
class Crop:
    """One box of a gallery picture: `src` a PNG data URI at 1x (the box and CROP_MARGIN pixels
    each side), shown `width` x `height` (CROP_SCALE times larger, pixelated); the box itself
    starts `margin` displayed pixels in and is `box_width` x `box_height` displayed pixels."""

    src: str
    width: int
    height: int
    margin: int
    box_width: int
    box_height: int


def crop_of(image: np.ndarray, box) -> Crop:
    small = box_crop(image, box, scale=1, outline=False)
    return Crop(_png_uri(small), small.shape[1] * CROP_SCALE, small.shape[0] * CROP_SCALE,
                CROP_MARGIN * CROP_SCALE, box.w * CROP_SCALE, box.h * CROP_SCALE)


@dataclass(frozen=True)
class GalleryCell:
    """One picture of a gallery image: the masked input, the truth or a variant's prediction,
    one Crop per box. rmse: the image's box RMSE ("" for input and truth, or without
    predictions); note: why a variant has none."""

    label: str
    kind: str  # input | truth | variant
    baseline: bool
    crops: list[Crop]
    rmse: str
    best: bool
    note: str


@dataclass(frozen=True)
class GalleryImage:
    image_id: str
    label: str
    cells: list[GalleryCell]


def gallery_images(gallery: Gallery) -> list[GalleryImage]:
    """The page's gallery: per image, its boxes' crops for the input, the truth and every variant."""
    pages = []
    for i, record in enumerate(gallery.records):
        def crops(image):
            return [crop_of(image, box) for box in record.boxes]

        scores = {name: gallery.box_rmse(name, i) for name in gallery.predictions}
        known = [s for s in scores.values() if s is not None]
        best = min(known) if known else None
        cells = [GalleryCell("masked input", "input", False, crops(gallery.masked[i]), "", False, ""),
                 GalleryCell("ground truth", "truth", False, crops(gallery.truth[i]), "", False, "")]
        for name, images in gallery.predictions.items():
            baseline = is_baseline(gallery.methods.get(name, ""))
            if images is None:
                cells.append(GalleryCell(name, "variant", baseline, [], "", False,
                                         gallery.notes.get(name, "no predictions")))
                continue
            cells.append(GalleryCell(name, "variant", baseline, crops(images[i]), f"{scores[name]:.4f}",
                                     scores[name] == best, ""))
        pages.append(GalleryImage(record.image_id, record.label or "", cells))
    return pages


def _python() -> str:
    """This Python, as one would type it here: .venv/bin/python under the project, else its full path
    (tensorboard is installed in the project's environment, not necessarily on PATH)."""
    python = Path(sys.executable)
    try:
        return python.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return python.as_posix()


def page_template() -> Template:
    """The report page, templates/report.html.j2 inside the package; it escapes every value."""
    # StrictUndefined: a name the template expects but build_report left out fails here, not silently
    environment = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)
    return environment.get_template("report.html.j2")


@dataclass
class Report:
    """What build_report wrote: the page, the PNG, the variants in table order, notes by variant
    (or topic), and the variants whose training curves the page draws."""

    html: Path
    png: Path
    variants: list[str]
    notes: dict[str, str]
    curves: list[str] = field(default_factory=list)


def build_report(leaderboard: Leaderboard, out: Path = REPORT_PATH, variants: Sequence[str] | None = None,
                 images: int = GALLERY_IMAGES, data_root: str | Path | None = None,
                 predictions_root: Path = PREDICTIONS_DIR, progress: bool = True) -> Report:
    """Write the HTML report to `out` and the PNG beside it (same name, .png); both atomically.

    variants: leaderboard variant names to include (None: all). images: gallery rows.
    data_root: the competition whose validation images the gallery shows (default: the one the
    best variant was scored on).
    """
    # 1. check the arguments and pick the rows: one validation split, the others noted apart
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: the report is HTML; give a path ending in .html")
    if images < 0:
        raise ConfigError(f"--images {images}: must be 0 or more")
    split = None
    if data_root is not None:
        split = split_fingerprint(load_competition(gallery_data(_selected(leaderboard, variants), data_root),
                                                   check_images=False), "val")
    rows = select_rows(leaderboard, variants, split)
    notes: dict[str, str] = {}
    apart = apart_rows(leaderboard, variants, split)
    if rows.empty:
        raise ConfigError(f"{leaderboard.path}: no variant was scored on the validation split of {data_root}; "
                          "submit one there first")
    if not apart.empty:
        data_roots = sorted({str(d) for d in apart["data"].dropna()})
        notes["other splits"] = (f"{', '.join(apart['variant'])}: scored on other validation splits "
                                 f"({', '.join(data_roots)}), so not ranked here")

    # 2. the chart, the training curves and the per-class heatmap
    chart_png = figure_png(rmse_chart(rows))
    baselines = rows.loc[rows["method"].map(is_baseline), "val_rmse"].astype(float).dropna()
    curves, curve_notes = training_curves(rows)
    curves_fig = curves_figure(curves, float(baselines.min()) if len(baselines) else None)
    curves_png = figure_png(curves_fig) if curves_fig is not None else None
    classes = class_scores(rows)
    heatmap = class_heatmap(classes)
    heatmap_png = figure_png(heatmap) if heatmap is not None else None

    # 3. the gallery, from the validation images of the competition the rows were scored on
    gallery_png = None
    gallery = None
    gallery_note = ""
    class_counts: dict[str, int] = {}
    try:
        competition = load_competition(gallery_data(rows, data_root), check_images=False)
    except (CompetitionError, ConfigError) as exc:
        competition = None
        gallery_note = f"no gallery: {exc}"
    if competition is not None:
        class_counts = dict(Counter(r.label for r in competition.val if r.label))
        if not competition.val:
            gallery_note = f"no gallery: {competition.root} has no validation split (data.val_count is 0)"
        elif images:
            gallery = load_gallery(rows, competition, images, predictions_root, progress)
            notes.update(gallery.notes)
            gallery_png = figure_png(gallery_figure(gallery))
            gallery_note = (f"{len(gallery.records)} of the {len(competition.val)} validation images of "
                            f"{competition.root}, the same ones on every run.")

    # 4. write the PNG, then the page
    pngs = [p for p in (chart_png, curves_png, heatmap_png, gallery_png) if p is not None]
    png_path = out.with_suffix(".png")
    write_bytes_atomic(png_path, _stack_png(pngs))

    run_dirs = sorted({str(Path(d).parent) for d in rows["run_dir"].dropna() if isinstance(d, str) and Path(d).exists()})
    page = page_template().render(
        leaderboard=str(leaderboard.path), generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        baselines=sorted(BASELINE_METHODS), notes=notes, headline=headline(rows),
        number_headings=[heading for heading, _ in TABLE_COLUMNS.values()], board=board_rows(rows, out.parent),
        chart=_data_uri(chart_png),
        curves=_data_uri(curves_png) if curves_png is not None else None, curve_notes=curve_notes,
        curve_variants=list(curves), val_rmse_tag=VAL_RMSE_TAG,
        classes=class_columns(classes, class_counts), class_rows=class_rows(classes),
        counts_known=bool(class_counts), min_class_images=MIN_CLASS_IMAGES,
        heatmap=_data_uri(heatmap_png) if heatmap_png is not None else None,
        gallery_note=gallery_note, gallery=gallery_images(gallery) if gallery is not None else [],
        crop_scale=CROP_SCALE, crop_margin=CROP_MARGIN,
        run_dirs=run_dirs, tensorboard=f"{_python()} -m tensorboard.main")
    write_bytes_atomic(out, page.encode("utf-8"))
    return Report(out, png_path, list(rows["variant"]), notes, list(curves))
