"""The /api routes of `latent serve`: each a thin layer over the Python API (query, explore,
maps) through Api, with the limits as the bounds of their typed parameters, and the checks that
keep a client's terms, expressions and uploads from ever reading a file."""

import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Path as PathParam, Query, UploadFile
from fastapi.responses import Response

from latent.indexer.encoders.base import IMAGE_ENCODERS
from latent.indexer.errors import EncoderMismatch, LatentError
from latent.indexer.images import ImageRefused, decode_image
from latent.indexer.index import Index

from ..explore import ExpressionError, Term, analogy, interpolate, parse_expression, search_expression
from ..keyword import search_by_mode
from ..query import search, similar
from .errors import ImageUnreadable, NotFound
from .schemas import (DuplicatesOut, HitsOut, IndexDetailOut, IndexesOut, ItemOut, MapOut, StepsOut,
                      error_responses)
from .served import Api, Limits, Served, stored_item, summary

MAX_ID = 2**63 - 1


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
    try:
        return decode_image(data)[0]
    except ImageRefused as e:
        raise ImageUnreadable(f"the uploaded file cannot be used as an image: {e}") from None


def check_takes_images(served: Served, index: Index) -> None:
    if "image" not in index.encoder.modalities:
        raise EncoderMismatch(f"{served.name} uses encoder {index.encoder_name!r}, which cannot encode images; "
                              f"image search needs an index made with one of: {IMAGE_ENCODERS}")



# -- the routes ---------------------------------------------------------------------------------------------
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
    common = error_responses(*auth_errors, 400, 404, 422)
    _index_routes(router, api, Name, auth_errors)
    _query_routes(router, api, common, Name, Text, K, Where, MinScore)
    _explore_routes(router, api, limits, common, Name, Text, K, Where)
    _item_routes(router, api, limits, common, Name, ItemId)
    return router


def _index_routes(router: APIRouter, api: Api, Name, auth_errors) -> None:
    @router.get("/indexes", response_model=IndexesOut, responses=error_responses(*auth_errors))
    def list_indexes():
        """Every index this server has: count, encoder, modalities, items per kind."""
        return {"indexes": [summary(s) for s in api.served.values()]}

    @router.get("/indexes/{name}", response_model=IndexDetailOut, responses=error_responses(*auth_errors, 404, 422))
    def index_detail(name: Name):
        """One index: the listing fields and everything `latent info` reports."""
        return summary(api.get(name), detail=True, public=api.public)


def _query_routes(router: APIRouter, api: Api, common: dict, Name, Text, K, Where, MinScore) -> None:
    @router.get("/indexes/{name}/search", response_model=HitsOut, responses=common)
    def search_text(name: Name, q: Text, k: K = 10, where: Where = None, min_score: MinScore = None,
                    mode: Annotated[Literal["vector", "keyword", "hybrid"], Query(description=(
                        "vector: nearest neighbours of the encoded text; keyword: BM25 over the texts (SQLite "
                        "FTS5), score = BM25; hybrid: both fused by reciprocal rank, score = sum of 1/(60+rank)."
                    ))] = "vector",
                    syntax: Annotated[Literal["words", "fts5"], Query(description=(
                        "keyword and hybrid: q as plain words, or in FTS5 query syntax (a malformed one: 400)."
                    ))] = "words"):
        """The k nearest items to a text (a word or words for GloVe indexes), encoded by the index's
        encoder; or the best by keywords (mode=keyword), or both fused (mode=hybrid)."""
        started, served = time.perf_counter(), api.get(name)
        with served.using() as index:
            hits = search_by_mode(index, q, mode=mode, k=k, where=where, syntax=syntax)
            return api.hits(served, hits, started, min_score)

    @router.post("/indexes/{name}/search/image", response_model=HitsOut,
                 responses={**common, **error_responses(413, 415)})
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

    @router.get("/indexes/{name}/duplicates", response_model=DuplicatesOut, responses=common)
    def duplicates(name: Name, threshold: Annotated[float, Query(
            gt=0, le=1, description="Cosine similarity from which two items are near-duplicates.")] = 0.95,
            where: Where = None):
        """Groups of near-duplicate items (linked by pairs at or above the threshold), largest first,
        each with its representative first; an exact search over at most max_dupes_items items."""
        return api.duplicates(api.get(name), threshold, where, time.perf_counter())

    @router.get("/indexes/{name}/map", response_model=MapOut, responses={**common, **error_responses(429)})
    async def item_map(name: Name, method: Literal["pca", "tsne", "umap"] = "pca",
                       sample: Annotated[int, Query(ge=limits.min_sample, le=limits.max_sample, description=(
                           "At most this many items (a seeded sample); t-SNE and UMAP maps at most "
                           f"{limits.max_slow_map_sample:,}."))] = 2000):
        """2-D coordinates in [0, 1] of (a sample of) the items; cached until the index changes. One
        map computes at a time: meanwhile, a map not in the cache is refused with 429 and Retry-After."""
        return await api.map(api.get(name), method, sample)


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

