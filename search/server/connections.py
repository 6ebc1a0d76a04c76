"""What a connection to `latent serve` may hold: uvicorn's h11 protocol with a deadline for each
request's headers and a cap on open connections (over it, the connection that has waited longest
without sending a request is closed), and the uvicorn settings `serve` runs with."""

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import ServeError

HEADER_TIMEOUT = 10.0  # seconds from connecting (or from the last response) to a request's whole head
MAX_CONNECTIONS = 256
SHUTDOWN_GRACE = 2  # seconds a stopping server waits for requests in flight before cancelling them


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    `header_timeout` seconds of opening (or of its last response: keep-alive), and, when a new
    connection makes more than `max_connections`, the one that has waited longest for a request.
    A request arriving while every connection is busy gets uvicorn's 503 (limit_concurrency)."""

    header_timeout: float = HEADER_TIMEOUT
    max_connections: int = MAX_CONNECTIONS

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline = None
        self.wait_for_request()
        if len(self.connections) > self.max_connections:
            waiting = [c for c in self.connections if c is not self and isinstance(c, GuardedProtocol) and c.waiting()]
            if waiting:
                min(waiting, key=lambda c: c.waiting_since).timeout_keep_alive_handler()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self.wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        super().connection_lost(exc)

    def wait_for_request(self) -> None:
        """Start the clock for the next request's head."""
        if self.deadline is not None:
            self.deadline.cancel()
        self.waiting_since = self.loop.time()
        self.deadline = self.loop.call_later(self.header_timeout, self.close_if_waiting)

    def waiting(self) -> bool:
        """True while no whole request head has come since the connection opened or its last response."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def close_if_waiting(self) -> None:
        self.deadline = None
        if self.waiting():
            self.timeout_keep_alive_handler()  # uvicorn's close of an idle connection


def uvicorn_settings(*, max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT) -> dict:
    """The keyword arguments of uvicorn.run (or uvicorn.Config) for a server with these limits.
    The access log is off: URLs may carry ?token=."""
    if not (isinstance(max_connections, int) and max_connections >= 1):
        raise ServeError(f"the connection cap must be a whole number of at least 1, got {max_connections!r}")
    if not 0 < header_timeout <= 3600:
        raise ServeError(f"the header timeout must be more than 0 and at most 3600 seconds, got {header_timeout!r}")
    protocol = type("Protocol", (GuardedProtocol,), {"header_timeout": header_timeout,
                                                    "max_connections": max_connections})
    return {"http": protocol, "ws": "none", "limit_concurrency": max_connections + 1,
            "timeout_graceful_shutdown": SHUTDOWN_GRACE, "access_log": False, "log_level": "warning",
            "server_header": False}
