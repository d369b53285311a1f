"""The Kaggle client: credentials, errors, submissions; through the official client.

A thin layer over `kaggle` (2.2.4) / `kagglesdk` (0.1.37) that the CLI calls (the download of
competition files, which uses the same authenticated client, is `pipeline.data.download`):

* `check_credentials()` - fail early, with instructions, when no Kaggle credentials exist.
* `submit(slug, csv_path, message)` - zip and upload a submission CSV, then confirm that
  Kaggle lists it (the client reports success even when the upload did not become a submission).
* `list_submissions(slug)` - this account's submissions with status and scores, newest first.

Every failure a person can fix is raised as `KaggleError`, whose message names the competition
and says what to do (accept the rules, regenerate the token, fix the slug, wait for the limit).

Why the client is imported lazily: `import kaggle` runs `KaggleApi().authenticate()` at import
time, which prints a help text (and in older versions calls `exit`) when no credentials are set,
and fixes the config directory from the environment of that moment. The client also fixes its
target host at import: `KAGGLE_API_ENVIRONMENT=LOCALHOST` before the first import sends every
call to http://localhost (the tests use this).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pipeline.config import PipelineError

if TYPE_CHECKING:  # only for annotations; importing the client has side effects (see above)
    from kaggle.api.kaggle_api_extended import KaggleApi


def _say(message: str) -> None:
    """Progress for the person at the terminal; stderr, so the CLI's stdout stays its own."""
    print(message, file=sys.stderr, flush=True)


TOKEN_HELP = (
    "Create an API token: https://www.kaggle.com/settings -> API -> Create New Token, "
    "save the downloaded kaggle.json as ~/.kaggle/kaggle.json (or in $KAGGLE_CONFIG_DIR) "
    "and run `chmod 600 ~/.kaggle/kaggle.json`; "
    "or export KAGGLE_USERNAME=<user> and KAGGLE_KEY=<key> (the two values in kaggle.json); "
    "or export KAGGLE_API_TOKEN=<token> (or save the token in ~/.kaggle/access_token)."
)

# Seconds to wait before each extra look for a just-created submission; the list may lag the create.
SUBMISSION_LOOKUP_DELAYS_S: tuple[float, ...] = (1.0, 3.0)

# How many submissions to ask for per page when listing; the loop follows next-page tokens.
_LIST_PAGE_SIZE = 100
# Upper bound on pages, so a server that ignores page tokens cannot loop us forever.
_LIST_MAX_PAGES = 50


class KaggleError(PipelineError, RuntimeError):
    """A Kaggle problem a person can act on; the message names the competition and the fix."""


@dataclass
class KaggleSubmission:
    """One competition submission, as Kaggle lists it.

    `ref` is Kaggle's submission id (as a string), `date` an ISO-8601 UTC timestamp ("" if
    unknown), `status` one of "pending", "complete", "error", and the scores are None while
    Kaggle has not scored the file (or hides the score). `error_description` is Kaggle's reason
    when `status` is "error".
    """

    ref: str
    description: str
    date: str
    status: str
    public_score: float | None
    private_score: float | None
    file_name: str
    error_description: str = ""


# ---------------------------------------------------------------------------------------------
# Credentials


def _config_dir() -> Path:
    """Where the client looks for kaggle.json: $KAGGLE_CONFIG_DIR, ~/.kaggle, else XDG (Linux)."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured).expanduser()
    home_dir = Path("~/.kaggle").expanduser()
    # Mirrors kaggle 2.2.4: it falls back to the XDG location only when ~/.kaggle is absent.
    if sys.platform.startswith("linux") and not home_dir.exists():
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
        return Path(xdg) / "kaggle"
    return home_dir


def _read_kaggle_json(path: Path) -> tuple[dict, str]:
    """Returns (contents, problem) of a kaggle.json; problem is "" when it parsed as an object."""
    if not path.is_file():
        return {}, ""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError) as exc:
        return {}, f"{path} could not be read as JSON ({exc})"
    if not isinstance(data, dict):
        return {}, f"{path} is not a JSON object"
    return data, ""


def _nonempty_file(path: Path) -> bool:
    try:
        return path.is_file() and bool(path.read_text().strip())
    except OSError:
        return False


def check_credentials() -> None:
    """Raises KaggleError unless some form of Kaggle credentials is present; makes no request.

    Accepted, as kaggle 2.2.4 reads them: a username and key from kaggle.json in
    $KAGGLE_CONFIG_DIR or ~/.kaggle (environment variables KAGGLE_USERNAME / KAGGLE_KEY fill in or
    override either value), an access token in $KAGGLE_API_TOKEN (the token, or a path to a file
    holding it) or in ~/.kaggle/access_token, or OAuth credentials from `kaggle auth login`
    (~/.kaggle/credentials.json). Whether Kaggle accepts them shows only on the first request.
    """
    if os.environ.get("KAGGLE_API_TOKEN", "").strip():
        return
    kaggle_home = Path("~/.kaggle").expanduser()  # the client hard-codes ~/.kaggle for tokens
    if _nonempty_file(kaggle_home / "access_token") or _nonempty_file(kaggle_home / "access_token.txt"):
        return

    config_file = _config_dir() / "kaggle.json"
    file_values, problem = _read_kaggle_json(config_file)
    username = os.environ.get("KAGGLE_USERNAME") or file_values.get("username")
    key = os.environ.get("KAGGLE_KEY") or file_values.get("key")
    if username and key:
        return

    oauth_values, _ = _read_kaggle_json(kaggle_home / "credentials.json")
    if oauth_values.get("refresh_token"):
        return

    found = []
    if problem:
        found.append(problem)
    elif config_file.is_file():
        found.append(f"{config_file} lacks a 'username' or 'key' entry")
    if username and not key:
        found.append("a username but no KAGGLE_KEY")
    if key and not username:
        found.append("a key but no KAGGLE_USERNAME")
    detail = f" Found: {'; '.join(found)}." if found else ""
    raise KaggleError(f"No Kaggle API credentials found (looked for {config_file}).{detail} {TOKEN_HELP}")


_SLUG = re.compile(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*")


def check_slug(slug: str) -> None:
    """Raises KaggleError unless `slug` looks like a competition slug (letters, digits, dashes):
    it becomes a folder name (data/raw/<slug>) and part of URLs."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise KaggleError(
            f"{slug!r} is not a competition slug: it is letters, digits and dashes, the part after "
            f"/competitions/ in the competition URL (https://www.kaggle.com/competitions/<slug>)."
        )


def _authenticated_api(slug: str) -> "KaggleApi":
    """Returns a KaggleApi that has authenticated with the credentials present now."""
    check_slug(slug)
    try:
        check_credentials()
    except KaggleError as exc:
        raise KaggleError(f"Cannot open competition '{slug}': {exc}") from None

    captured = io.StringIO()
    # `import kaggle` authenticates and prints at import time; keep that off the user's stdout.
    with contextlib.redirect_stdout(captured):
        from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    # The class fixes its config path at import; resolve it now, as check_credentials() did.
    api.config_dir = str(_config_dir())
    api.config = str(_config_dir() / "kaggle.json")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), _translated_errors(slug, "checking the credentials for"):
            api.authenticate()
    except SystemExit:
        # authenticate() exits when every credential it found failed (a token Kaggle calls invalid).
        raise KaggleError(
            f"Kaggle did not accept the credentials while opening competition '{slug}' "
            f"(the access token is invalid or expired). {TOKEN_HELP}"
        ) from None
    for line in captured.getvalue().splitlines():
        if line.strip():
            _say(f"kaggle: {line.strip()}")  # e.g. the "chmod 600 kaggle.json" warning
    return api


# ---------------------------------------------------------------------------------------------
# Errors


def _http_error_message(status: int | None, detail: str, slug: str, action: str) -> str:
    """The actionable message for an HTTP status Kaggle answered while doing `action` on `slug`."""
    said = f" (Kaggle said: {detail})" if detail else ""
    if status == 401:
        return (
            f"Kaggle rejected the credentials (HTTP 401) while {action} competition '{slug}'{said}. "
            f"The token is wrong or expired: check kaggle.json / KAGGLE_USERNAME / KAGGLE_KEY, or "
            f"regenerate it. {TOKEN_HELP}"
        )
    if status == 403:
        return (
            f"Kaggle refused access (HTTP 403) while {action} competition '{slug}'{said}. "
            f"Open https://www.kaggle.com/competitions/{slug}/rules while logged in as the account "
            f"of your API token and accept the competition rules (Join Competition); if Kaggle "
            f"asks for it, phone-verify the account at https://www.kaggle.com/settings. Then retry."
        )
    if status == 404:
        return (
            f"Kaggle found no competition '{slug}' (HTTP 404) while {action} it{said}. Check the "
            f"slug: it is the part after /competitions/ in the competition URL, as in "
            f"https://www.kaggle.com/competitions/{slug}; the competition may also have closed."
        )
    lowered = detail.lower()
    if status == 429 or "limit" in lowered or "allowance" in lowered:
        return (
            f"Kaggle is limiting requests (HTTP {status}) while {action} competition '{slug}'{said}. "
            f"If you were submitting, the daily submission limit is probably used up: see "
            f"https://www.kaggle.com/competitions/{slug}/submissions and retry after it resets "
            f"(midnight UTC). Otherwise wait a few minutes and retry."
        )
    return (
        f"Kaggle answered HTTP {status} while {action} competition '{slug}'{said}. Retry later; if "
        f"it persists, check https://www.kaggle.com/competitions/{slug} in a browser."
    )


@contextlib.contextmanager
def _translated_errors(slug: str, action: str) -> Iterator[None]:
    """Turns the client's requests exceptions into KaggleError with advice for `slug`."""
    import requests

    try:
        yield
    except requests.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else None
        detail = str(exc.args[0]) if exc.args else ""
        raise KaggleError(_http_error_message(status, detail, slug, action)) from exc
    except requests.RequestException as exc:
        raise KaggleError(
            f"Could not reach Kaggle while {action} competition '{slug}': {exc}. "
            f"Check the network connection (and any proxy settings), then retry."
        ) from exc


# ---------------------------------------------------------------------------------------------
# Submissions


def _score(value: str | None) -> float | None:
    """Kaggle sends scores as strings; "" or None (not scored yet, or hidden) becomes None."""
    if value is None or not str(value).strip():
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _as_utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    # The client drops the trailing "Z" when parsing, so naive dates are UTC.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _to_submission(api_submission) -> KaggleSubmission:
    """Converts a kagglesdk ApiSubmission into a KaggleSubmission."""
    status = api_submission.status
    return KaggleSubmission(
        ref=str(api_submission.ref),
        description=api_submission.description or "",
        date=_as_utc(api_submission.date).isoformat() if api_submission.date else "",
        status=status.name.lower() if status is not None else "",
        public_score=_score(api_submission.public_score),
        private_score=_score(api_submission.private_score),
        file_name=api_submission.file_name or "",
        error_description=api_submission.error_description or "",
    )


def _list_with(api: "KaggleApi", slug: str) -> list[KaggleSubmission]:
    """All submissions of this account in `slug`, newest first, using an authenticated `api`."""
    collected = []
    seen_refs: set[int] = set()
    page_token = ""
    with _translated_errors(slug, "listing submissions of"):
        for _ in range(_LIST_MAX_PAGES):
            request = _list_request(slug, page_token)
            # Straight to the SDK: KaggleApi.competition_submissions drops the next-page token.
            with api.build_kaggle_client() as client:
                response = client.competitions.competition_api_client.list_submissions(request)
            fresh = [s for s in (response.submissions or []) if s is not None and s.ref not in seen_refs]
            collected.extend(fresh)
            seen_refs.update(s.ref for s in fresh)
            # Stop when there is no next page, or the server repeats a page (ignores the token).
            if not response.next_page_token or response.next_page_token == page_token or not fresh:
                break
            page_token = response.next_page_token
    collected.sort(key=lambda s: _as_utc(s.date), reverse=True)
    return [_to_submission(s) for s in collected]


def _list_request(slug: str, page_token: str):
    """An ApiListSubmissionsRequest for all of this account's submissions, newest first."""
    from kagglesdk.competitions.types.competition_api_service import (
        ApiListSubmissionsRequest,
    )
    from kagglesdk.competitions.types.competition_enums import (
        SubmissionGroup,
        SubmissionSortBy,
    )

    request = ApiListSubmissionsRequest()
    request.competition_name = slug
    request.group = SubmissionGroup.SUBMISSION_GROUP_ALL
    request.sort_by = SubmissionSortBy.SUBMISSION_SORT_BY_DATE
    request.page_size = _LIST_PAGE_SIZE
    if page_token:
        request.page_token = page_token
    else:
        request.page = 1
    return request


def list_submissions(slug: str) -> list[KaggleSubmission]:
    """Returns this account's submissions to competition `slug`, newest first.

    Scores are floats once Kaggle has scored a submission, None before that (or while hidden).
    Raises KaggleError (no credentials, rules not accepted, unknown slug, ...).
    """
    return _list_with(_authenticated_api(slug), slug)


def _zip_csv(csv_path: Path, into_dir: Path) -> Path:
    """Writes <into_dir>/<csv stem>.zip holding the CSV under its own name; returns the zip path."""
    archive = into_dir / f"{csv_path.stem}.zip"
    # Deflate: submission CSVs compress well and Kaggle caps the upload size.
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(csv_path, arcname=csv_path.name)
    return archive


def _find_new_submission(
    submissions: list[KaggleSubmission], before: set[str], ref: str, message: str, file_name: str
) -> KaggleSubmission | None:
    """Picks the submission just made: the ref Kaggle returned, else the newest new one that matches."""
    if ref:
        return next((s for s in submissions if s.ref == ref), None)
    new = [s for s in submissions if s.ref not in before]
    by_description = [s for s in new if s.description.strip() == message.strip()]
    by_file = [s for s in new if s.file_name == file_name]
    matches = by_description or by_file
    return matches[0] if matches else None


def submit(slug: str, csv_path: Path, message: str) -> KaggleSubmission:
    """Uploads `csv_path` (zipped) to competition `slug` with description `message`.

    Returns the submission as Kaggle lists it right after the upload (status usually "pending";
    poll `list_submissions` for the score). Raises KaggleError when the file is missing, the
    upload fails, or the submission does not appear in the list - which is what happens when the
    daily submission limit is already used up, although the client itself reports success.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise KaggleError(f"Submission file {csv_path} does not exist; write it before submitting to '{slug}'.")

    api = _authenticated_api(slug)
    before = {s.ref for s in _list_with(api, slug)}

    with tempfile.TemporaryDirectory(prefix="kaggle-submit-") as tmp:
        archive = _zip_csv(csv_path, Path(tmp))
        _say(f"Submitting {csv_path} ({archive.stat().st_size} bytes zipped) to '{slug}' ...")
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), _translated_errors(slug, "submitting to"):
            response = api.competition_submit(str(archive), message, slug, quiet=True)
    # the client says so in the response (a constant of its own from kaggle 2.2.4; the same text before)
    if response.message == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", "Could not submit to competition"):
        reason = " ".join(captured.getvalue().split())
        raise KaggleError(
            f"Uploading {csv_path.name} to competition '{slug}' failed"
            f"{f' ({reason})' if reason else ''}; nothing was submitted. Retry in a few minutes."
        )
    _say(f"Kaggle: {response.message or 'submission created'}; looking it up in your submissions ...")

    new_ref = str(response.ref) if response.ref else ""
    for delay in (0.0, *SUBMISSION_LOOKUP_DELAYS_S):
        time.sleep(delay)
        found = _find_new_submission(_list_with(api, slug), before, new_ref, message, archive.name)
        if found is not None:
            return found
    raise KaggleError(
        f"Kaggle accepted the upload of {csv_path.name} to competition '{slug}' but the submission "
        f"'{message}' does not appear in your submission list. Most likely the daily submission "
        f"limit is used up (it resets at midnight UTC): check "
        f"https://www.kaggle.com/competitions/{slug}/submissions before submitting again."
    )
