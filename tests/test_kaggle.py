"""pipeline.kaggle and pipeline.data.download against the real kaggle/kagglesdk client, talking to a local stand-in server.

Nothing here may reach kaggle.com: name lookups of any host but localhost raise, HOME and the
Kaggle config folder point into tmp_path, and the client's LOCALHOST endpoint is the stand-in.
"""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import pytest

from pipeline import kaggle as kg
from pipeline.data.download import download_competition

SLUG = "photo-reconstruction"
PNG_BYTES = b"\x89PNG\r\n\x1a\n fake image"
BBOXES_CSV = b"image,x,y,w,h\ntrain/cat/a.png,1,2,3,4\n"
MASK_BYTES = b"\x89PNG\r\n\x1a\n fake mask"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _competition_zip() -> bytes:
    """What Kaggle serves for the competition: files, a folder, and a zip inside the zip."""
    return _zip(
        {
            "train/cat/a.png": PNG_BYTES,
            "bboxes.csv": BBOXES_CSV,
            "masks.zip": _zip({"masks/m.png": MASK_BYTES}),
        }
    )


@pytest.fixture(autouse=True)
def _stay_offline(offline):
    """Every test here fails if it tries to resolve a host other than this machine."""


@pytest.fixture
def standin(standin):
    """The stand-in serving this file's competition zip."""
    standin.state.data_zip = _competition_zip()
    return standin


def _files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------
# download_competition


def test_download_unzips_everything_into_dest(standin, tmp_path):
    dest = tmp_path / "data" / "raw" / SLUG

    assert download_competition(SLUG, dest) == dest

    assert _files_under(dest) == {
        "train/cat/a.png": PNG_BYTES,
        "bboxes.csv": BBOXES_CSV,
        "masks/m.png": MASK_BYTES,
    }
    assert sorted(p.name for p in dest.parent.iterdir()) == [SLUG]  # no temp folder left beside it
    assert standin.call_names() == ["DownloadDataFiles", "GET /blobs"]
    download = standin.state.calls[0]
    assert download.body == {"competitionName": SLUG}
    assert download.authorization == "Basic " + base64.b64encode(b"tester:secret-key").decode()


def test_download_skips_filled_dest_unless_forced(standin, tmp_path, capsys):
    dest = tmp_path / "raw" / SLUG
    download_competition(SLUG, dest)
    calls_after_first = len(standin.state.calls)
    (dest / "stale.txt").write_text("from an older download")
    capsys.readouterr()

    assert download_competition(SLUG, dest) == dest
    assert len(standin.state.calls) == calls_after_first  # no request at all
    assert "not downloading" in capsys.readouterr().err
    assert (dest / "stale.txt").exists()

    download_competition(SLUG, dest, force=True)
    assert len(standin.state.calls) > calls_after_first
    assert not (dest / "stale.txt").exists()  # force replaces, it does not merge
    assert (dest / "bboxes.csv").read_bytes() == BBOXES_CSV


def test_failed_download_leaves_dest_untouched(standin, tmp_path):
    standin.state.data_zip = b"this is not a zip"
    fresh = tmp_path / "raw" / "fresh"
    with pytest.raises(kg.KaggleError, match="not a valid zip"):
        download_competition(SLUG, fresh)
    assert not fresh.exists()

    a_file = tmp_path / "raw" / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(kg.KaggleError, match="not a folder"):
        download_competition(SLUG, a_file, force=True)
    assert a_file.read_text() == "not a folder"
    a_file.unlink()

    kept = tmp_path / "raw" / "kept"
    kept.mkdir()
    (kept / "old.csv").write_text("old data")
    with pytest.raises(kg.KaggleError):
        download_competition(SLUG, kept, force=True)
    assert _files_under(kept) == {"old.csv": b"old data"}
    assert sorted(p.name for p in kept.parent.iterdir()) == ["kept"]  # temp folders cleaned up


# ---------------------------------------------------------------------------------------------
# credentials


def test_missing_credentials_say_how_to_provide_them(home):
    with pytest.raises(kg.KaggleError) as excinfo:
        kg.check_credentials()
    message = str(excinfo.value)
    for advice in ("kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "https://www.kaggle.com/settings", "chmod 600"):
        assert advice in message


def test_download_without_credentials_fails_before_any_request(standin, monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(kg.KaggleError, match="kaggle.json") as excinfo:
        download_competition(SLUG, tmp_path / SLUG)
    assert SLUG in str(excinfo.value)
    assert standin.state.calls == []


@pytest.mark.parametrize("source", ["kaggle.json", "env pair", "KAGGLE_API_TOKEN", "access_token file"])
def test_each_credential_source_is_accepted_and_sent(standin, home, monkeypatch, source):
    """Each way of giving credentials passes the early check, and the request carries exactly them."""
    import base64

    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    with pytest.raises(kg.KaggleError, match="kaggle.json"):
        kg.check_credentials()  # nothing given yet: refused, so what follows is the source's doing
    if source == "kaggle.json":
        (home / ".kaggle").mkdir(exist_ok=True)
        (home / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    elif source == "env pair":
        monkeypatch.setenv("KAGGLE_USERNAME", "u")
        monkeypatch.setenv("KAGGLE_KEY", "k")
    elif source == "KAGGLE_API_TOKEN":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_abc")
    else:
        (home / ".kaggle").mkdir(exist_ok=True)
        (home / ".kaggle" / "access_token").write_text("KGAT_abc\n")
    standin.state.valid_tokens.add("KGAT_abc")
    kg.check_credentials()
    assert kg.list_submissions(SLUG) == []
    expected = ("Bearer KGAT_abc" if "TOKEN" in source or "token" in source
                else "Basic " + base64.b64encode(b"u:k").decode())
    assert standin.state.calls[-1].name == "ListSubmissions"
    assert standin.state.calls[-1].authorization == expected


def test_kaggle_json_without_key_is_reported(home):
    (home / ".kaggle").mkdir()
    (home / ".kaggle" / "kaggle.json").write_text('{"username": "u"}')
    with pytest.raises(kg.KaggleError, match="lacks a 'username' or 'key'"):
        kg.check_credentials()


def test_access_token_is_sent_as_bearer(standin, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_good")
    standin.state.valid_tokens.add("KGAT_good")

    assert kg.list_submissions(SLUG) == []
    assert standin.call_names() == ["IntrospectToken", "ListSubmissions"]
    assert standin.state.calls[-1].authorization == "Bearer KGAT_good"


def test_rejected_access_token_raises(standin, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_expired")  # not in valid_tokens
    with pytest.raises(kg.KaggleError, match="invalid or expired") as excinfo:
        kg.list_submissions(SLUG)
    assert SLUG in str(excinfo.value)
    assert "ListSubmissions" not in standin.call_names()


# ---------------------------------------------------------------------------------------------
# HTTP errors


def _run(operation: str, tmp_path: Path) -> None:
    if operation == "download":
        download_competition(SLUG, tmp_path / "raw" / SLUG)
    elif operation == "submit":
        csv = tmp_path / "submission.csv"
        csv.write_text("id,value\n1,0\n")
        kg.submit(SLUG, csv, "first try")
    else:
        kg.list_submissions(SLUG)


@pytest.mark.parametrize("operation", ["download", "submit", "list"])
@pytest.mark.parametrize(
    ("status", "server_message", "advice"),
    [
        (401, "Unauthenticated", ["HTTP 401", "kaggle.json", "KAGGLE_USERNAME", "Create New Token"]),
        (403, "You must accept the rules", ["HTTP 403", "accept", f"https://www.kaggle.com/competitions/{SLUG}/rules", "phone"]),
        (404, "Not found", ["HTTP 404", "slug", f"https://www.kaggle.com/competitions/{SLUG}"]),
        (429, "Too many requests", ["HTTP 429", "daily submission limit", "retry"]),
    ],
)
def test_http_errors_become_advice(standin, tmp_path, operation, status, server_message, advice):
    standin.fail("*", status, server_message)
    with pytest.raises(kg.KaggleError) as excinfo:
        _run(operation, tmp_path)
    message = str(excinfo.value)
    assert f"'{SLUG}'" in message
    assert server_message in message
    for phrase in advice:
        assert phrase in message
    assert not (tmp_path / "raw" / SLUG).exists()


# ---------------------------------------------------------------------------------------------
# submit


@pytest.mark.parametrize("return_ref", [True, False], ids=["ref-in-response", "matched-by-description"])
def test_submit_uploads_zipped_csv_and_returns_listed_submission(standin, tmp_path, return_ref):
    standin.state.return_ref = return_ref
    standin.state.submissions = [
        {"ref": 100, "date": "2025-01-01T00:00:00.000Z", "description": "older", "status": "COMPLETE"}
    ]
    csv_bytes = b"id,value\n" + b"".join(b"%d,%d\n" % (i, i % 7) for i in range(2000))
    csv_path = tmp_path / "preds" / "submission.csv"
    csv_path.parent.mkdir()
    csv_path.write_bytes(csv_bytes)

    result = kg.submit(SLUG, csv_path, "lama baseline v1")

    (blob,) = standin.state.uploads.values()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.namelist() == ["submission.csv"]
        assert zf.read("submission.csv") == csv_bytes
        assert zf.getinfo("submission.csv").compress_type == zipfile.ZIP_DEFLATED
    assert len(blob) < len(csv_bytes)

    create = next(c for c in standin.state.calls if c.name == "CreateSubmission")
    assert create.body["competitionName"] == SLUG
    assert create.body["submissionDescription"] == "lama baseline v1"

    listed = kg.list_submissions(SLUG)
    assert result == listed[0]
    assert result.ref == "101"
    assert result.description == "lama baseline v1"
    assert result.status == "pending"
    assert result.file_name == "submission.zip"
    assert result.public_score is None


@pytest.mark.parametrize("same_description_before", [False, True])
def test_submit_raises_when_accepted_upload_never_shows_up(standin, tmp_path, same_description_before):
    standin.state.list_new_submissions = False  # what a used-up daily limit looked like
    if same_description_before:  # an older submission with the same text must not count as new
        standin.state.submissions = [
            {"ref": 100, "date": "2025-01-01T00:00:00.000Z", "description": "again", "fileName": "submission.zip"}
        ]
    csv_path = tmp_path / "submission.csv"
    csv_path.write_text("id,value\n1,0\n")

    with pytest.raises(kg.KaggleError, match="daily submission limit") as excinfo:
        kg.submit(SLUG, csv_path, "again")
    assert SLUG in str(excinfo.value)
    assert "CreateSubmission" in standin.call_names()  # it was the check after upload that failed


def test_submit_of_missing_file_raises_before_any_request(standin, tmp_path):
    with pytest.raises(kg.KaggleError, match="does not exist"):
        kg.submit(SLUG, tmp_path / "nope.csv", "x")
    assert standin.state.calls == []


def test_refused_upload_raises_and_creates_nothing(standin, tmp_path):
    standin.fail("PUT /uploads", 403, "signature expired")
    csv_path = tmp_path / "submission.csv"
    csv_path.write_text("id,value\n1,0\n")
    with pytest.raises(kg.KaggleError, match="failed; nothing was submitted"):
        kg.submit(SLUG, csv_path, "x")
    assert "CreateSubmission" not in standin.call_names()


# ---------------------------------------------------------------------------------------------
# list_submissions


def test_list_submissions_parses_scores_and_sorts_newest_first(standin):
    standin.state.submissions = [
        {"ref": 7, "date": "2025-02-01T08:00:00.000Z", "description": "scored", "fileName": "a.zip",
         "status": "COMPLETE", "publicScore": "0.81234", "privateScore": ""},
        {"ref": 9, "date": "2025-02-03T09:30:00.123Z", "description": "waiting", "fileName": "c.zip"},
        {"ref": 8, "date": "2025-02-02T00:00:00.000Z", "description": "broken", "fileName": "b.zip",
         "status": "ERROR", "errorDescription": "wrong row count"},
    ]

    result = kg.list_submissions(SLUG)

    assert [s.ref for s in result] == ["9", "8", "7"]
    waiting, broken, scored = result
    assert scored == kg.KaggleSubmission(
        ref="7", description="scored", date="2025-02-01T08:00:00+00:00", status="complete",
        public_score=pytest.approx(0.81234), private_score=None, file_name="a.zip",
    )
    assert (waiting.status, waiting.public_score, waiting.private_score) == ("pending", None, None)
    assert waiting.date == "2025-02-03T09:30:00.123000+00:00"
    assert (broken.status, broken.error_description) == ("error", "wrong row count")
    (call,) = standin.state.calls
    assert call.body["competitionName"] == SLUG


def test_list_submissions_follows_pages(standin):
    standin.state.submissions = [
        {"ref": 1000 - i, "date": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}.000Z", "description": str(i)}
        for i in range(150)
    ]
    result = kg.list_submissions(SLUG)
    assert len(result) == 150
    assert result[0].description == "149" and result[-1].description == "0"  # newest first
    assert standin.call_names() == ["ListSubmissions", "ListSubmissions"]
