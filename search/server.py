"""The HTTP API of `latent serve`: a FastAPI app over one or more open indexes.

Every route is a thin layer over the Python API (search.query, search.explore,
search.maps); errors are JSON `{"error": message}` with a 4xx status for bad input.
Requests run in FastAPI's thread pool: each index is used by one thread at a time (its
own lock), and catches up with commits made by other processes before each request.
Nothing is ever read from a path given by a client: images and thumbnails are served by
item id, from the item's stored path, and only while the file still hashes to the
content hash stored with the item.
"""

import hashlib
import hmac
import io
import ipaddress
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal
from urllib.parse import parse_qs, quote, unquote

import numpy as np
from fastapi import APIRouter, FastAPI, File, Path as PathParam, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser

from latent.indexer.encoders.base import IMAGE_ENCODERS
from latent.indexer.errors import (EncoderMismatch, EncoderUnavailable, IndexCorrupt, IndexNotFound, LatentError,
                            LockTimeout, StorageError)
from latent.indexer.index import Index

from .explore import ExpressionError, Term, analogy, interpolate, parse_expression, search_expression
from .maps import compute_map, label_text, thumbnail, unit_square
from .query import Hit, search, similar

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_LENGTH = 16
COOKIE = "latent_token"  # set by the page for what it loads itself
MAX_ID = 2**63 - 1
_HASH_CHUNK = 1 << 20


class ServeError(LatentError):
    """The server cannot start as asked (a public address without --public or a token)."""


class NotFound(LatentError):
    """The index, item or key a request names does not exist."""


class ImageUnreadable(LatentError):
    """An uploaded file is not an image the server can decode."""


# -- limits -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each exceeded limit is a 4xx with a message."""

    max_upload_bytes: int = 20 * 2**20
    max_k: int = 1000
    max_text: int = 2000  # characters of q, expr, where and the terms of interpolate/analogy
    max_steps: int = 100  # interpolation points (at least 2)
    min_sample: int = 10  # points of a map
    max_sample: int = 20_000
    thumbnail_sizes: tuple[int, int] = (16, 1024)  # a requested size is clamped into this range
    cached_maps: int = 8  # per index
    cached_thumbnails: int = 512

    def __post_init__(self) -> None:
        rules = {"max_upload_bytes": self.max_upload_bytes >= 1, "max_k": self.max_k >= 1,
                 "max_text": self.max_text >= 1, "max_steps": self.max_steps >= 2, "min_sample": self.min_sample >= 3,
                 "max_sample": self.max_sample >= self.min_sample, "cached_maps": self.cached_maps >= 1,
                 "thumbnail_sizes": 1 <= self.thumbnail_sizes[0] <= self.thumbnail_sizes[1]}
        bad = [name for name, ok in rules.items() if not ok]
        if bad:
            raise ServeError(f"server limit {bad[0]} is out of range: {getattr(self, bad[0])!r}")


# -- what the API returns (its OpenAPI schema) ----------------------------------------------------------
class ErrorOut(BaseModel):
    error: str = Field(description="One readable message that says what went wrong and what to do.")


class HitOut(BaseModel):
    rank: int
    id: int
    key: str
    score: float = Field(description="Cosine similarity (3CosAdd/3CosMul score for analogies).")
    kind: str = Field(description="text, word, image or vector")
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None = Field(description="URL path of the item's thumbnail (images), else null.")


class HitsOut(BaseModel):
    hits: list[HitOut]
    took_ms: float


class IndexOut(BaseModel):
    name: str
    count: int
    encoder: str
    dim: int
    modalities: list[str]
    index_type: str
    generation: int
    kinds: dict[str, int] = Field(description="Items per kind (text, word, image, vector).")


class IndexDetailOut(IndexOut):
    directory: str
    encoder_version: str | None = None
    metric: str
    faiss_factory: str | None = None
    search_params: dict[str, Any]
    vectors_generation: int | None = None
    size_bytes: int
    skipped_inputs: int
    created: str | None = None
    format_version: int | None = None


class IndexesOut(BaseModel):
    indexes: list[IndexOut]


class StepOut(BaseModel):
    t: float = Field(description="0 at A, 1 at B (the first step of a folded run).")
    first: int
    last: int
    id: int
    key: str
    score: float
    kind: str
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None


class StepsOut(BaseModel):
    steps: list[StepOut]
    took_ms: float


class PointOut(BaseModel):
    id: int
    key: str
    x: float = Field(ge=0, le=1)
    y: float = Field(ge=0, le=1)
    kind: str
    text: str | None
    label: str = Field(description="A short label: the text, or the key of words and images.")
    thumbnail: str | None


class MapOut(BaseModel):
    method: str
    generation: int = Field(description="The store generation the map was computed from.")
    count: int = Field(description="Points on the map.")
    total: int = Field(description="Items that could be mapped (a larger index is sampled).")
    explained_variance: list[float] | None
    seconds: float
    points: list[PointOut]


class ItemOut(BaseModel):
    id: int
    key: str
    kind: str
    text: str | None
    metadata: dict[str, Any]
    thumbnail: str | None


# -- the indexes being served ---------------------------------------------------------------------------
@dataclass
class Served:
    """One index being served: its lock, the generation it last saw, and caches tied to that generation."""

    name: str
    index: Index
    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = -1
    kinds: dict[str, int] | None = None
    map_lock: threading.Lock = field(default_factory=threading.Lock)
    map_index: Index | None = None  # a second handle, so a long map does not hold up searches
    maps: OrderedDict = field(default_factory=OrderedDict)

    @contextmanager
    def using(self) -> Iterator[Index]:
        """The index, held by this thread and caught up with every commit so far (of any process)."""
        with self.lock:
            self._catch_up()
            yield self.index

    def _catch_up(self) -> None:
        generation = self.index.generation()
        if generation != self.generation:
            self.index.reload_manifest()
            self.generation, self.kinds = generation, None
        _ = self.index.vectors  # loads, or catches up with the store

    def thumbnail_url(self, item_id: int, kind: str) -> str | None:
        return f"/api/indexes/{quote(self.name, safe='@')}/items/{item_id}/thumbnail" if kind == "image" else None


def name_indexes(directories: list[str]) -> list[str]:
    """A name per directory: its basename (built-ins keep their @name), made unique with -2, -3..."""
    names: list[str] = []
    for directory in directories:
        text = str(directory)
        base = text if text.startswith("@") else (Path(text).resolve().name or "index")
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def open_served(directories: list[str], *, preload: bool = False, progress=None) -> dict[str, Served]:
    """Open every index (built-ins are built on first use) and load its vector index."""
    from latent.indexer.builtin import open_index

    if not directories:
        raise ServeError("give at least one index directory (or a built-in index: @words, @sentences, @photos)")
    served = {}
    for name, directory in zip(name_indexes(directories), directories):
        index = open_index(directory, progress=progress) if progress else open_index(directory)
        _ = index.vectors
        if preload:
            _ = index.encoder
        served[name] = Served(name, index)
    return served


def summary(served: Served, *, detail: bool = False) -> dict:
    """The listing of one index (with Index.info() when `detail`)."""
    with served.using() as index:
        if served.kinds is None:
            served.kinds = index.kind_counts()
        manifest = index.manifest
        out = {"name": served.name, "count": index.count(), "encoder": manifest["encoder"], "dim": manifest["dim"],
               "modalities": list(manifest.get("modalities") or index.encoder.modalities),
               "index_type": manifest["index_type"], "generation": served.generation, "kinds": served.kinds}
        return {**index.info(), **out} if detail else out


# -- reading requests safely ------------------------------------------------------------------------------
def _key_of(index: Index, value: str) -> str | None:
    """The stored key a term names: as given, or lower-cased (word indexes), as explore.resolve reads it."""
    for key in dict.fromkeys([value, value.lower()]):
        if index.lookup([key]):
            return key
    return None


def client_term(served: Served, index: Index, value: str) -> Term:
    """A term of a client: a key of the index, else a text. Never a file (explore.resolve would read one)."""
    key = _key_of(index, value)
    if key is not None:
        return Term("key", key)
    if not {"text", "word"} & set(index.encoder.modalities):
        raise NotFound(f"no item with key {value!r} in {served.name} (its encoder {index.encoder_name!r} "
                       "takes no text, so only keys can be used)")
    return Term("text", value)


def check_expression(served: Served, index: Index, text: str) -> None:
    """Refuse an expression whose bare words are not keys: explore would read them as image files."""
    for _, term in parse_expression(text):
        if term.kind == "word" and _key_of(index, term.value) is None:
            raise ExpressionError(f"{term.value!r} is not a key of {served.name}; quote it to use it as text "
                                  "(the server reads no files)")


def decode_upload(data: bytes):
    """An uploaded image as RGB, by the project's decoding rules (pixel-bomb limit included)."""
    from latent.indexer.images import ImageRefused, decode_image

    try:
        return decode_image(data)[0]
    except ImageRefused as e:
        raise ImageUnreadable(f"the uploaded file cannot be used as an image: {e}") from None


def check_takes_images(served: Served, index: Index) -> None:
    if "image" not in index.encoder.modalities:
        raise EncoderMismatch(f"{served.name} uses encoder {index.encoder_name!r}, which cannot encode images; "
                              f"image search needs an index made with one of: {IMAGE_ENCODERS}")


def stored_item(served: Served, index: Index, item_id: int) -> dict:
    row = index.fetch([item_id]).get(item_id)
    if row is None:
        raise NotFound(f"no item with id {item_id} in {served.name}")
    return row


def hashed_file_thumbnail(path: str, content_hash: str, size: int, cache: "LRU") -> bytes | None:
    """A JPEG thumbnail of the file at `path`, or None unless its bytes hash (SHA-256) to
    `content_hash`. The file is opened once (no FIFO, no device), hashed and decoded from
    that one descriptor, so a file swapped later (for a symlink, or other bytes) is refused.
    Thumbnails are cached by content hash and size; the file is hashed on every call."""
    from latent.indexer.images import ImageRefused, open_regular

    try:
        with open_regular(path) as f:
            digest = hashlib.sha256()
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
            if digest.hexdigest() != content_hash:
                return None
            data = cache.get((content_hash, size))
            if data is None:
                f.seek(0)
                data = _jpeg(thumbnail(f, size))
    except (ImageRefused, OSError):
        return None
    if data is not None:
        cache.put((content_hash, size), data)
    return data


def _jpeg(picture) -> bytes | None:
    if picture is None:
        return None
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=85)
    return out.getvalue()


class LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


# -- errors -----------------------------------------------------------------------------------------------
# Status by error type (the first match along the error's class hierarchy wins).
_STATUS: dict[type, int] = {
    NotFound: 404, IndexNotFound: 404, ImageUnreadable: 415,
    IndexCorrupt: 503, StorageError: 503, LockTimeout: 503, EncoderUnavailable: 503,
    LatentError: 400,
}


def status_of(error: LatentError) -> int:
    return next(_STATUS[cls] for cls in type(error).__mro__ if cls in _STATUS)


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        parts.append(f"{where} ({e['loc'][0] if e.get('loc') else 'request'}): {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": message}; a bug is a 500 that names only its type."""

    async def latent_error(request: Request, exc: LatentError) -> JSONResponse:
        return error_response(status_of(exc), str(exc))

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

    import sqlite3

    app.add_exception_handler(LatentError, latent_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(sqlite3.DatabaseError, database_error)
    app.add_exception_handler(Exception, bug)


# -- the gate every request passes --------------------------------------------------------------------------
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

    def __init__(self, app, *, token: str | None, max_body: int, hosts: tuple[str, ...] | None):
        self.app, self.token, self.max_body, self.hosts = app, token, max_body, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refused = self.refusal(scope, headers)
        if refused is not None:
            return await refused(scope, receive, send)
        cookie = self.token is not None and scope["path"] == "/"
        return await self.app(scope, self.counting(receive), self.with_headers(send, cookie))

    def refusal(self, scope, headers: Headers) -> JSONResponse | None:
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            return error_response(400, f"this server answers only to {', '.join(self.hosts)} (it listens on a "
                                       "loopback address); check the address you used")
        if self.token is not None and not self.authorized(scope, headers):
            return error_response(401, "missing or wrong token: send the header 'Authorization: Bearer <token>' "
                                       "or add ?token=<token> to the URL", {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return error_response(413, _too_large(self.max_body))
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
                raise HTTPException(413, _too_large(self.max_body))
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


def _too_large(limit: int) -> str:
    return (f"the request body is over the limit of {limit / 2**20:g} MiB; send a smaller image "
            "(or start the server with a larger --max-upload-mb)")


def _host_name(host: str) -> str:
    if host.startswith("["):  # [::1]:8000
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


# -- routes -------------------------------------------------------------------------------------------------
def _errors(*statuses: int) -> dict:
    return {s: {"model": ErrorOut} for s in statuses}


class Api:
    """What the routes call: the served indexes, the limits and the caches."""

    def __init__(self, served: dict[str, Served], limits: Limits):
        self.served, self.limits = served, limits
        self.thumbnails = LRU(limits.cached_thumbnails)

    def get(self, name: str) -> Served:
        served = self.served.get(name)
        if served is None:
            raise NotFound(f"no index named {name!r}; this server has: {', '.join(self.served)}")
        return served

    def hits(self, served: Served, hits: list[Hit], started: float, min_score: float | None = None) -> dict:
        kept = [h for h in hits if min_score is None or h.score >= min_score]
        return {"hits": [{"rank": h.rank, "id": h.id, "key": h.key, "score": h.score, "kind": h.kind, "text": h.text,
                          "metadata": h.metadata, "thumbnail": served.thumbnail_url(h.id, h.kind)} for h in kept],
                "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    def steps(self, served: Served, index: Index, path, started: float) -> dict:
        ids = {key: found[0] for key, found in index.lookup([s.key for s in path]).items()}
        return {"steps": [{"t": s.t, "first": s.first, "last": s.last, "id": ids.get(s.key, 0), "key": s.key,
                           "score": s.score, "kind": s.kind, "text": s.text, "metadata": s.metadata,
                           "thumbnail": served.thumbnail_url(ids.get(s.key, 0), s.kind)} for s in path],
                "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    def map(self, served: Served, method: str, sample: int) -> dict:
        """The cached map of (method, sample), recomputed when the store's generation moved."""
        with served.map_lock:
            if served.map_index is None:
                served.map_index = Index.open(served.index.directory)
            index = served.map_index
            generation = index.generation()
            key = (method, min(sample, index.count()))
            cached = served.maps.get(key)
            if cached is None or cached["generation"] != generation:
                cached = self._map_doc(served, compute_map(index, method=method, sample=sample), generation)
                served.maps[key] = cached
            served.maps.move_to_end(key)
            while len(served.maps) > self.limits.cached_maps:
                served.maps.popitem(last=False)
            return cached

    @staticmethod
    def _map_doc(served: Served, m, generation: int) -> dict:
        xy = np.clip(np.round(unit_square(m.coords), 5), 0.0, 1.0)
        points = [{"id": int(m.ids[i]), "key": m.keys[i], "x": float(xy[i, 0]), "y": float(xy[i, 1]),
                   "kind": m.kinds[i], "text": m.texts[i], "label": label_text(m, i),
                   "thumbnail": served.thumbnail_url(int(m.ids[i]), m.kinds[i])} for i in range(len(m))]
        return {"method": m.method, "generation": generation, "count": len(points), "total": m.total,
                "explained_variance": list(m.explained_variance) if m.explained_variance else None,
                "seconds": round(m.seconds, 3), "points": points}

    def thumbnail(self, served: Served, item_id: int, size: int) -> bytes:
        with served.using() as index:
            row = stored_item(served, index, item_id)
            found = index.lookup([row["key"]]).get(row["key"])
        if row["kind"] != "image" or not row["path"] or found is None or found[0] != item_id:
            raise NotFound(f"item {item_id} of {served.name} is not an image")
        data = hashed_file_thumbnail(row["path"], found[1], size, self.thumbnails)
        if data is None:
            raise NotFound(f"the image of item {item_id} is no longer readable as it was indexed "
                           "(moved, changed or replaced); add it again")
        return data


def build_router(api: Api, limits: Limits, *, auth_errors: tuple[int, ...]) -> APIRouter:
    """The /api routes; limits become the bounds of their typed parameters (and of the OpenAPI schema)."""
    router = APIRouter(prefix="/api")
    Name = Annotated[str, PathParam(description="An index name (see /api/indexes).",
                                    json_schema_extra={"enum": list(api.served)})]
    Text = Annotated[str, Query(max_length=limits.max_text)]
    K = Annotated[int, Query(ge=1, le=limits.max_k, description="Number of hits.")]
    Where = Annotated[str | None, Query(max_length=limits.max_text,
                                        description='Metadata filter, e.g. "topic=weather and year>=2000".')]
    MinScore = Annotated[float | None, Query(allow_inf_nan=False, description="Drop hits scoring below this.")]
    ItemId = Annotated[int, PathParam(ge=0, le=MAX_ID)]
    common = _errors(*auth_errors, 400, 404, 422)
    _index_routes(router, api, Name, auth_errors)
    _query_routes(router, api, common, Name, Text, K, Where, MinScore)
    _explore_routes(router, api, limits, common, Name, Text, K, Where)
    _item_routes(router, api, limits, common, Name, ItemId)
    return router


def _index_routes(router: APIRouter, api: Api, Name, auth_errors) -> None:
    @router.get("/indexes", response_model=IndexesOut, responses=_errors(*auth_errors))
    def list_indexes():
        """Every index this server has: count, encoder, modalities, items per kind."""
        return {"indexes": [summary(s) for s in api.served.values()]}

    @router.get("/indexes/{name}", response_model=IndexDetailOut, responses=_errors(*auth_errors, 404, 422))
    def index_detail(name: Name):
        """One index: the listing fields and everything `latent info` reports."""
        return summary(api.get(name), detail=True)


def _query_routes(router: APIRouter, api: Api, common: dict, Name, Text, K, Where, MinScore) -> None:
    @router.get("/indexes/{name}/search", response_model=HitsOut, responses=common)
    def search_text(name: Name, q: Text, k: K = 10, where: Where = None, min_score: MinScore = None):
        """The k nearest items to a text (a word or words for GloVe indexes), encoded by the index's encoder."""
        started, served = time.perf_counter(), api.get(name)
        with served.using() as index:
            return api.hits(served, search(index, q, k=k, where=where), started, min_score)

    @router.post("/indexes/{name}/search/image", response_model=HitsOut,
                 responses={**common, **_errors(413, 415)})
    def search_image(name: Name, file: Annotated[UploadFile, File(description="An image file.")], k: K = 10,
                     where: Where = None, min_score: MinScore = None):
        """The k nearest items to an uploaded image (decoded in memory; never stored)."""
        started, served = time.perf_counter(), api.get(name)
        with served.using() as index:
            check_takes_images(served, index)
        picture = decode_upload(file.file.read())
        with served.using() as index:
            vector = index.encoder.encode_images([picture])[0][0]
            return api.hits(served, search(index, vector, k=k, where=where), started, min_score)

    @router.get("/indexes/{name}/similar", response_model=HitsOut, responses=common)
    def similar_items(name: Name, id: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
                      key: Annotated[str | None, Query(max_length=api.limits.max_text)] = None, k: K = 10,
                      where: Where = None, min_score: MinScore = None):
        """The k nearest items to a stored item, by id or by key (the item itself excluded)."""
        started, served = time.perf_counter(), api.get(name)
        if (id is None) == (key is None):
            raise LatentError("give exactly one of id= or key=")
        with served.using() as index:
            if id is not None:
                key = stored_item(served, index, id)["key"]
            elif not index.lookup([key]):
                raise NotFound(f"no item with key {key!r} in {served.name}")
            return api.hits(served, similar(index, key=key, k=k, where=where), started, min_score)


def _explore_routes(router: APIRouter, api: Api, limits: Limits, common: dict, Name, Text, K, Where) -> None:
    @router.get("/indexes/{name}/expr", response_model=HitsOut, responses=common)
    def expression(name: Name, expr: Text, k: K = 10, where: Where = None,
                   include_terms: bool = False):
        """Vector arithmetic: keys as bare words, texts in quotes, + - weights and parentheses
        (`king - man + woman`, `0.5*"a red car" + car.jpg`); the keys it names are left out."""
        started, served = time.perf_counter(), api.get(name)
        with served.using() as index, index.snapshot():  # the keys checked are the keys used
            check_expression(served, index, expr)
            hits = search_expression(index, expr, k=k, where=where, include_terms=include_terms)
            return api.hits(served, hits, started)

    @router.get("/indexes/{name}/interpolate", response_model=StepsOut, responses=common)
    def walk(name: Name, a: Text, b: Text,
             steps: Annotated[int, Query(ge=2, le=limits.max_steps, description="Points, both ends included.")] = 10,
             method: Literal["slerp", "lerp"] = "slerp", where: Where = None, exclude_endpoints: bool = False):
        """The nearest item at each step of the path from A to B (keys or texts); repeats folded."""
        started, served = time.perf_counter(), api.get(name)
        with served.using() as index:
            ta, tb = client_term(served, index, a), client_term(served, index, b)
            path = interpolate(index, ta, tb, steps=steps, method=method, where=where,
                               exclude_endpoints=exclude_endpoints)
            return api.steps(served, index, path, started)

    @router.get("/indexes/{name}/analogy", response_model=HitsOut, responses=common)
    def solve(name: Name, a: Text, b: Text, c: Text, k: K = 10, method: Literal["add", "mul"] = "add",
              include_inputs: bool = False):
        """a is to b as c is to ? (3CosAdd or 3CosMul); a, b, c are keys or texts."""
        started, served = time.perf_counter(), api.get(name)
        with served.using() as index:
            terms = [client_term(served, index, t) for t in (a, b, c)]
            hits = analogy(index, *terms, k=k, method=method, include_inputs=include_inputs)
            return api.hits(served, hits, started)

    @router.get("/indexes/{name}/map", response_model=MapOut, responses=common)
    def item_map(name: Name, method: Literal["pca", "tsne", "umap"] = "pca",
                 sample: Annotated[int, Query(ge=limits.min_sample, le=limits.max_sample,
                                              description="At most this many items (a seeded sample).")] = 2000):
        """2-D coordinates in [0, 1] of (a sample of) the items; cached until the index changes."""
        return api.map(api.get(name), method, sample)


def _item_routes(router: APIRouter, api: Api, limits: Limits, common: dict, Name, ItemId) -> None:
    @router.get("/indexes/{name}/items/{id}", response_model=ItemOut, responses=common)
    def item(name: Name, id: ItemId):
        """One stored item."""
        served = api.get(name)
        with served.using() as index:
            row = stored_item(served, index, id)
        return {"id": id, "key": row["key"], "kind": row["kind"], "text": row["text"], "metadata": row["metadata"],
                "thumbnail": served.thumbnail_url(id, row["kind"])}

    low, high = limits.thumbnail_sizes

    @router.get("/indexes/{name}/items/{id}/thumbnail", response_class=Response,
                responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                                 "description": "A JPEG of at most size x size pixels."}, **common})
    def item_thumbnail(name: Name, id: ItemId, size: Annotated[int, Query(
            description=f"Longest side in pixels, clamped to [{low}, {high}].")] = 256):
        """A JPEG thumbnail of an image item, read from its stored file only while that file
        still has the content it was indexed with."""
        data = api.thumbnail(api.get(name), id, min(max(size, low), high))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


PLACEHOLDER = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>latent</title></head>
<body><h1>latent</h1><p>The page is not installed; the API is at <a href="/api/indexes">/api/indexes</a>
(schema: <a href="/openapi.json">/openapi.json</a>).</p></body></html>"""


def _page_routes(app: FastAPI) -> None:
    from fastapi.staticfiles import StaticFiles

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        index_html = STATIC_DIR / "index.html"
        if index_html.is_file():
            return HTMLResponse(index_html.read_text(encoding="utf-8"))
        return HTMLResponse(PLACEHOLDER)

    if STATIC_DIR.is_dir():  # StaticFiles refuses paths that leave the folder (and symlinks out of it)
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _openapi_with_auth(app: FastAPI) -> Callable[[], dict]:
    """The OpenAPI document, naming the three ways to send the token."""
    from fastapi.openapi.utils import get_openapi

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


def create_app(directories: list[str], *, token: str | None = None, limits: Limits | None = None,
               public: bool = False, preload: bool = False, progress=None) -> FastAPI:
    """The FastAPI app serving `directories` (index folders or built-ins such as @words).

    With a token, every request needs it (`Authorization: Bearer <token>` or `?token=`). Unless
    `public`, only Host headers naming a loopback address are answered (against DNS rebinding).
    `preload` loads the encoders now rather than on the first query.
    """
    limits = limits or Limits()
    check_token(token)
    api = Api(open_served(list(directories), preload=preload, progress=progress), limits)
    app = FastAPI(title="latent", version=_version(), redoc_url=None,
                  description="Search and explore the latent spaces of latent indexes.")
    add_error_handlers(app)
    app.include_router(build_router(api, limits, auth_errors=(401,) if token else ()))
    _page_routes(app)
    if token:
        app.openapi = _openapi_with_auth(app)
    app.add_middleware(Gate, token=token, max_body=limits.max_upload_bytes,
                       hosts=None if public else LOOPBACK_NAMES)
    app.state.api = api
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("latent-search")
    except PackageNotFoundError:
        return "0"


# -- starting the server --------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
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


def serve(directories: list[str], *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          public: bool = False, limits: Limits | None = None, progress=None,
          announce: Callable[[str], None] | None = None) -> None:
    """Serve `directories` over HTTP until interrupted (uvicorn). Loopback only unless `public`;
    `public` needs a token. The access log is off: URLs may carry ?token=."""
    import uvicorn

    token = token or None
    check_bind(host, public=public, token=token)
    app = create_app(directories, token=token, limits=limits, public=public, preload=True, progress=progress)
    if announce is not None:
        shown = f"[{host}]" if ":" in host else host
        page = f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")
        announce(f"Serving {', '.join(app.state.api.served)} at {page} (API under /api, schema at "
                 f"/openapi.json{'; every request needs the token' if token else ''}); Ctrl-C to stop")
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning", server_header=False)


__all__ = ["Limits", "create_app", "serve", "ServeError", "NotFound", "check_bind", "name_indexes"]
