"""Errors of the HTTP API: the server's own error types, the HTTP status of each error type,
and the handlers that make every failure leave as JSON {"error": message}."""

import sqlite3

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from latent.indexer.errors import (EncoderUnavailable, IndexCorrupt, IndexNotFound, LatentError, LockTimeout,
                                   StorageError)


class ServeError(LatentError):
    """The server cannot start as asked (a public address without --public or a token, a broken install)."""


class PortInUse(ServeError):
    """Another program listens on the port asked for."""

    def __init__(self, host: str, port: int, free: int | None):
        self.host, self.port, self.free = host, port, free
        super().__init__(f"port {port} is in use on {host}" + (f"; port {free} is free" if free else ""))


class NotFound(LatentError):
    """The index, item or key a request names does not exist."""


class ImageUnreadable(LatentError):
    """An uploaded file is not an image the server can decode."""


class Busy(LatentError):
    """The server is doing this kind of work for another request: ask again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Stopping(LatentError):
    """The server is shutting down: a request still in flight is answered with this."""


# Status by error type (the first match along the error's class hierarchy wins).
_STATUS: dict[type, int] = {
    NotFound: 404, IndexNotFound: 404, ImageUnreadable: 415, Busy: 429, Stopping: 503,
    IndexCorrupt: 503, StorageError: 503, LockTimeout: 503, EncoderUnavailable: 503,
    LatentError: 400,
}


def status_of(error: LatentError) -> int:
    return next(_STATUS[cls] for cls in type(error).__mro__ if cls in _STATUS)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def too_large(limit: int) -> str:
    """The message of a request body over `limit` bytes."""
    return (f"the request body is over the limit of {limit / 2**20:g} MiB; send a smaller image "
            "(or start the server with a larger --max-upload-mb)")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        parts.append(f"{where} ({e['loc'][0] if e.get('loc') else 'request'}): {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": message}; a bug is a 500 that names only its type."""

    async def latent_error(request: Request, exc: LatentError) -> JSONResponse:
        retry = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return error_response(status_of(exc), str(exc), retry)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else \
            f"nothing at {request.url.path}; the API lives under /api (see /openapi.json)"
        return error_response(exc.status_code, str(message), getattr(exc, "headers", None))

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, f"latent.db is damaged or unreadable ({exc}); run `latent check` on the index")

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")

    app.add_exception_handler(LatentError, latent_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(sqlite3.DatabaseError, database_error)
    app.add_exception_handler(Exception, bug)
