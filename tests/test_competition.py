"""The competition manifest: both layouts, bbox CSV shapes and spellings, the validation split,
and every bad input."""

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from pipeline.config import data_config
from pipeline.data.competition import CompetitionError, carve_validation, load_competition, read_image
from pipeline.data.sample import PLANTED, SOURCES
from tests.conftest import small_data_config

DATASET = Path("data/sample/Dataset")


def _boxes_of(competition):
    return {r.image_id: r.boxes for r in competition.test}


# ---------------------------------------------------------------------------------------------
# Photo Reconstruction's layout (the sample)


def test_sample_is_in_the_real_layout(competition):
    assert competition.layout == "photo-reconstruction"
    # four test photos, three crops each, one shared stem, and the planted copies of training photos
    assert len(competition.test) == 4 * 3 + 1 + len(PLANTED)
    assert len(competition.val) == 6
    assert len(competition.train) + len(competition.val) == 8 * 6
    assert competition.classes == sorted({s.label for s in SOURCES if s.split == "train"})
    names = [r.image_id for r in competition.test]
    assert len(set(names)) == len(names) and all(Path(n).suffix in (".jpg", ".jpeg", ".png") for n in names)
    stems = [Path(n).stem for n in names]
    assert len(set(stems)) == len(stems) - 1, "one stem comes with two extensions, as in the real test set"
    assert all(" (" in n for n in names)
    for record in competition.test:
        assert len(record.boxes) == 2 and all((b.w, b.h) == (75, 75) for b in record.boxes)
        assert record.label == record.image_id.split(" ")[0].split("-")[0]  # class from the name
    assert competition.sample_submission is None


def test_test_boxes_come_from_the_wide_csv_in_image_coordinates(competition, workspace):
    info = pd.read_csv(workspace / DATASET / "Testing_Data/masked_info.csv", index_col=0)
    assert list(info.columns) == ["filename", "box1_row", "box1_col", "box2_row", "box2_col"]
    boxes = _boxes_of(competition)
    for row in info.itertuples():
        (a, b) = boxes[row.filename]
        assert (a.y, a.x, b.y, b.x) == (row.box1_row, row.box1_col, row.box2_row, row.box2_col)
        masked = read_image(workspace / DATASET / "Testing_Data" / row.filename)
        assert masked[a.slices].mean() < 12 and masked[b.slices].mean() < 12  # blacked out (JPEG noise)


def test_validation_pairs_keep_their_given_boxes_and_masked_inputs(competition, workspace):
    for record in competition.val:
        assert record.masked_path is not None and record.masked_path.parent.name == "Masked_Train"
        assert record.path.parent.name == "Unmasked_Train" and record.path.name == record.masked_path.name
        info = pd.read_csv(record.masked_path.parent / "masked_info.csv", index_col=0).set_index("filename")
        given = info.loc[record.path.name]
        assert [(b.y, b.x) for b in record.boxes] == [(given.box1_row, given.box1_col), (given.box2_row, given.box2_col)]
    for record in competition.train:
        assert record.boxes == () and record.masked_path is None and record.path.parent.name == "Unmasked_Train"
    clean = load_competition(data_config({**vars(small_data_config(workspace)), "val_inputs": "clean"}))
    assert [r.boxes for r in clean.val] == [r.boxes for r in competition.val]
    assert all(r.masked_path is None and r.input_path == r.path for r in clean.val)


def test_dataset_folder_is_found_below_the_download_folder(workspace):
    nested = workspace / "data/raw/photo-reconstruction/photo-reconstruction"
    nested.mkdir(parents=True)
    shutil.move(str(workspace / DATASET), nested / "Dataset")
    cfg = data_config({"root": workspace / "data/raw/photo-reconstruction", "truth": None, "val_count": 6})
    found = load_competition(cfg)
    assert found.layout == "photo-reconstruction" and len(found.test) == 13 + len(PLANTED)


def test_validation_split_is_fixed_and_disjoint(workspace):
    first = load_competition(small_data_config(workspace))
    second = load_competition(small_data_config(workspace))
    assert [(r.image_id, r.boxes) for r in first.val] == [(r.image_id, r.boxes) for r in second.val]
    assert not {r.image_id for r in first.val} & {r.image_id for r in first.train}


def _class_dir(workspace) -> Path:
    return workspace / DATASET / "Training_Data/Cat"


@pytest.mark.parametrize("side, other", [("Unmasked_Train", "Masked_Train"), ("Masked_Train", "Unmasked_Train")])
def test_a_training_photo_without_its_twin_is_named(workspace, side, other):
    photo = next((_class_dir(workspace) / other).glob("*.*g"))
    photo.unlink()
    with pytest.raises(CompetitionError, match=rf"{side}/{photo.name.replace('(', '.').replace(')', '.')}: has no twin"):
        load_competition(small_data_config(workspace))


def _edit_info(path: Path, edit) -> None:
    table = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    table.index = table.index.astype(int)
    edit(table).to_csv(path)


@pytest.mark.parametrize(
    "where, edit, message",
    [
        ("test", lambda t: t.assign(box1_row=t.box1_row.where(t.index != 3, "200")),
         r"masked_info.csv: line 5 .*lies outside the 256x256 image"),
        ("test", lambda t: t.assign(box2_col=t.box2_col.where(t.index != 0, "ten")), r"line 2: box2_col='ten' is not an integer"),
        ("test", lambda t: t.assign(filename=t.filename.where(t.index != 1, "Tiger (9).jpeg")),
         r"line 3: image 'Tiger \(9\).jpeg' is not among"),
        ("test", lambda t: t.drop(index=2), r"test image has no boxes"),
        ("train", lambda t: t.assign(filename=t.filename.where(t.index != 0, "Cat (99).jpg")),
         r"Masked_Train/masked_info.csv: line 2: image 'Cat \(99\).jpg' is not in"),
        ("train", lambda t: t.assign(box1_col=t.box1_col.where(t.index != 1, "")), r"line 3: box1_col='' is empty"),
    ],
)
def test_bad_masked_info_rows_are_named(workspace, where, edit, message):
    path = (workspace / DATASET / "Testing_Data/masked_info.csv" if where == "test"
            else _class_dir(workspace) / "Masked_Train/masked_info.csv")
    _edit_info(path, edit)
    with pytest.raises(CompetitionError, match=message):
        load_competition(small_data_config(workspace))


def test_wide_csv_spellings_x_y_and_any_box_count(workspace):
    path = workspace / DATASET / "Testing_Data/masked_info.csv"
    reference = _boxes_of(load_competition(small_data_config(workspace)))
    table = pd.read_csv(path, index_col=0)
    table.rename(columns={"box1_row": "Box1_Y", "box1_col": "box1 x", "box2_row": "box2_y", "box2_col": "box2_x"}).to_csv(path)
    assert _boxes_of(load_competition(small_data_config(workspace))) == reference
    # a third box column set: three boxes per image, numbered in k order
    table.assign(box3_row=0, box3_col=0).to_csv(path)
    cfg = data_config({**vars(small_data_config(workspace)), "boxes_per_image": 3})
    with pytest.raises(CompetitionError, match=r"'Cat.*' has 2 box\(es\), expected 3"):
        load_competition(cfg)  # the training boxes still have two: named, with the file


def test_label_pattern_reads_the_class_from_a_flat_folder(workspace):
    cfg = data_config({**vars(small_data_config(workspace)), "label_pattern": r"\((?P<label>\d+)\)"})
    labels = {r.image_id: r.label for r in load_competition(cfg).test}
    assert all(label == name.split("(")[1].split(")")[0] for name, label in labels.items())


# ---------------------------------------------------------------------------------------------
# The generic layout: train/<class>/ + test/ + a bbox CSV, one row per box


def _rewrite_bboxes(cfg, table: pd.DataFrame) -> None:
    (cfg.root / "bboxes.csv").unlink()
    table.to_csv(cfg.root / "boxes.csv", index=False)


def test_generic_layout_keeps_working(generic):
    found = load_competition(generic)
    assert found.layout == "generic"
    assert len(found.test) == 13 + len(PLANTED) and len(found.val) == 6 and len(found.train) == 42
    assert all(r.label and r.image_id.startswith(r.label) for r in found.test)


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
        lambda t: t.assign(image_id=t["class"] + "/" + t.image_id)
        .rename(columns={"image_id": "Image Path", "x": " X ", "y": "Y"}),
        # wide: one row per image, pandas' index column first
        lambda t: t.pivot_table(index="image_id", columns="box", values=["x", "y"]).pipe(
            lambda w: pd.DataFrame({"filename": w.index, "box1_row": w[("y", 0)].values, "box1_col": w[("x", 0)].values,
                                    "box2_row": w[("y", 1)].values, "box2_col": w[("x", 1)].values})).reset_index(drop=True)
        .reset_index(),
    ],
)
def test_bbox_column_spellings_give_the_same_boxes(generic, columns):
    reference = _boxes_of(load_competition(generic))
    table = pd.read_csv(generic.root / "bboxes.csv")
    _rewrite_bboxes(generic, columns(table))
    assert _boxes_of(load_competition(generic)) == reference


def _break(cfg, edit):
    table = pd.read_csv(cfg.root / "bboxes.csv")
    (cfg.root / "bboxes.csv").write_text(edit(table).to_csv(index=False))


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
        (lambda t: t.drop(columns=["x"]), r"no bbox CSV found .*header \['image_id'.* set data.bbox_csv"),
    ],
)
def test_bad_bbox_csv_rows_are_named(generic, edit, message):
    _break(generic, edit)
    with pytest.raises(CompetitionError, match=message):
        load_competition(generic)


@pytest.mark.parametrize("text, message", [
    ("", r"bboxes.csv: EmptyDataError"),
    ("image_id;x;y;width;height\nx.png;1;1;75;75\n", r"bboxes.csv: header \['image_id;x;y;width;height'\]"),
])
def test_empty_or_semicolon_bbox_csv_says_what_is_wrong(generic, text, message):
    (generic.root / "bboxes.csv").write_text(text)
    with pytest.raises(CompetitionError, match=message):
        load_competition(generic)


def test_test_image_without_boxes_is_an_error(generic):
    _break(generic, lambda t: t[t.image_id != t.image_id.iloc[0]])
    with pytest.raises(CompetitionError, match="test image has no boxes"):
        load_competition(generic)


def test_image_of_wrong_size_is_named(generic):
    path = next((generic.root / "test").rglob("*.png"))
    cv2.imwrite(str(path), np.zeros((200, 256, 3), np.uint8))
    with pytest.raises(CompetitionError, match=rf"{path.name.replace('(', '.').replace(')', '.')}: is 256x200"):
        load_competition(generic)


@pytest.mark.parametrize("folder", ["test", "train"])
def test_undecodable_image_is_named(generic, folder):
    path = next((generic.root / folder).rglob("*.*g"))
    path.write_bytes(b"not an image at all")
    with pytest.raises(CompetitionError, match=r"cannot be decoded"):
        load_competition(generic)


def test_empty_training_folder_is_an_error(generic):
    for path in (generic.root / "train").rglob("*.*g"):
        path.unlink()
    with pytest.raises(CompetitionError, match="no training images"):
        load_competition(generic)


def test_missing_competition_folder_says_what_to_do(tmp_path):
    with pytest.raises(CompetitionError, match="competition folder not found; build the offline sample or download"):
        load_competition(small_data_config(tmp_path))


def test_one_image_named_two_ways_is_counted_once(generic):
    """An image named by its file name twice and by its path twice has four boxes, not two each."""
    table = pd.read_csv(generic.root / "bboxes.csv")
    first = table.image_id.iloc[0]
    extra = table[table.image_id == first].assign(image_id=table["class"].iloc[0] + "/" + first)
    _break(generic, lambda t: pd.concat([t, extra]))
    pattern = first.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(CompetitionError, match=rf"'{pattern}' has 4 box\(es\) \(lines 2, 3, \d+, \d+\)"):
        load_competition(generic)


def test_repeated_box_index_is_named(generic):
    _break(generic, lambda t: t.assign(box=0))
    with pytest.raises(CompetitionError, match=r"line 3: image '.*' has box index 0 twice"):
        load_competition(generic)


def test_windows_paths_bom_and_crlf_are_read(generic):
    reference = _boxes_of(load_competition(generic))
    table = pd.read_csv(generic.root / "bboxes.csv")
    table["image_id"] = table["class"] + "\\" + table.image_id
    text = table.to_csv(index=False, lineterminator="\r\n")
    (generic.root / "bboxes.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert _boxes_of(load_competition(generic)) == reference


def test_comma_in_a_test_image_name_is_refused(generic):
    path = next((generic.root / "test").rglob("*.png"))
    path.rename(path.with_name("a,b.png"))
    _break(generic, lambda t: t.assign(image_id=t.image_id.replace(path.name, "a,b.png")))
    with pytest.raises(CompetitionError, match="a,b.png: a comma, quote or line break"):
        load_competition(generic)


def test_two_test_images_of_one_name_in_two_folders_are_refused(generic):
    path = next((generic.root / "test").rglob("*.png"))
    other = generic.root / "test" / "Elsewhere" / path.name
    other.parent.mkdir()
    shutil.copy(path, other)
    _break(generic, lambda t: pd.concat([t, t[t.image_id == path.name].assign(image_id="Elsewhere/" + path.name)]))
    with pytest.raises(CompetitionError, match="two test images share the name"):
        load_competition(generic)


def test_sample_submission_found_under_kaggle_spellings(generic):
    (generic.root / "sampleSubmission.csv").write_text("Id,Predicted\n")
    assert load_competition(generic).sample_submission.name == "sampleSubmission.csv"
    (generic.root / "sample_submission.csv").write_text("Id,Predicted\n")
    with pytest.raises(CompetitionError, match="several sample submissions"):
        load_competition(generic)


def test_validation_boxes_that_cannot_fit_are_named(generic):
    cfg = data_config({**vars(generic), "boxes_per_image": 40})
    with pytest.raises(CompetitionError, match="lower data.boxes_per_image"):
        carve_validation(load_competition(generic).train, cfg)


# ---------------------------------------------------------------------------------------------
# The boxes must sit on the masked images' blacked-out pixels


def _swap_box1(table: pd.DataFrame) -> pd.DataFrame:
    """The header of box 1 with row and column swapped, as a hand-edited CSV might have it."""
    return table.rename(columns={"box1_row": "box1_col", "box1_col": "box1_row"})


@pytest.mark.parametrize("where", ["Testing_Data/masked_info.csv", "Training_Data/Cat/Masked_Train/masked_info.csv"])
def test_boxes_with_rows_and_columns_swapped_are_refused_naming_the_swap(workspace, where):
    path = workspace / DATASET / where
    _edit_info(path, _swap_box1)
    with pytest.raises(CompetitionError) as caught:
        load_competition(small_data_config(workspace))
    message = str(caught.value)
    assert "do not sit on the blacked-out pixels" in message
    assert f"{path.parent}/" in message and ": box 1 at x=" in message  # the image and the box
    assert "fit it with rows and columns swapped" in message
    assert f"every one fits with rows and columns swapped: {path} gives x and y the other way round" in message


def test_a_shifted_box_is_refused_naming_the_file_and_box(workspace):
    path = workspace / DATASET / "Testing_Data/masked_info.csv"
    table = pd.read_csv(path, index_col=0)
    for index, row in table.iterrows():  # a box moved 40 px right onto bright pixels
        image = read_image(path.parent / row.filename)
        x, y = row.box2_col + 40, row.box2_row
        if x + 75 <= 256 and image[y : y + 75, row.box2_col + 75 : x + 75].min(axis=2).mean() > 80:
            break
    else:
        pytest.fail("no test box of the sample can move 40 px right onto bright pixels")
    _edit_info(path, lambda t: t.assign(box2_col=t.box2_col.where(t.index != index, str(x))))
    name = re.escape(str(path.parent / row.filename))
    with pytest.raises(CompetitionError, match=rf"1 of \d+ boxes do not sit .*\n  {name}: box 2 at x={x} y={y} "
                                               rf"\(masked_info.csv line {index + 2}\) is \d+% near-black"):
        load_competition(small_data_config(workspace))


def test_a_dark_photo_and_a_box_moved_inside_its_dark_area_are_accepted(workspace):
    """A box counts as on its hole when it is near-black, whatever the photo around it: a dark
    photo (a black cat) is never refused, and a misplaced box there cannot be told apart."""
    folder = workspace / DATASET / "Testing_Data"
    first = pd.read_csv(folder / "masked_info.csv", index_col=0).iloc[0]
    dark = (read_image(folder / first.filename) // 6).astype(np.uint8)  # every pixel <= 42
    cv2.imwrite(str(folder / first.filename), cv2.cvtColor(dark, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert len(load_competition(small_data_config(workspace)).test) == 13 + len(PLANTED)
    moved = first.box1_col + 40 if first.box1_col + 40 <= 181 else first.box1_col - 40
    _edit_info(folder / "masked_info.csv", lambda t: t.assign(box1_col=t.box1_col.where(t.index != 0, str(moved))))
    record = next(r for r in load_competition(small_data_config(workspace)).test if r.image_id == first.filename)
    assert record.boxes[0].x == moved


def test_generic_layout_boxes_with_x_and_y_swapped_are_refused(generic):
    _break(generic, lambda t: t.rename(columns={"x": "y", "y": "x"}))
    with pytest.raises(CompetitionError, match=r"bboxes.csv gives x and y the other way round"):
        load_competition(generic)
