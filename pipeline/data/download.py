"""`make data`: download a competition's files from Kaggle and unzip them into data/raw/<slug>.

Uses the authenticated client of `pipeline.kaggle`; its errors (credentials, rules not
accepted, unknown slug, rate limit) come back as KaggleError with what to do.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.kaggle import KaggleError, _authenticated_api, _say, _translated_errors, check_slug
from pipeline.files import replace_folder

# Rounds of "unzip the zips that came out of a zip"; a bound against zip-in-zip bombs.
_MAX_NESTED_ZIP_ROUNDS = 3


def _has_content(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _extract_zip(archive: Path, into: Path, slug: str) -> None:
    """Unzips `archive` into `into` and deletes it; zipfile drops '..' and absolute member paths."""
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise KaggleError(
            f"The download of competition '{slug}' is not a valid zip ({archive.name}: {exc}); "
            f"rerun the download with force to fetch it again."
        ) from exc
    archive.unlink()


def _extract_nested_zips(root: Path, slug: str) -> None:
    """Unzips every zip below `root` next to where it lies, including zips that came out of zips."""
    for _ in range(_MAX_NESTED_ZIP_ROUNDS):
        archives = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".zip"]
        if not archives:
            return
        for archive in archives:
            _say(f"Unzipping {archive.relative_to(root)}")
            _extract_zip(archive, archive.parent, slug)


def download_competition(slug: str, dest: Path, *, force: bool = False) -> Path:
    """Downloads all files of competition `slug` and unzips them into `dest`; returns `dest`.

    `dest` is typically data/raw/<slug>. When it already exists and holds anything, nothing is
    downloaded unless `force` is true (then its contents are replaced). The files are fetched and
    unzipped in a temporary folder beside `dest`, which is renamed to `dest` only once complete,
    so an interrupted run never leaves a half-filled `dest`. Every zip, including zips inside the
    download, is extracted and then deleted. Raises KaggleError on anything a person must fix.
    """
    check_slug(slug)  # before `dest` (data/raw/<slug>) is looked at: ../../x would leave data/raw
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise KaggleError(f"{dest} is a file, not a folder; choose another destination for competition '{slug}'.")
    if _has_content(dest) and not force:
        _say(f"{dest} already holds competition '{slug}'; not downloading (use force to fetch it again).")
        return dest

    api = _authenticated_api(slug)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Beside dest, so the final rename stays on one file system and is atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        download_dir = staging / "download"
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        _say(f"Downloading competition '{slug}' from Kaggle into {dest} ...")
        with _translated_errors(slug, "downloading"):
            api.competition_download_files(slug, path=str(download_dir), force=True, quiet=not sys.stderr.isatty())
        downloaded = [
            p
            for p in (download_dir.iterdir() if download_dir.is_dir() else [])
            if p.is_file() and not p.name.endswith(".kaggle-partial")  # the client's resume marker
        ]
        if not downloaded:
            raise KaggleError(f"Kaggle sent no files for competition '{slug}'; retry, or check its Data tab.")
        for path in downloaded:
            if zipfile.is_zipfile(path):
                _extract_zip(path, unpacked, slug)
            else:  # a competition with a single file may be served unzipped
                path.rename(unpacked / path.name)
        _extract_nested_zips(unpacked, slug)

        replace_folder(unpacked, dest)  # an old dest only with force, or when it is an empty folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _say(f"Competition '{slug}' is in {dest}")
    return dest


