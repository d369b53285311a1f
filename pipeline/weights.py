"""`python -m pipeline weights --name big-lama|migan`: fetch a pretrained inpainter's published
TorchScript file into weights/.

The files and their checksums are the ones IOPaint (Sanster/IOPaint, iopaint/model/lama.py and
mi_gan.py) downloads and checks: MD5, as IOPaint publishes them. The download is resumable (an
interrupted one continues with an HTTP Range request from `.<file>.part`), shows a progress bar,
and is renamed into place only once its checksum is the published one; a wrong one is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PipelineError
from pipeline.files import locked, naming_a_full_disk

WEIGHTS_DIR = Path("weights")
CHUNK = 1 << 16  # bytes read at a time: what an interrupted download keeps is whole chunks


@dataclass(frozen=True)
class Published:
    """A pretrained file as its authors publish it."""

    name: str  # what --name takes
    file: str  # its file name under weights/
    url: str
    md5: str
    convention: str  # how the torchscript family calls it (pipeline/inpainters/torchscript.py)
    url_env: str  # IOPaint's variable for a mirror (the MD5 variable beside it)


PUBLISHED = {
    "big-lama": Published("big-lama", "big-lama.pt",
                          "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt",
                          "e3aa4aaa15225a33ec84f9f4bc47e500", "lama", "LAMA_MODEL_URL"),
    "migan": Published("migan", "migan_traced.pt",
                       "https://github.com/Sanster/models/releases/download/migan/migan_traced.pt",
                       "76eb3b1a71c400ee3290524f7a11b89c", "migan", "MIGAN_MODEL_URL"),
}


class WeightsError(PipelineError):
    """A download that failed or does not match its published checksum; says what to do."""


def published_for(path: Path | str) -> Published | None:
    """The published file whose name `path` has, if any (its checksum is then known)."""
    return next((p for p in PUBLISHED.values() if p.file == Path(path).name), None)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, start: int):
    """The response to GET `url` from byte `start` on (a Range request when start > 0)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    return urllib.request.urlopen(request, timeout=60)


def download_weights(name: str, dest_dir: Path = WEIGHTS_DIR, url: str | None = None, md5: str | None = None,
                     force: bool = False, progress: bool = True) -> Path:
    """weights/<file> for the published file `name`, downloaded unless it is already there with
    the right checksum; returns its path.

    url / md5: a mirror and its checksum (default: IOPaint's variables LAMA_MODEL_URL /
    LAMA_MODEL_MD5, MIGAN_..., else the published ones). force: download again even if the file
    is there. Raises WeightsError on a failed download or a checksum that is not the expected one.
    """
    from tqdm import tqdm

    # 1. what to fetch, and where
    if name not in PUBLISHED:
        raise WeightsError(f"--name {name!r}: not a published file; one of {', '.join(PUBLISHED)}")
    published = PUBLISHED[name]
    url = url or os.environ.get(published.url_env) or published.url
    md5 = md5 or os.environ.get(published.url_env.replace("_URL", "_MD5")) or published.md5
    dest = Path(dest_dir) / published.file
    part = dest.with_name(f".{dest.name}.part")  # a fixed name, so a later run resumes it

    with locked(dest.with_name(f".{dest.name}.lock"), f"downloading {dest}"):
        # 2. already there?
        if dest.is_file() and not force:
            found = md5sum(dest)
            if found == md5:
                print(f"{dest} is already here (md5 {found}, the published one)", file=sys.stderr)
                return dest
            raise WeightsError(f"{dest} is here but its md5 is {found}, not the published {md5}; "
                               "download it again with --force (or delete it)")

        # 3. fetch, continuing a partial download
        start = part.stat().st_size if part.is_file() else 0
        try:
            response = _open(url, start)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:  # the partial file is already whole
                response = None
            else:
                raise WeightsError(f"{url}: HTTP {exc.code} {exc.reason}; check the address "
                                   f"(--url, or {published.url_env}) and the network") from None
        except (urllib.error.URLError, OSError) as exc:
            raise WeightsError(f"{url}: cannot connect ({getattr(exc, 'reason', exc)}); without internet, "
                               f"copy {published.file} into {dest_dir}/ (see docs/families.md, \"Pretrained inpainters\")") from None
        if response is not None:
            with response, naming_a_full_disk(part, f"the part downloaded so far stays in {part}"):
                resumed = start and response.status == 206
                if start and not resumed:
                    print(f"note: {url} does not resume; downloading from the start", file=sys.stderr)
                    start = 0
                length = response.headers.get("Content-Length")
                total = start + int(length) if length is not None else None
                with open(part, "ab" if resumed else "wb") as out, tqdm(
                        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=published.file, disable=not progress) as bar:
                    try:
                        for chunk in iter(lambda: response.read(CHUNK), b""):
                            out.write(chunk)
                            bar.update(len(chunk))
                        broke_off = total is not None and out.tell() < total  # the server closed early
                    except (http.client.HTTPException, ConnectionError, TimeoutError):
                        broke_off = True
                    if broke_off:
                        out.flush()
                        raise WeightsError(f"{url}: the download broke off after {out.tell():,} of "
                                           f"{total or '?'} bytes; run the command again to resume it from {part}")

        # 4. the checksum, then the rename into place
        found = md5sum(part)
        if found != md5:
            part.unlink(missing_ok=True)
            raise WeightsError(f"{url}: the download's md5 is {found}, not the expected {md5}; it was removed. "
                               "Run the command again; if it repeats, the address serves another file")
        os.replace(part, dest)
    print(f"{dest}: downloaded, md5 {found} (the published one)", file=sys.stderr)
    return dest
