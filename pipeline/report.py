"""The comparison report: every variant on the leaderboard (or a chosen few) side by side.

    submissions/report.html   self-contained (images inlined as data URIs): the leaderboard table
                              (local RMSE, PSNR, SSIM, Kaggle public score, time per image,
                              config), the RMSE chart with the baselines marked, per-class RMSE,
                              the gallery, and links to TensorBoard runs
    submissions/report.png    the chart, the per-class heatmap and the gallery in one image

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
from matplotlib.patches import Patch, Rectangle
from tqdm import tqdm

from pipeline.config import ConfigError, DataConfig, data_config, variant_from_dict
from pipeline.data.boxes import apply_mask, box_pixels, boxes_mask
from pipeline.data.competition import Competition, CompetitionError, ImageRecord, load_competition, read_image
from pipeline.data.predictions import PREDICTIONS_DIR, prediction_dir
from pipeline.files import write_bytes_atomic
from pipeline.leaderboard import BASELINE_METHODS, Leaderboard, is_baseline
from pipeline.next_step import NextStep
from pipeline.score import rmse, split_fingerprint, truth_path

REPORT_PATH = Path("submissions/report.html")
GALLERY_IMAGES = 6
# the data fields that decide which validation images and boxes a prediction folder holds
BASELINE_COLOR, VARIANT_COLOR, BOX_COLOR = "#9e9e9e", "#1f77b4", "#ffd400"

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


def _show(ax, image: np.ndarray, boxes) -> None:
    ax.imshow(image, interpolation="nearest")
    for box in boxes:
        ax.add_patch(Rectangle((box.x - 0.5, box.y - 0.5), box.w, box.h, fill=False,
                               edgecolor=BOX_COLOR, linewidth=1.2))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def gallery_figure(gallery: Gallery, cell: float = 2.1) -> Figure:
    """One row per gallery image: masked input, ground truth, then each variant (boxes outlined,
    the box RMSE of that image below; the row's best in bold)."""
    variants = list(gallery.predictions)
    columns = ["masked input", "ground truth"] + variants
    rows = max(len(gallery.records), 1)
    fig = Figure(figsize=(cell * len(columns), cell * rows + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, len(columns), squeeze=False))
    for i, record in enumerate(gallery.records):
        scores = {v: gallery.box_rmse(v, i) for v in variants}
        known = [s for s in scores.values() if s is not None]
        best = min(known) if known else None
        _show(axes[i, 0], gallery.masked[i], record.boxes)
        axes[i, 0].set_ylabel(f"{record.image_id}\n({record.label or 'no class'})", fontsize=8)
        _show(axes[i, 1], gallery.truth[i], record.boxes)
        for j, name in enumerate(variants, start=2):
            ax = axes[i, j]
            images = gallery.predictions[name]
            if images is None:
                ax.set_facecolor("#eeeeee")
                ax.text(0.5, 0.5, "no predictions\n(see the report notes)", ha="center", va="center",
                        fontsize=8, color="#555555", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            _show(ax, images[i], record.boxes)
            ax.set_xlabel(f"RMSE {scores[name]:.4f}", fontsize=8,
                          fontweight="bold" if scores[name] == best else "normal")
    for j, title in enumerate(columns):
        baseline = j >= 2 and is_baseline(gallery.methods.get(title, ""))
        axes[0, j].set_title(title + ("\n(baseline)" if baseline else ""), fontsize=9)
    if not gallery.records:
        axes[0, 0].text(0.5, 0.5, "no validation images", ha="center", va="center")
    fig.suptitle("Validation gallery: boxes outlined; box RMSE of each image below (best in bold)", fontsize=10)
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
    """One variant's row of the leaderboard table. run_href: the TensorBoard run folder relative
    to the report's folder, None when run_dir is not found (or not given)."""

    variant: str
    method: str
    baseline: bool
    description: str
    numbers: list[NumberCell]
    config: str
    config_json: str
    submitted_at: str
    run_dir: str
    run_href: str | None


def board_rows(rows: pd.DataFrame, out_dir: Path) -> list[BoardRow]:
    """The leaderboard table's rows, in `rows`' order; links are made relative to `out_dir`."""
    board = []
    for _, row in rows.iterrows():
        run_dir = row.get("run_dir")
        run_dir = run_dir if isinstance(run_dir, str) else ""
        run_href = None
        if run_dir and Path(run_dir).exists():
            run_href = Path(os.path.relpath(Path(run_dir).resolve(), out_dir.resolve())).as_posix()
        description = row.get("description")
        board.append(BoardRow(
            variant=row["variant"], method=row["method"], baseline=is_baseline(row["method"]),
            description=description if isinstance(description, str) else "",
            numbers=[_number(row[column], fmt, column) for column, (_, fmt) in TABLE_COLUMNS.items()],
            config=config_summary(row), config_json=json.dumps(_json(row.get("config")), sort_keys=True),
            submitted_at=str(row["submitted_at"]), run_dir=run_dir, run_href=run_href))
    return board


@dataclass(frozen=True)
class ClassRow:
    variant: str
    numbers: list[NumberCell]


def class_rows(table: pd.DataFrame) -> list[ClassRow]:
    """The per-class table's rows (from `class_scores`), each class's best score marked."""
    best = table.min(axis=0)
    return [ClassRow(str(variant), [_number(value, "{:.4f}", f"class:{label}",
                                            best=bool(np.isfinite(value) and value == best[label]))
                                    for label, value in scores.items()])
            for variant, scores in table.iterrows()]


def page_template() -> Template:
    """The report page, templates/report.html.j2 inside the package; it escapes every value."""
    # StrictUndefined: a name the template expects but build_report left out fails here, not silently
    environment = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)
    return environment.get_template("report.html.j2")


@dataclass
class Report:
    html: Path
    png: Path
    variants: list[str]
    notes: dict[str, str]


def build_report(leaderboard: Leaderboard, out: Path = REPORT_PATH, variants: Sequence[str] | None = None,
                 images: int = GALLERY_IMAGES, data_root: str | Path | None = None,
                 predictions_root: Path = PREDICTIONS_DIR, progress: bool = True) -> Report:
    """Write the HTML report to `out` and the PNG beside it (same name, .png); both atomically.

    variants: leaderboard variant names to include (None: all). images: gallery rows.
    data_root: the competition whose validation images the gallery shows (default: the one the
    best variant was scored on).
    """
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

    chart_png = figure_png(rmse_chart(rows))
    classes = class_scores(rows)
    heatmap = class_heatmap(classes)
    heatmap_png = figure_png(heatmap) if heatmap is not None else None
    gallery_png = None
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

    pngs = [p for p in (chart_png, heatmap_png, gallery_png) if p is not None]
    png_path = out.with_suffix(".png")
    write_bytes_atomic(png_path, _stack_png(pngs))

    run_dirs = sorted({str(Path(d).parent) for d in rows["run_dir"].dropna() if isinstance(d, str) and Path(d).exists()})
    page = page_template().render(
        leaderboard=str(leaderboard.path), generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        baselines=sorted(BASELINE_METHODS), notes=notes,
        number_headings=[heading for heading, _ in TABLE_COLUMNS.values()], board=board_rows(rows, out.parent),
        chart=_data_uri(chart_png),
        classes=[(label, class_counts.get(label)) for label in classes.columns], class_rows=class_rows(classes),
        heatmap=_data_uri(heatmap_png) if heatmap_png is not None else None,
        gallery_note=gallery_note, gallery=_data_uri(gallery_png) if gallery_png is not None else None,
        run_dirs=run_dirs)
    write_bytes_atomic(out, page.encode("utf-8"))
    return Report(out, png_path, list(rows["variant"]), notes)
