"""The competition manifest: layout, bbox CSV spellings, validation split, and every bad input."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.data.competition import CompetitionError, carve_validation, load_competition
from pipeline.data.sample import SOURCES
from tests.conftest import small_data_config


def _boxes_of(competition):
    return {r.image_id: r.boxes for r in competition.test}


def _rewrite_bboxes(root: Path, table: pd.DataFrame) -> None:
    (root / "data/sample/bboxes.csv").unlink()
    table.to_csv(root / "data/sample/boxes.csv", index=False)


def test_sample_layout_and_counts(competition):
    assert len(competition.test) == 4 * 3  # four test photos, three crops each
    assert len(competition.val) == 6
    assert len(competition.train) + len(competition.val) == 8 * 6
    assert competition.classes == sorted({s.label for s in SOURCES})
    for record in competition.test:
        assert len(record.boxes) == 2 and all((b.w, b.h) == (75, 75) for b in record.boxes)
    assert competition.sample_submission is None


def test_no_source_photo_in_both_train_and_test(competition):
    source = lambda image_id: image_id.rsplit("_", 1)[0].split("_", 1)[-1]  # noqa: E731
    train_sources = {source(r.image_id) for r in competition.train + competition.val}
    test_sources = {r.image_id.rsplit("_", 1)[0] for r in competition.test}
    assert train_sources and test_sources and not (train_sources & test_sources)


def test_validation_split_is_fixed_and_disjoint(workspace):
    first = load_competition(small_data_config(workspace))
    second = load_competition(small_data_config(workspace))
    assert [(r.image_id, r.boxes) for r in first.val] == [(r.image_id, r.boxes) for r in second.val]
    assert not {r.image_id for r in first.val} & {r.image_id for r in first.train}
    for record in first.val:
        a, b = record.boxes
        assert not a.overlaps(b)


@pytest.mark.parametrize(
    "columns",
    [
        lambda t: t.rename(columns={"image_id": "filename", "width": "w", "height": "h"}),
        lambda t: t.assign(x2=t.x + 75, y2=t.y + 75).drop(columns=["width", "height"])
        .rename(columns={"x": "x1", "y": "y1", "image_id": "Image"}),
        # corners given inclusive
        lambda t: t.assign(xmax=t.x + 74, ymax=t.y + 74).drop(columns=["width", "height"])
        .rename(columns={"x": "xmin", "y": "ymin"}),
        # image named by its relative path, columns in odd case and spacing
        lambda t: t.assign(image_id=t["class"] + "/" + t.image_id + ".png")
        .rename(columns={"image_id": "Image Path", "x": " X ", "y": "Y"}),
    ],
)
def test_bbox_column_spellings_give_the_same_boxes(workspace, columns):
    reference = _boxes_of(load_competition(small_data_config(workspace)))
    table = pd.read_csv(workspace / "data/sample/bboxes.csv")
    _rewrite_bboxes(workspace, columns(table))
    assert _boxes_of(load_competition(small_data_config(workspace))) == reference


def _break(workspace, edit):
    table = pd.read_csv(workspace / "data/sample/bboxes.csv")
    (workspace / "data/sample/bboxes.csv").write_text(edit(table).to_csv(index=False))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.assign(x=t.x.where(t.index != 3, 200)), r"bboxes.csv: line 5 .*lies outside the 256x256 image"),
        (lambda t: t.assign(width=t.width.where(t.index != 0, 70)), r"line 2 .*box is 70x75, expected 75x75"),
        (lambda t: t.drop(index=5), r"has 1 box\(es\) \(lines \d+\), expected 2"),
        (lambda t: t.assign(image_id=t.image_id.where(t.image_id != t.image_id.iloc[0], "no_such_image")),
         r"line 2: image 'no_such_image' is not among"),
        (lambda t: t.assign(y=t.y.astype(str).where(t.index != 2, "ten")), r"line 4: y='ten' is not an integer"),
        (lambda t: t.drop(columns=["y"]), r"do not name an image and a box"),
        (lambda t: t.drop(columns=["x"]), r"no bbox CSV found .* set data.bbox_csv"),
    ],
)
def test_bad_bbox_csv_rows_are_named(workspace, edit, message):
    _break(workspace, edit)
    with pytest.raises(CompetitionError, match=message):
        load_competition(small_data_config(workspace))


def test_test_image_without_boxes_is_an_error(workspace):
    _break(workspace, lambda t: t[t.image_id != t.image_id.iloc[0]])
    with pytest.raises(CompetitionError, match="test image has no boxes"):
        load_competition(small_data_config(workspace))


def test_image_of_wrong_size_is_named(workspace):
    path = next((workspace / "data/sample/test").rglob("*.png"))
    cv2.imwrite(str(path), np.zeros((200, 256, 3), np.uint8))
    with pytest.raises(CompetitionError, match=rf"{path.name}: is 256x200, expected 256x256"):
        load_competition(small_data_config(workspace))


@pytest.mark.parametrize("folder", ["test", "train"])
def test_undecodable_image_is_named(workspace, folder):
    path = next((workspace / "data/sample" / folder).rglob("*.*g"))
    path.write_bytes(b"not an image at all")
    with pytest.raises(CompetitionError, match=rf"{path.name}: cannot be decoded"):
        load_competition(small_data_config(workspace))


def test_empty_training_folder_is_an_error(workspace):
    for path in (workspace / "data/sample/train").rglob("*.jpg"):
        path.unlink()
    with pytest.raises(CompetitionError, match="no training images"):
        load_competition(small_data_config(workspace))


def test_missing_competition_folder_says_what_to_run(tmp_path):
    with pytest.raises(CompetitionError, match="make sample"):
        load_competition(small_data_config(tmp_path))


def test_one_image_named_two_ways_is_counted_once(workspace):
    """camera_000 twice and camera_000.png twice are four boxes of one image, not two each."""
    table = pd.read_csv(workspace / "data/sample/bboxes.csv")
    first = table.image_id.iloc[0]
    extra = table[table.image_id == first].assign(image_id=first + ".png")
    _break(workspace, lambda t: pd.concat([t, extra]))
    with pytest.raises(CompetitionError, match=rf"'{first}.png' has 4 box\(es\) \(lines 2, 3, \d+, \d+\)"):
        load_competition(small_data_config(workspace))


def test_repeated_box_index_is_named(workspace):
    _break(workspace, lambda t: t.assign(box=0))
    with pytest.raises(CompetitionError, match=r"line 3: image '.*' has box index 0 twice"):
        load_competition(small_data_config(workspace))


def test_windows_paths_bom_and_crlf_are_read(workspace):
    reference = _boxes_of(load_competition(small_data_config(workspace)))
    table = pd.read_csv(workspace / "data/sample/bboxes.csv")
    table["image_id"] = table["class"] + "\\" + table.image_id + ".png"
    text = table.to_csv(index=False, lineterminator="\r\n")
    (workspace / "data/sample/bboxes.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert _boxes_of(load_competition(small_data_config(workspace))) == reference


def test_comma_in_a_test_image_name_is_refused(workspace):
    path = next((workspace / "data/sample/test").rglob("*.png"))
    path.rename(path.with_name("a,b.png"))
    _break(workspace, lambda t: t.assign(image_id=t.image_id.replace(path.stem, "a,b")))
    with pytest.raises(CompetitionError, match="a,b.png: a comma, quote or line break"):
        load_competition(small_data_config(workspace))


def test_colliding_training_ids_are_named(workspace):
    cat = workspace / "data/sample/train/cat"
    photo = next(cat.glob("*.jpg"))
    (cat / (photo.stem + ".png")).write_bytes(photo.read_bytes())
    with pytest.raises(CompetitionError, match=rf"both get the id 'cat_{photo.stem}'"):
        load_competition(small_data_config(workspace))


def test_sample_submission_found_under_kaggle_spellings(workspace):
    (workspace / "data/sample/sampleSubmission.csv").write_text("Id,Predicted\n")
    assert load_competition(small_data_config(workspace)).sample_submission.name == "sampleSubmission.csv"
    (workspace / "data/sample/sample_submission.csv").write_text("Id,Predicted\n")
    with pytest.raises(CompetitionError, match="several sample submissions"):
        load_competition(small_data_config(workspace))


def test_validation_boxes_that_cannot_fit_are_named(competition):
    cfg = small_data_config(Path("."))
    cfg.boxes_per_image = 40
    with pytest.raises(CompetitionError, match="lower data.boxes_per_image"):
        carve_validation(competition.train, cfg)
