"""The HTTP API of `latent serve`: a FastAPI app over one or more open indexes.

Every route is a thin layer over the Python API (search.query, search.explore,
search.maps); errors are JSON `{"error": message}` with a 4xx status for bad input.
Requests run in FastAPI's thread pool: each index is used by one thread at a time (its
own lock), and catches up with commits made by other processes before each request. Maps
compute one at a time, each in a thread of its own (another map meanwhile is a 429).
Connections have a deadline for their request headers and a cap (connections.py).
Nothing is ever read from a path given by a client: images and thumbnails are served by
item id, from the item's stored path, and only while the file still hashes to the
content hash stored with the item.

Modules: schemas (what the API returns), errors (error types, statuses, handlers), security
(token, Gate middleware, bind rules), served (limits, the open indexes and their caches),
routes (the /api routes), connections (header deadline, connection cap, uvicorn settings),
app (create_app and serve). Needs the `[serve]` extra.
"""

from latent.indexer.errors import require

for _library in ("fastapi", "uvicorn", "python_multipart", "swagger_ui_bundle"):
    require(_library, "serve", "latent serve")

from .app import STATIC_DIR, create_app, serve  # noqa: E402
from .errors import NotFound, PortInUse, ServeError  # noqa: E402
from .security import check_bind  # noqa: E402
from .served import Limits, Served, name_indexes, open_served  # noqa: E402

__all__ = ["Limits", "Served", "create_app", "serve", "open_served", "ServeError", "NotFound", "PortInUse", "check_bind",
           "name_indexes", "STATIC_DIR"]
