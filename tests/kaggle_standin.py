"""A local HTTP server that answers the Kaggle API calls `pipeline.kaggle` and `pipeline.data.download` make.

kagglesdk posts every call as JSON to <endpoint>/api/v1/<service>/<method> when
KAGGLE_API_ENVIRONMENT=LOCALHOST; the tests point that endpoint at this server. It serves:

* competitions.CompetitionApiService/DownloadDataFiles -> 302 to /blobs/<slug>.zip (the zip bytes),
  as Kaggle redirects to a storage URL whose extension names the downloaded file;
* StartSubmissionUpload -> an upload token and a PUT URL on this server (/uploads/<token>);
  PUT /uploads/<token> stores the body in `uploads`;
* CreateSubmission -> adds a pending submission to `submissions` (unless `list_new_submissions`
  is off, which imitates the daily limit: accepted, yet never listed);
* ListSubmissions -> `submissions`, paged by pageSize / pageToken;
* security.OAuthService/IntrospectToken -> active for tokens in `valid_tokens`.

Any call can be made to fail with `fail(method, status, message)`; every call is recorded in
`calls` (method name, or "PUT /uploads" / "GET /blobs") with its Authorization header.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Call:
    """One request the stand-in received."""

    name: str  # RPC method name such as "ListSubmissions", or "PUT /uploads", "GET /blobs"
    body: dict
    authorization: str


@dataclass
class StandInState:
    """What the stand-in serves and what it saw; tests read and set these fields directly."""

    data_zip: bytes = b""
    submissions: list[dict] = field(default_factory=list)  # JSON as ListSubmissions returns it
    list_new_submissions: bool = True
    return_ref: bool = True  # whether CreateSubmission's response carries the new ref
    valid_tokens: set[str] = field(default_factory=set)
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)  # method or "*" -> error
    uploads: dict[str, bytes] = field(default_factory=dict)
    upload_names: dict[str, str] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    # -- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: dict, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _record(self, name: str, body: dict) -> tuple[int, str] | None:
        """Records the call; returns the injected failure for it, if any."""
        state = self.server.state
        with self.server.lock:
            state.calls.append(Call(name, body, self.headers.get("Authorization", "")))
        return state.failures.get(name) or state.failures.get("*")

    # -- verbs

    def do_POST(self):
        raw = self._body()
        body = json.loads(raw or b"{}")
        method = self.path.rsplit("/", 1)[-1]
        failure = self._record(method, body)
        if failure:
            status, message = failure
            return self._json({"code": status, "message": message}, status)
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            return self._json({"code": 404, "message": f"stand-in has no {self.path}"}, 404)
        handler(body)

    def do_PUT(self):
        data = self._body()
        if self._record("PUT /uploads", {}) or not self.path.startswith("/uploads/"):
            return self._send(403, b"upload refused", "text/plain")
        token = self.path.rsplit("/", 1)[-1]
        with self.server.lock:
            self.server.state.uploads[token] = data
        self._send(200, b"", "text/plain")

    def do_GET(self):
        failure = self._record("GET /blobs", {})
        if failure or not self.path.startswith("/blobs/"):
            return self._send(failure[0] if failure else 404, b"no such blob", "text/plain")
        self._send(200, self.server.state.data_zip, "application/zip")

    # -- RPCs

    def _rpc_DownloadDataFiles(self, body):
        self._send(302, b"", "text/plain", {"Location": f"{self.server.url}/blobs/{body['competitionName']}.zip"})

    def _rpc_StartSubmissionUpload(self, body):
        state = self.server.state
        with self.server.lock:
            token = f"blob-{len(state.upload_names) + 1}"
            state.upload_names[token] = body.get("fileName", "")
        self._json({"token": token, "createUrl": f"{self.server.url}/uploads/{token}"})

    def _rpc_CreateSubmission(self, body):
        state = self.server.state
        token = body.get("blobFileTokens", "")
        if token not in state.uploads:
            return self._json({"code": 400, "message": f"blob {token!r} was never uploaded"}, 400)
        if not state.list_new_submissions:  # the daily-limit case: "success", but no submission
            return self._json({"message": "Successfully submitted to Photo Reconstruction"})
        with self.server.lock:
            ref = max((s["ref"] for s in state.submissions), default=100) + 1
            state.submissions.insert(
                0,
                {
                    "ref": ref,
                    "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                    "description": body.get("submissionDescription", ""),
                    "fileName": state.upload_names[token],
                    "status": "PENDING",
                },
            )
        reply = {"message": "Successfully submitted to Photo Reconstruction"}
        if state.return_ref:
            reply["ref"] = ref
        self._json(reply)

    def _rpc_ListSubmissions(self, body):
        size = int(body.get("pageSize") or 20)
        start = int(body.get("pageToken") or 0)
        page = self.server.state.submissions[start : start + size]
        more = start + size < len(self.server.state.submissions)
        self._json({"submissions": page, "nextPageToken": str(start + size) if more else ""})

    def _rpc_IntrospectToken(self, body):
        if body.get("token") in self.server.state.valid_tokens:
            return self._json({"active": True, "username": "tester"})
        self._json({"active": False})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: StandInState
    lock: threading.Lock
    url: str


class KaggleStandIn:
    """Runs the stand-in on 127.0.0.1 on a free port until `close()`; `url` is its base address."""

    def __init__(self) -> None:
        self.state = StandInState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._server.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._server.url = self.url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="kaggle-standin", daemon=True
        )  # a short poll so shutdown() returns at once
        self._thread.start()

    def fail(self, method: str, status: int, message: str) -> None:
        """Makes calls of `method` ("*" for all RPCs and transfers) answer `status` with `message`."""
        self.state.failures[method] = (status, message)

    def call_names(self) -> list[str]:
        return [c.name for c in self.state.calls]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
