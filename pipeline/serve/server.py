"""Building and running the server: the routes and the page on one FastAPI app, the address checked
and bound before anything is loaded, and "serving on" printed once it really serves."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from pipeline.config import PipelineError
from pipeline.serve import inpaint as core
from pipeline.serve.app import App, add_routes

# Set by `serve` before anything imports gradio or asks the hub: no telemetry, no version check,
# no hub lookups (the SD preflight then looks at local weights only). Without internet they hang.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "GRADIO_RUN_HISTORY": "False", "GRADIO_MCP_SERVER": "False", "GRADIO_SSR_MODE": "False"}
HOST = "127.0.0.1"  # local only unless asked (--host 0.0.0.0)
PORT = 7860


def build_app(app: App | None = None) -> FastAPI:
    """The FastAPI app: the HTTP routes, and the page at /."""
    import gradio as gr  # imported here: `serve` sets OFFLINE_ENV first

    from pipeline.serve.page import CSS, build_page

    app = app or App()
    api = FastAPI(title="Photo Reconstruction inpainting")
    add_routes(api, app)
    api.state.app = app
    page = build_page(app)
    return gr.mount_gradio_app(api, page, path="/", footer_links=["api"], run_history=False, ssr_mode=False,
                               mcp_server=False, enable_monitoring=False, pwa=False,
                               max_file_size=core.MAX_UPLOAD_BYTES, allowed_paths=[str(app.outputs)],
                               theme=gr.themes.Default(), css=CSS)


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (not yet listening), for the server to take over; a
    PipelineError in one line when the port is out of range, the host does not resolve to an
    address of this machine, or the port is taken."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise PipelineError(f"port {port!r}: not a TCP port; choose one in 1..65535")
    try:  # an address is taken as it is, as uvicorn does; only a name is looked up
        version = ipaddress.ip_address(host).version
        family, address = (socket.AF_INET6, (host, port, 0, 0)) if version == 6 else (socket.AF_INET, (host, port))
    except ValueError:
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        except (OSError, UnicodeError) as exc:
            raise PipelineError(f"host {core.shown(host)}: not an address, and not a name that resolves here "
                                f"({getattr(exc, 'strerror', None) or exc}); 127.0.0.1 serves this machine "
                                "only, 0.0.0.0 every interface") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses the port at once
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        where = url(host, port)
        if exc.errno == errno.EADDRINUSE:
            raise PipelineError(f"{where}: port {port} is in use (another server?); stop it or choose "
                                "another port") from None
        if exc.errno == errno.EACCES:
            raise PipelineError(f"{where}: not allowed to listen on port {port} (ports below 1024 need "
                                "root); choose a port from 1024 up") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PipelineError(f"{where}: {host} is not an address of this machine; 127.0.0.1 serves "
                                "this machine only, 0.0.0.0 every interface") from None
        raise PipelineError(f"{where}: cannot listen there: {exc.strerror or exc}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it serves once it does (not before: the port may be taken)."""

    def __init__(self, config, where: str):
        super().__init__(config)
        self.where = where

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(f"serving on {self.where}  (HTTP: POST /api/inpaint, GET /api/variants; Ctrl-C stops)",
                  flush=True)


def serve(data_root: str | Path | None = None, host: str = HOST, port: int = PORT,
          max_pixels: int = core.MAX_PIXELS) -> None:
    """Start the server and block until it is stopped (Ctrl-C). The address is checked and bound
    first; PipelineError (one line) when it cannot be, or when max_pixels is not positive."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise PipelineError(f"max_pixels {max_pixels!r}: the largest photo accepted must be a positive "
                            "number of pixels")
    sock = listen_socket(host, port)
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    with sock:
        app = App(data_root=data_root, max_pixels=max_pixels)
        print(f"variants: {', '.join(app.available()) or 'none'}"
              + "".join(f"\n  {v.name}: unavailable: {v.why}" for v in app.variants if not v.available))
        config = uvicorn.Config(build_app(app), log_level="warning")
        _Server(config, url(host, port)).run(sockets=[sock])
