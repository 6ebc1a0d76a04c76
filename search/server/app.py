"""The FastAPI app of `latent serve` put together (error handlers, routes, the page and its
static files, the Gate), and `serve`, which checks the address and runs it under uvicorn."""

import errno
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from latent import __version__

from .connections import HEADER_TIMEOUT, MAX_CONNECTIONS, uvicorn_settings
from .errors import PortInUse, ServeError, add_error_handlers
from .routes import build_router
from .security import Gate, check_bind, check_token, openapi_with_auth
from .served import Api, Limits, open_served

STATIC_DIR = Path(__file__).parent.parent / "static"


def create_app(directories: list[str], *, token: str | None = None, limits: Limits | None = None,
               public: bool = False, preload: bool = False, progress=None) -> FastAPI:
    """The FastAPI app serving `directories` (index folders or built-ins such as @words).

    With a token, every request needs it (`Authorization: Bearer <token>` or `?token=`). Unless
    `public`, only Host headers naming a loopback address are answered (against DNS rebinding).
    `preload` loads the encoders now rather than on the first query.
    """
    limits = limits or Limits()
    check_token(token)
    page = _page()
    api = Api(open_served(list(directories), preload=preload, progress=progress), limits, public=public)
    app = FastAPI(title="latent", version=__version__, docs_url=None, redoc_url=None,
                  description="Search and explore the latent spaces of latent indexes.")
    add_error_handlers(app)
    app.include_router(build_router(api, limits, auth_errors=(401,) if token else ()))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index_page():
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs_page():  # Swagger UI from the swagger-ui-bundle package: no CDN, works offline
        return get_swagger_ui_html(openapi_url="/openapi.json", title="latent API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    # StaticFiles refuses paths that leave the folder (and symlinks out of it)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    if token:
        app.openapi = openapi_with_auth(app)
    app.add_middleware(Gate, token=token, max_body=limits.max_upload_bytes, loopback_only=not public)
    app.state.api = api
    return app


def _page() -> str:
    """The page (/), installed with the package: without it the install is broken."""
    path = STATIC_DIR / "index.html"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ServeError(f"the page {path} cannot be read ({e.strerror or e}): this install of latent-search "
                         "is incomplete; reinstall it") from None


def serve(directories: list[str], *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          public: bool = False, limits: Limits | None = None, max_connections: int = MAX_CONNECTIONS,
          header_timeout: float = HEADER_TIMEOUT, progress=None,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve `directories` over HTTP until interrupted (uvicorn; SIGTERM or SIGINT stop it within
    a few seconds). Loopback only unless `public`; `public` needs a token. At most `max_connections`
    connections at once, each closed when it sends no whole request head within `header_timeout`
    seconds (connections.py)."""
    token = token or None
    check_bind(host, public=public, token=token)
    settings = uvicorn_settings(max_connections=max_connections, header_timeout=header_timeout)
    sock = bind_port(host, port)  # before the indexes load: a busy port is said at once
    try:
        app = create_app(directories, token=token, limits=limits, public=public, preload=True, progress=progress)
    except BaseException:
        sock.close()
        raise
    if announce is not None:
        shown = f"[{host}]" if ":" in host else host
        page = f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")
        announce(f"Serving {', '.join(app.state.api.served)} at {page} (API under /api, schema at "
                 f"/openapi.json{'; every request needs the token' if token else ''}); Ctrl-C to stop")
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, **settings)).run(sockets=[sock])


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) for the server; PortInUse (with a free port to suggest)
    when another program holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno != errno.EADDRINUSE:
            raise ServeError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
        raise PortInUse(host, port, _free_port(family, host, port)) from None
    sock.set_inheritable(True)
    return sock


def _free_port(family: int, host: str, busy: int) -> int | None:
    for candidate in range(busy + 1, min(busy + 50, 65535) + 1):
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, candidate))
                return candidate
            except OSError:
                continue
    return None
