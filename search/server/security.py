"""Who may talk to the server: the token (by header, ?token= or the page's cookie), the Gate
middleware every request passes (Host header, token, body size, browser headers), the bind
rules of `latent serve`, and the OpenAPI document's security schemes."""

import hmac
import ipaddress
from typing import Callable, ClassVar
from urllib.parse import parse_qs, quote, unquote

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser

from .errors import ServeError, error_response, too_large

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
PAGES = ("/", "/docs")  # what a person opens in a browser: asked for the token, given its cookie
# Without the token, the pages answer this form (no script; it sends the token as ?token= to the
# same page, which then sets the cookie) instead of the API's JSON 401.
TOKEN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>latent: token needed</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; form-action 'self'">
<style>body{font:16px system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em}
input{font:inherit;padding:.3em;width:100%;box-sizing:border-box}button{font:inherit;margin-top:.6em}</style>
</head><body><h1>latent</h1>
<p>This server needs its token. It was printed where <code>latent serve</code> was started
(or set as <code>LATENT_TOKEN</code>).</p>
<form method="get"><label>Token <input name="token" type="password" autocomplete="current-password"
required autofocus></label><button type="submit">Open</button></form>
</body></html>
"""
MIN_TOKEN_LENGTH = 16
COOKIE = "latent_token"  # set by the page for what it loads itself


class Gate:
    """Pure ASGI middleware run before anything else: the Host header (loopback servers answer
    only to loopback names, against DNS rebinding), the token (constant-time, by header,
    ?token= or the page's cookie), and the body size (by Content-Length, and counted while
    reading). Adds headers that keep browsers from sniffing, framing or leaking a ?token= URL
    as a referrer.

    The page (/) answers an authorized request with an HttpOnly, SameSite=Strict cookie holding
    the token, so that what the page loads by itself (<script src>, <link href>, <img src>)
    carries it too; cross-site requests never do.
    """

    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app, *, token: str | None, max_body: int, loopback_only: bool):
        self.app, self.token, self.max_body, self.loopback_only = app, token, max_body, loopback_only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refused = self.refusal(scope, headers)
        if refused is not None:
            return await refused(scope, receive, send)
        cookie = self.token is not None and scope["path"] in PAGES
        return await self.app(scope, self.counting(receive), self.with_headers(send, cookie))

    def refusal(self, scope, headers: Headers) -> JSONResponse | None:
        if self.loopback_only and not is_loopback(_host_name(headers.get("host", ""))):
            return error_response(400, f"this server answers only to loopback names ({', '.join(LOOPBACK_NAMES)}, "
                                       "127.0.0.0/8) as it listens on a loopback address; check the address you used")
        if self.token is not None and not self.authorized(scope, headers):
            if scope["path"] in PAGES and scope["method"] == "GET":  # a person at a browser: ask for the token
                return HTMLResponse(TOKEN_PAGE, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return error_response(401, "missing or wrong token: send the header 'Authorization: Bearer <token>' "
                                       "or add ?token=<token> to the URL", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return error_response(413, too_large(self.max_body))
        return None

    def authorized(self, scope, headers: Headers) -> bool:
        expected = self.token.encode()
        given = []
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given.append(value.strip())
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given.extend(query.get("token", [])[:1])
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE)
        if cookie:
            given.append(unquote(cookie))
        return any(hmac.compare_digest(g.encode("utf-8", "replace"), expected) for g in given)

    def counting(self, receive):
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise HTTPException(413, too_large(self.max_body))
            return message

        return limited

    def with_headers(self, send, cookie: bool):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.HEADERS if k not in names]
                if b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                if cookie:
                    extra.append((b"set-cookie", f"{COOKIE}={quote(self.token, safe='')}; HttpOnly; "
                                                 "SameSite=Strict; Path=/".encode()))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return send_with_headers


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8000
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def openapi_with_auth(app: FastAPI) -> Callable[[], dict]:
    """The OpenAPI document, naming the three ways to send the token."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "query", "name": "token"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": COOKIE}}
            schema["security"] = [{"bearer": []}, {"token": []}, {"cookie": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


# -- binding ----------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """localhost (any case), or an address of the loopback range (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> None:
    if token is not None and (len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token
                              or not token.isascii()):
        raise ServeError(f"the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without "
                         "spaces; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def check_bind(host: str, *, public: bool, token: str | None) -> None:
    """Refuse a non-loopback address unless `public`, and `public` without a token."""
    if not public and not is_loopback(host):
        raise ServeError(f"refusing to listen on {host}: it is not a loopback address, so anyone who can reach "
                         "this machine could read your indexes; use --host 127.0.0.1, or add --public together "
                         "with --token (or $LATENT_TOKEN)")
    if public and not token:
        raise ServeError("--public needs a token: pass --token TOKEN or set LATENT_TOKEN (make one with: python "
                         "-c 'import secrets; print(secrets.token_urlsafe(32))'); clients then send "
                         "'Authorization: Bearer TOKEN' or ?token=TOKEN. The traffic is not encrypted: put a "
                         "TLS proxy in front for anything beyond a trusted network")
    check_token(token)
