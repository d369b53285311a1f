"""Duplicates and the nearest variant, on the small sample's planted copies (pipeline/data/sample.py:
training photos again in the test set, exact, re-encoded, flipped, rotated, resized, shifted and
recoloured)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main as cli
from pipeline.data.boxes import box_pixels
from pipeline.data.competition import load_competition, read_image
from pipeline.data.sample import COPIES_FILE
from pipeline.duplicates import COPY_RMSE, d4, d4_inverse, find_duplicates, load, save
from pipeline.data.predictions import prediction_dir
from pipeline.predict import predict_split
from pipeline.score import truth_boxes
from tests.conftest import small_data_config, variant


@pytest.fixture(scope="module")
def searched(sample_template, tmp_path_factory):
    """A workspace of its own with the small sample, its competition and one search of it."""
    root = tmp_path_factory.mktemp("duplicates")
    shutil.copytree(sample_template / "data", root / "data")
    competition = load_competition(small_data_config(root))
    result = find_duplicates(competition, progress=False)
    save(result, competition, root / "data/predictions")  # where the nearest variant looks, from root
    copies = pd.read_csv(root / "data/sample-truth" / COPIES_FILE)
    return root, competition, result, copies


def test_d4_inverse_undoes_each_transform():
    image = np.arange(4 * 5 * 3).reshape(4, 5, 3)
    for k in range(8):
        assert np.array_equal(d4_inverse(d4(image, k), k), image)
    assert np.array_equal(d4(image, 4), image[:, ::-1]) and np.array_equal(d4(image, 1), np.rot90(image))


def test_every_planted_copy_is_found_with_its_transform(searched):
    _, _, result, copies = searched
    assert len(copies) == 6 and set(copies["kind"]) == {"exact", "jpeg", "flip", "rot90", "resize", "shift-colour"}
    for copy in copies.itertuples():
        matches = result.matches["test"][copy.test_image]
        assert matches[0].rmse <= COPY_RMSE, (copy.kind, matches[0])
        # the photo it came from is among the matches, under the threshold, with the right flip/rotation
        # (an overlapping crop of the same scene may rank first: the sample's crops overlap)
        source = next((m for m in matches if m.photo_id == copy.photo), None)
        assert source is not None, (copy.kind, [m.photo_id for m in matches])
        assert source.rmse <= COPY_RMSE and source.transform == copy.transform, (copy.kind, source)
        if copy.kind == "resize":  # 266/256 larger: a query pixel reads the photo at 1/1.039
            assert source.scale == pytest.approx(256 / 266, abs=0.01)
        if copy.kind == "shift-colour":  # 0.9 x + 12
            assert source.scale == pytest.approx(256 / 261, abs=0.01)
            assert np.allclose(source.gain, 0.9, atol=0.05) and np.allclose(source.offset, 12, atol=4)
        if copy.kind in ("exact", "rot90"):
            assert source.scale == pytest.approx(1, abs=0.005) and np.abs(source.shift).max() < 0.5


def test_images_of_photos_never_in_training_match_nothing(searched):
    _, competition, result, copies = searched
    planted = set(copies["test_image"])
    originals = [r.image_id for r in competition.test if r.image_id not in planted]
    best = {i: result.best("test", i).rmse for i in originals}
    assert min(best.values()) > 1.2 * COPY_RMSE, sorted(best.items(), key=lambda t: t[1])[:3]


def test_a_validation_image_never_matches_the_hold_out(searched):
    _, competition, result, _ = searched
    held_out = {r.image_id for r in competition.val}
    for image_id, matches in result.matches["val"].items():
        assert matches and not {m.photo_id for m in matches} & held_out


def test_the_saved_matches_are_refused_once_the_photos_change(searched, tmp_path):
    root, competition, result, _ = searched
    save(result, competition, tmp_path)
    again = load(competition, tmp_path)
    assert again is not None and again.matches == result.matches
    photo = competition.train[0].path
    stat = photo.stat()
    try:
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a re-downloaded photo
        assert load(competition, tmp_path) is None
    finally:
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (path := next(tmp_path.rglob("duplicates.json"))).write_text(path.read_text()[:100])
    assert load(competition, tmp_path) is None  # damaged: searched again, never trusted


def test_nearest_fills_copies_from_training_and_leaves_the_rest_to_telea(searched, monkeypatch):
    root, competition, result, copies = searched
    monkeypatch.chdir(root)
    nearest, telea = variant("nearest", root), variant("telea", root)
    runs = {v.name: predict_split(v, competition, "test", progress=False) for v in (nearest, telea)}
    assert "test 12 of" in nearest.description  # 6 copies, 2 boxes each: the row says so
    planted = set(copies["test_image"])
    records = competition.test
    truth = truth_boxes(competition, records).astype(float)
    for i, record in enumerate(records):
        files = [prediction_dir(name, "test", competition) / f"{record.image_id}.png" for name in runs]
        if record.image_id not in planted:  # no copy: telea's prediction, byte for byte
            assert files[0].read_bytes() == files[1].read_bytes(), record.image_id
            continue
        rmse = [np.sqrt(((box_pixels(read_image(f), record.boxes) - truth[i]) ** 2).mean()) / 255 for f in files]
        assert rmse[0] < 0.05 and rmse[0] < rmse[1] / 3, (record.image_id, rmse)


def test_make_duplicates_writes_the_table_the_page_and_the_file(searched, monkeypatch, capsys):
    root, _, _, copies = searched
    monkeypatch.chdir(root)
    assert cli(["duplicates", "--data", "data/sample", "--rows", "100", "--pairs", "8"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in copies["test_image"])
    page = (root / "submissions/duplicates.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 8 * 4 and not list((root / "submissions").glob(".*tmp"))
    saved = json.loads(next((root / "data/predictions").rglob("duplicates.json")).read_text())
    assert set(saved["matches"]) == {"val", "test"} and saved["fingerprints"]["pool"]
    assert cli(["duplicates", "--data", "data/sample", "--rows", "1"]) == 0
    assert "current, reused" in capsys.readouterr().out


def test_nearest_refuses_a_nearest_fallback_and_a_bad_threshold(tmp_path):
    from pipeline.config import ConfigError
    from pipeline.inpainters.base import check_params

    with pytest.raises(ConfigError, match="itself a nearest variant"):
        check_params(variant("nearest", tmp_path, fallback="nearest"))
    with pytest.raises(ConfigError, match="max_known_rmse"):
        check_params(variant("nearest", tmp_path, max_known_rmse=3))
    with pytest.raises(ConfigError, match="fallback"):
        check_params(variant("nearest", tmp_path, fallback="no-such-variant"))
    check_params(variant("nearest", tmp_path, fallback="mean"))
